#!/usr/bin/env bash
# Benchmarks the Wasm shim against runc on the cgroup v2 + systemd test node (issue 17;
# scripts/vm/bench/run.sh says what it measures). Not part of the tests. Builds nothing: it takes
# the release shim target/release/containerd-shim-wasmtime-v1, the images
# target/images/{hello,sleeper}.tar (cargo build --release, examples/build.sh) and
# target/release/mkimage, with which it writes busybox.tar, an image holding a static busybox
# (BUSYBOX, default /bin/busybox: Debian's busybox-static). It copies them with the payload into
# a temporary payload directory, runs scripts/vm/run.sh, prints the results and exits with the
# payload's status.
#
#   scripts/vm/bench.sh [RESULTS_DIR]   (default target/vm/results/bench)
#
# BENCH_N: runs per kind (default 10: about 11 min with the boot on 2 loaded cores).
# VM_TIMEOUT: seconds (1500).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
results=${1:-$root/target/vm/results/bench}
busybox=${BUSYBOX:-/bin/busybox}

files=("$root/target/release/containerd-shim-wasmtime-v1" "$root/target/images/hello.tar"
  "$root/target/images/sleeper.tar")
for f in "${files[@]}" "$root/target/release/mkimage" "$busybox"; do
  [ -f "$f" ] || { echo "bench: missing $f (build it first)" >&2; exit 2; }
done

payload=$(mktemp -d "${TMPDIR:-/tmp}/bench-payload.XXXXXX")
trap 'rm -rf "$payload"' EXIT
cp "${files[@]}" "$payload/"
"$root/target/release/mkimage" --name localhost/bench/busybox:latest --out "$payload/busybox.tar" \
  --file "$busybox:/bin/busybox" --entrypoint /bin/busybox
cp "$here/bench/run.sh" "$payload/run.sh"
if [ -n "${BENCH_N:-}" ]; then echo "export BENCH_N=$BENCH_N" >"$payload/env"; fi

status=0
VM_QUIET=${VM_QUIET:-1} bash "$here/run.sh" "$payload" "$results" "${VM_TIMEOUT:-1500}" || status=$?
echo "--- $results/bench.md"
cat "$results/bench.md" 2>/dev/null || echo "(none: see $results/console.log and payload.log)"
echo "bench: exit status $status"
exit "$status"
