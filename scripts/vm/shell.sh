#!/usr/bin/env bash
# Boots the test VM with its serial console on this terminal and root logged in, for debugging:
#
#   scripts/vm/shell.sh [PAYLOAD_DIR [RESULTS_DIR]]
#
# With PAYLOAD_DIR, `vm-payload` in the VM mounts it and runs its run.sh as run.sh's VM would
# (without powering off; results go to RESULTS_DIR, default a temporary directory that is removed
# afterwards). Ctrl-A X quits QEMU; everything written in the VM is thrown away.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/qemu.sh"

image=$(bash "$here/build-image.sh")
tmp=$(mktemp -d "${TMPDIR:-/tmp}/vm-shell.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
qemu-img create -q -f qcow2 -b "$image/rootfs.qcow2" -F qcow2 "$tmp/overlay.qcow2"
vm_qemu_args "$image" "$tmp/overlay.qcow2" ""
if [ $# -ge 1 ]; then
  results=${2:-$tmp/results}
  mkdir -p "$results"
  vm_share payload "$(cd "$1" && pwd)" ro
  vm_share results "$(cd "$results" && pwd)"
fi
echo "vm-shell: booting (about 30-40 s under TCG); Ctrl-A X quits" >&2
qemu-system-x86_64 "${qemu_args[@]}" -serial mon:stdio
