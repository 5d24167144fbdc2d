#!/usr/bin/env bash
# The main job, from a fresh machine: builds the shim and the examples, starts a private
# containerd (its own root, state and socket under a temp dir), imports the hello image and
# runs it through the shim. Everything it started is stopped and removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh >/dev/null
cargo build --release -p containerd-shim-wasmtime
bash examples/build.sh

work=$(mktemp -d /tmp/wasmtime-shim-demo.XXXXXX)
mkdir -p "$work/bin"
cp target/release/containerd-shim-wasmtime-v1 "$work/bin/"
export PATH="$work/bin:$PATH"
cat > "$work/config.toml" <<TOML
version = 2
root = "$work/root"
state = "$work/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$work/containerd.sock"
[ttrpc]
  address = "$work/containerd.sock.ttrpc"
TOML
containerd --config "$work/config.toml" >"$work/containerd.log" 2>&1 &
ctrd=$!
cleanup() {
  kill "$ctrd" 2>/dev/null; wait "$ctrd" 2>/dev/null || true
  grep -o " $work/[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ctr() { command ctr --address "$work/containerd.sock" "$@"; }
for _ in $(seq 50); do ctr version >/dev/null 2>&1 && break; sleep 0.1; done

ctr images import target/images/hello.tar
echo "+ ctr run --rm --runtime io.containerd.wasmtime.v1 localhost/wasmtime-shim/hello:latest hello"
ctr run --rm --runtime io.containerd.wasmtime.v1 localhost/wasmtime-shim/hello:latest hello
echo "exit status: $?"
