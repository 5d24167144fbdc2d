#!/usr/bin/env bash
# Soak and fault runs (not benchmarks): 1000 create/start/wait/remove cycles in one pod, 100
# containers at once, containerd and shims killed under running guests (20 rounds each), and
# hostile inputs, each step checking that nothing was left behind. Prints a Markdown report
# (results and method in docs/reliability.md); exits non-zero on any leak or wrong result.
#   bash scripts/soak.sh            # the full form
#   bash scripts/soak.sh --quick    # the reduced form CI runs (100 cycles, 20 at once, 2 rounds)
# Other flags go to the binary (`--cycles N --parallel N --rounds N --only hostile ...`). As root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh >/dev/null
cargo build --release -p containerd-shim-wasmtime -p wasmtime-shim-tests --bins
bash examples/build.sh >/dev/null
target/release/soak "$@"
