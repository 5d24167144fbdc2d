#!/usr/bin/env bash
# Benchmarks (not tests): start-to-exit against runc, the shim's own time, kill latency and a
# large module's cold and cached starts, all in one run on a private containerd 1.6; with CRI
# (1.6 and 2.1): pod starts, mixed pods and ExecSync. One section alone: `bash scripts/bench.sh
# <throughput|density|pods|mixed|artifacts|http>` (docs/benchmarks.md). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
cargo build --release -p containerd-shim-wasmtime -p wasmtime-shim-tests --bins
# The HTTP benchmark also reports the steps of one request inside the server (an example).
cargo build --release -p wasmtime-shim-runtime --example request_cost
bash examples/build.sh >/dev/null
target/release/bench "$@"
