#!/usr/bin/env bash
# Builds the installer's image as an OCI archive (for `ctr images import`, or `skopeo copy
# oci-archive:...` to a registry): the installer and the shim, with the shared libraries they
# load, and nothing else. The DaemonSet (deploy/installer.yaml) runs it.
#
#   deploy/build-image.sh [NAME] [OUT]
#   default NAME localhost:5000/wasmtime-shim/installer:0.1.0, OUT target/images/installer.tar
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:-localhost:5000/wasmtime-shim/installer:0.1.0}
out=${2:-target/images/installer.tar}
mkdir -p "$(dirname "$out")"
cargo build --release -p containerd-shim-wasmtime -p wasmtime-shim-installer -p wasmtime-shim-tests --bin mkimage
installer=target/release/wasmtime-shim-installer
shim=target/release/containerd-shim-wasmtime-v1
args=(--name "$name" --out "$out" --entrypoint /usr/local/bin/wasmtime-shim-installer
  --file "$installer:/usr/local/bin/wasmtime-shim-installer"
  --file "$shim:/opt/wasmtime-shim/containerd-shim-wasmtime-v1")
# The dynamic loader and the libraries, at the paths the binaries ask for.
for lib in $(ldd "$installer" "$shim" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u); do
  args+=(--file "$(readlink -f "$lib"):$lib")
done
target/release/mkimage "${args[@]}"
echo "$out ($name)"
