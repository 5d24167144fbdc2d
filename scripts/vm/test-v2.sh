#!/usr/bin/env bash
# Runs the shim's cgroup v2 + systemd checks (scripts/vm/shim-v2/run.sh) in the test VM. Builds
# nothing: it takes the release binaries target/release/{containerd-shim-wasmtime-v1,
# wasmtime-shim-installer,v2-cri} and the images
# target/images/{hello,exit-code,sleeper,busy-loop,memory-hog}.tar (cargo build --release
# --workspace --all-targets and examples/build.sh make them), copies them with the payload into a
# temporary payload directory, runs scripts/vm/run.sh, prints the results and exits with the
# payload's status.
#
#   scripts/vm/test-v2.sh [RESULTS_DIR]   (default target/vm/results/shim-v2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
results=${1:-$root/target/vm/results/shim-v2}

files=()
for bin in containerd-shim-wasmtime-v1 wasmtime-shim-installer v2-cri; do
  files+=("$root/target/release/$bin")
done
for image in hello exit-code sleeper busy-loop memory-hog device-node disk-filler; do
  files+=("$root/target/images/$image.tar")
done
for f in "${files[@]}"; do
  [ -f "$f" ] || { echo "test-v2: missing $f (build it first)" >&2; exit 2; }
done

payload=$(mktemp -d "${TMPDIR:-/tmp}/shim-v2-payload.XXXXXX")
trap 'rm -rf "$payload"' EXIT
cp "${files[@]}" "$payload/"
cp "$here/shim-v2/run.sh" "$here/shim-v2/guests.sh" "$payload/"
# A native image (the host's static busybox) and a Wasm image with programs to exec.
"$root/target/release/mkimage" --name localhost/native/busybox:latest --out "$payload/busybox.tar" \
  --file "${BUSYBOX:-/bin/busybox}:/bin/busybox" --symlink /bin/sh:busybox --symlink /bin/sleep:busybox \
  --symlink /bin/echo:busybox --env PATH=/bin --entrypoint /bin/sh
guests=$root/target/guests/wasm32-wasip1/release
"$root/target/release/mkimage" --name localhost/exec/wasm:latest --out "$payload/wasm-exec.tar" \
  --file "$guests/sleeper.wasm:/sleeper.wasm" --file "$guests/exit-code.wasm:/bin/exit-code.wasm" \
  --env PATH=/bin --entrypoint /sleeper.wasm

status=0
VM_QUIET=${VM_QUIET:-1} bash "$here/run.sh" "$payload" "$results" "${VM_TIMEOUT:-1500}" || status=$?
echo "--- $results/shim-v2.txt"
cat "$results/shim-v2.txt" 2>/dev/null || echo "(none: see $results/console.log and payload.log)"
echo "test-v2: exit status $status"
exit "$status"
