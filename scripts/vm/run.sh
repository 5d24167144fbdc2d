#!/usr/bin/env bash
# Boots the cgroup v2 + systemd test node (build-image.sh; built on first use, then cached) under
# QEMU and runs a payload in it:
#
#   scripts/vm/run.sh PAYLOAD_DIR RESULTS_DIR [TIMEOUT_SECONDS]   (default 900)
#
# PAYLOAD_DIR must hold run.sh; inside the VM it is mounted read-only at /mnt/payload and run.sh
# runs as root once containerd.service is up (see image/vm-payload for its environment).
# RESULTS_DIR (created if missing) is mounted at /mnt/results: the payload writes its files
# there, and the harness adds payload.log (run.sh's stdout and stderr), journal.log (the VM's
# journal), exit-code and console.log (the serial console, written by QEMU). The VM runs on a
# copy-on-write overlay of the image, which stays untouched.
#
# Exits with run.sh's exit status; 124 when the VM was still running at TIMEOUT_SECONDS (QEMU is
# killed), 125 when it stopped without an exit status (a boot failure: see console.log). QEMU
# and the overlay never outlive this script, whatever happens. The console is streamed to stdout
# with a "[vm] " prefix unless VM_QUIET=1. VM_CPUS, VM_MEMORY, VM_APPEND, VM_INITRD: see qemu.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/qemu.sh"

say() { echo "vm-run: $*" >&2; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 PAYLOAD_DIR RESULTS_DIR [TIMEOUT_SECONDS]" >&2
  exit 2
fi
payload=$(cd "$1" && pwd)
mkdir -p "$2"
results=$(cd "$2" && pwd)
timeout=${3:-900}
[[ $timeout =~ ^[0-9]+$ ]] || { say "timeout must be a number of seconds: $timeout"; exit 2; }
[ -f "$payload/run.sh" ] || { say "no run.sh in $payload"; exit 2; }

image=$(bash "$here/build-image.sh")

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vm-run.XXXXXX")
qemu_pid='' stream_pid=''
# shellcheck disable=SC2317 # called by the EXIT trap
cleanup() {
  if [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null; then
    sleep 1
    kill -KILL "$qemu_pid" 2>/dev/null || true
    say "QEMU killed"
  fi
  if [ -n "$stream_pid" ]; then kill "$stream_pid" 2>/dev/null || true; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

rm -f "$results"/{console.log,payload.log,journal.log,exit-code}
qemu-img create -q -f qcow2 -b "$image/rootfs.qcow2" -F qcow2 "$tmp/overlay.qcow2"
vm_qemu_args "$image" "$tmp/overlay.qcow2" \
  "vm.payload=1 vm.deadline=$timeout systemd.mask=serial-getty@ttyS0.service"
vm_share payload "$payload" ro
vm_share results "$results"
qemu_args+=(-monitor none -chardev "file,id=console,path=$(vm_qemu_escape "$results/console.log")"
  -serial chardev:console)

say "booting $(basename "$image") with $payload (timeout ${timeout} s)"
started=$SECONDS
qemu-system-x86_64 "${qemu_args[@]}" &
qemu_pid=$!
if [ "${VM_QUIET:-0}" != 1 ]; then
  # Without the terminal control sequences systemd and agetty send to the console.
  tail -n +1 -F --pid="$qemu_pid" "$results/console.log" 2>/dev/null |
    sed -u -e 's/\x1b\[[0-9;?!]*[A-Za-z]//g' -e 's/\x1b\][^\x07]*\x07//g' -e 's/\r//g' -e 's/^/[vm] /' &
  stream_pid=$!
fi

booted='' timed_out=0
while kill -0 "$qemu_pid" 2>/dev/null; do
  if [ -z "$booted" ] && [ -e "$results/payload.log" ]; then
    booted=$((SECONDS - started))
    say "payload started ${booted} s after QEMU"
  fi
  if ((SECONDS - started >= timeout)); then
    timed_out=1
    break
  fi
  sleep 1
done
if ((timed_out)); then
  say "timed out after ${timeout} s: stopping the VM (see $results/console.log)"
  kill "$qemu_pid" 2>/dev/null || true
  for _ in 1 2 3 4 5 6 7 8 9 10; do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
  kill -KILL "$qemu_pid" 2>/dev/null || true
fi
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=''
if [ -n "$stream_pid" ]; then
  wait "$stream_pid" 2>/dev/null || true
  stream_pid=''
fi
total=$((SECONDS - started))

rc=$(cat "$results/exit-code" 2>/dev/null || true)
if [[ $rc =~ ^[0-9]+$ ]]; then
  say "payload exit status $rc (started ${booted:-?} s after QEMU, VM ran ${total} s); results in $results"
  exit "$rc"
elif ((timed_out)); then
  say "the payload did not finish within ${timeout} s; see $results/payload.log and console.log"
  exit 124
else
  say "the VM stopped (QEMU exit status $qemu_rc) after ${total} s without the payload's exit status; see $results/console.log"
  exit 125
fi
