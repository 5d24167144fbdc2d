#!/usr/bin/env bash
# Builds the disk image of the cgroup v2 + systemd test node that scripts/vm/run.sh boots under
# QEMU: Debian trixie (kernel 6.12), systemd as PID 1 on the unified cgroup hierarchy, dbus and
# logind, containerd 2.1 (the sid binaries scripts/install-deps.sh unpacks into
# target/containerd-2.1) as a systemd service, runc, the CNI plugins and iptables.
#
# Cached in target/vm/image-<key>/, where key is a hash of this script, scripts/vm/image/ (the
# files installed into the image) and the containerd binaries: a second run only prints the
# directory. The build runs in a temporary directory that is renamed into place at the end, so an
# interrupted build never leaves anything that looks cached; concurrent runs wait for each other.
#
# Prints the image directory on stdout (progress goes to stderr). It holds rootfs.qcow2 (ext4,
# the whole disk), vmlinuz, initrd.img (a minimal busybox initramfs, see image/init),
# initrd-debian.img (Debian's own, slower to boot), cmdline (the kernel command line),
# packages.txt and debootstrap.log. Needs root (debootstrap); scripts/vm/install-host-deps.sh
# installs the host's tools. VM_MIRROR overrides the Debian mirror.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
vmdir=$repo/target/vm
ctrd=$repo/target/containerd-2.1

