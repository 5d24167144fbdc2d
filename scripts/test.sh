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
