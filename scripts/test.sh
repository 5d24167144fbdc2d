#!/usr/bin/env bash
# Runs every test: unit and runtime tests, then the end-to-end tests against private
# containerd 1.6 and 2.1 instances. Needs root (containerd, mounts). Installs what it needs.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --workspace --all-targets
bash examples/build.sh
bash deploy/build-image.sh
cargo test --release --workspace -- --test-threads=2
# The soak and fault harness in its reduced form: every step, fewer repetitions; fails on any
# leak or wrong result (the full form is `bash scripts/soak.sh`, see docs/reliability.md).
target/release/soak --quick
# The shim on a cgroup v2 node with systemd: a Debian trixie VM under QEMU (scripts/vm/, docs/vm.md),
# ctr checks with the cgroupfs and the systemd cgroup drivers.
bash scripts/vm/test-v2.sh