suite=trixie
mirror=${VM_MIRROR:-http://deb.debian.org/debian}
disk_size=8G
hostname=v2node
packages=(
  linux-image-amd64 systemd systemd-sysv dbus udev kmod login passwd util-linux procps
  runc containernetworking-plugins iptables iproute2 libseccomp2 ca-certificates busybox-static
)
# quiet and mitigations=off for boot speed; panic=1 with QEMU's -no-reboot turns a kernel panic
# into QEMU exiting. The LSM list drops bpf (systemd attaches a BPF LSM program at start, ~3 s
# under TCG), ima, evm, ipe and tomoyo, which nothing here uses.
cmdline="root=/dev/vda rw console=ttyS0 systemd.unified_cgroup_hierarchy=1 quiet mitigations=off"
cmdline+=" panic=1 lsm=lockdown,capability,landlock,yama,apparmor"
# Units that cost boot time under TCG and that a test node does not need. The ConditionNeedsUpdate
# ones (ldconfig, hwdb, catalog, update-done) would run at every boot of a fresh overlay.
masked=(
  systemd-firstboot.service ldconfig.service systemd-update-done.service
  systemd-journal-catalog-update.service systemd-hwdb-update.service systemd-journal-flush.service
  systemd-random-seed.service systemd-pstore.service systemd-binfmt.service
  proc-sys-fs-binfmt_misc.automount modprobe@drm.service modprobe@efi_pstore.service
  modprobe@fuse.service sys-fs-fuse-connections.mount sys-kernel-config.mount
  sys-kernel-debug.mount sys-kernel-tracing.mount dev-hugepages.mount
  systemd-udev-load-credentials.service systemd-hostnamed.socket systemd-networkd-wait-online.service
  systemd-pcrextend.socket systemd-pcrlock.socket systemd-pcrmachine.service
  systemd-hibernate-clear.service systemd-tpm2-setup-early.service systemd-tpm2-setup.service
  getty@tty1.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer fstrim.timer
  e2scrub_all.timer e2scrub_reap.service man-db.timer
)
masked_generators=(
  systemd-gpt-auto-generator systemd-hibernate-resume-generator systemd-ssh-generator
  systemd-tpm2-generator systemd-system-update-generator systemd-sysv-generator
  systemd-rc-local-generator systemd-run-generator
)

exec 3>&1 1>&2 # stdout carries only the result
log() { echo "vm build: $*"; }

bash "$here/install-host-deps.sh"

[ -x "$ctrd/usr/bin/containerd" ] || bash "$repo/scripts/install-deps.sh"
ctrd_files=(usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr
  usr/lib/systemd/system/containerd.service)

inputs=$(
  cd "$here" && sha256sum build-image.sh image/*
  cd "$ctrd" && sha256sum "${ctrd_files[@]}"
)
key=$(sha256sum <<<"$inputs" | cut -c1-16)
image=$vmdir/image-$key
if [ -d "$image" ]; then
  echo "$image" >&3
  exit 0
fi

mkdir -p "$vmdir/debs"
exec 9>"$vmdir/.build.lock"
flock 9
if [ -d "$image" ]; then # built by a concurrent run while we waited
  echo "$image" >&3
  exit 0
fi

# Removes a build tree, first unmounting whatever debootstrap left mounted in it (/proc, /sys,
# a bind-mounted /dev when interrupted); rm never crosses into another file system.
remove_tree() {
  local dir=$1 mnt
  [ -e "$dir" ] || return 0
  awk -v p="$dir/" 'index($2, p) == 1 {print $2}' /proc/self/mounts | sort -r |
    while read -r mnt; do umount -l "$mnt"; done
  rm -rf --one-file-system "$dir"
}
for stale in "$vmdir"/build.*; do
  [ -d "$stale" ] && remove_tree "$stale"
done

build=$(mktemp -d "$vmdir/build.XXXXXX")
trap 'remove_tree "$build"' EXIT
root=$build/root
out=$build/out
mkdir -p "$out"
start=$SECONDS

log "debootstrap $suite into $root (a few minutes the first time)"
if ! debootstrap --variant=minbase --include="$(IFS=,; echo "${packages[*]}")" \
  --cache-dir="$vmdir/debs" "$suite" "$root" "$mirror" >"$out/debootstrap.log" 2>&1; then
  tail -n 30 "$out/debootstrap.log"
  log "debootstrap failed"
  exit 1
fi
log "debootstrap done after $((SECONDS - start)) s"

# containerd 2.1 from sid with the package's own unit, which is upstream's (Delegate=yes,
# KillMode=process, ExecStartPre=-/sbin/modprobe overlay, LimitNPROC/LimitCORE=infinity,
# TasksMax=infinity, OOMScoreAdjust=-999; upstream dropped LimitNOFILE in 2.0).
for f in containerd containerd-shim-runc-v2 ctr; do
  install -m 0755 "$ctrd/usr/bin/$f" "$root/usr/bin/$f"
done
install -m 0644 "$ctrd/usr/lib/systemd/system/containerd.service" \
  "$root/usr/lib/systemd/system/containerd.service"
install -D -m 0644 "$here/image/containerd.toml" "$root/etc/containerd/config.toml"
"$ctrd/usr/bin/containerd" --config "$root/etc/containerd/config.toml" config dump >/dev/null
mkdir -p "$root/etc/cni/net.d" "$root/opt/cni"
ln -sfn /usr/lib/cni "$root/opt/cni/bin"

install -m 0755 "$here/image/vm-payload" "$root/usr/local/sbin/vm-payload"
install -m 0644 "$here/image/vm-payload.service" "$root/etc/systemd/system/vm-payload.service"
install -D -m 0644 "$here/image/serial-autologin.conf" \
  "$root/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf"
install -D -m 0644 "$here/image/journald.conf" "$root/etc/systemd/journald.conf.d/vm.conf"
install -D -m 0644 "$here/image/modprobe-blacklist.conf" "$root/etc/modprobe.d/vm-blacklist.conf"
# As on a kubeadm node; containerd's ExecStartPre then finds overlay loaded.
echo overlay >"$root/etc/modules-load.d/containerd.conf"

echo "$hostname" >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
  "$hostname" >"$root/etc/hosts"
od -An -N16 -tx1 /dev/urandom | tr -d ' \n' >"$root/etc/machine-id"
echo >>"$root/etc/machine-id"
echo '/dev/vda / ext4 rw,noatime 0 0' >"$root/etc/fstab"
echo '# the test VM has no network beyond loopback' >"$root/etc/resolv.conf"
sed -i 's/^root:[^:]*:/root::/' "$root/etc/shadow" # root logs in without a password

# Enabling and masking by hand: systemctl in a chroot without /proc works but complains.
sysd=$root/etc/systemd/system
for unit in "${masked[@]}"; do ln -sfn /dev/null "$sysd/$unit"; done
mkdir -p "$root/etc/systemd/system-generators"
for gen in "${masked_generators[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system-generators/$gen"; done
ln -sfn /usr/lib/systemd/system/multi-user.target "$sysd/default.target"
mkdir -p "$sysd/multi-user.target.wants"
ln -sfn /usr/lib/systemd/system/containerd.service "$sysd/multi-user.target.wants/containerd.service"
ln -sfn /etc/systemd/system/vm-payload.service "$sysd/multi-user.target.wants/vm-payload.service"

# shellcheck disable=SC2016 # dpkg-query's format, not shell
chroot "$root" dpkg-query -W -f '${Package} ${Version}\n' >"$out/packages.txt"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

# Kernel, Debian's initramfs (kept as a fallback: VM_INITRD=debian), and the minimal one.
kvers=("$root"/usr/lib/modules/*)
[ ${#kvers[@]} -eq 1 ] || { log "expected one kernel, found ${#kvers[@]}"; exit 1; }
kver=$(basename "${kvers[0]}")
cp "$root/boot/vmlinuz-$kver" "$out/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$out/initrd-debian.img"
bb=$root/usr/bin/busybox
ird=$build/initrd
mkdir -p "$ird"/{bin,dev,proc,sys,root,modules}
cp "$bb" "$ird/bin/busybox"
install -m 0755 "$here/image/init" "$ird/init"
n=0
for mod in virtio_blk ext4; do chroot "$root" /usr/sbin/modprobe -S "$kver" --show-depends "$mod"; done |
  awk '$1 == "insmod" && !seen[$2]++ {print $2}' >"$build/modules.txt"
while read -r path; do
  n=$((n + 1))
  name=$(printf '%02d-%s' "$n" "$(basename "${path%.xz}")")
  case $path in
    *.xz) "$bb" xz -dc "$root$path" >"$ird/modules/$name" ;;
    *) cp "$root$path" "$ird/modules/$name" ;;
  esac
done <"$build/modules.txt"
[ "$n" -gt 0 ] || { log "no modules found for the initramfs"; exit 1; }
(cd "$ird" && find . | "$bb" cpio -o -H newc 2>/dev/null) >"$out/initrd.img"
echo "$cmdline" >"$out/cmdline"

log "making the ext4 disk image ($disk_size, sparse)"
truncate -s "$disk_size" "$build/root.raw"
mkfs.ext4 -q -F -L vmroot -m 0 -E lazy_itable_init=0,lazy_journal_init=0 -d "$root" "$build/root.raw"
qemu-img convert -O qcow2 "$build/root.raw" "$out/rootfs.qcow2"
rm -f "$build/root.raw"
echo "$inputs" >"$out/inputs.sha256"

mv -T "$out" "$image"
for old in "$vmdir"/image-*; do
  [ "$old" = "$image" ] || rm -rf --one-file-system "$old"
done
log "image ready in $((SECONDS - start)) s: $image"
echo "$image" >&3
