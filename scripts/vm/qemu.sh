# Sourced by run.sh and shell.sh. vm_qemu_args IMAGE OVERLAY APPEND fills the array qemu_args
# with the test VM's machine: TCG (this kind of host's /dev/kvm cannot run a stock kernel), q35,
# VM_CPUS vCPUs (default 2), VM_MEMORY MiB (default 4096), OVERLAY as the virtio disk (writes are
# never flushed: the overlay is thrown away), a virtio RNG, no network card, the image's kernel
# command line plus APPEND plus VM_APPEND. VM_INITRD=debian boots Debian's initramfs instead of
# the minimal one. vm_share TAG DIR [ro] adds a virtio-9p share.

vm_qemu_args() {
  local image=$1 overlay=$2 append=$3 initrd=$1/initrd.img
  [ "${VM_INITRD:-}" = debian ] && initrd=$image/initrd-debian.img
  # shellcheck disable=SC2054 # commas inside QEMU option values
  qemu_args=(
    -name wasmtime-shim-vm -nodefaults -no-user-config -no-reboot -display none
    -machine q35 -accel tcg,thread=multi -cpu max -smp "${VM_CPUS:-2}" -m "${VM_MEMORY:-4096}"
    -kernel "$image/vmlinuz" -initrd "$initrd"
    -append "$(cat "$image/cmdline") $append ${VM_APPEND:-}"
    -drive "file=$(vm_qemu_escape "$overlay"),if=virtio,format=qcow2,cache=unsafe,discard=unmap"
    -device virtio-rng-pci -nic none
  )
}

vm_share() {
  local tag=$1 dir=$2 ro=${3:-}
  qemu_args+=(
    -fsdev "local,id=fs-$tag,path=$(vm_qemu_escape "$dir"),security_model=none${ro:+,readonly=on}"
    -device "virtio-9p-pci,fsdev=fs-$tag,mount_tag=$tag"
  )
}

# QEMU's option syntax doubles a comma inside a value.
vm_qemu_escape() { echo "${1//,/,,}"; }
