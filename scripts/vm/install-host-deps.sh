#!/usr/bin/env bash
# Installs what the cgroup v2 test VM needs on the host (Debian 12, as root): QEMU (run under
# TCG), debootstrap (builds the image's root filesystem), e2fsprogs (mkfs.ext4 -d turns it into a
# disk image without a loop device) and qemu-utils (qemu-img: the copy-on-write overlays).
# Idempotent: installs only what is missing.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in qemu-system-x86 qemu-utils debootstrap e2fsprogs; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# mkfs.ext4 -d (populate from a directory) exists since e2fsprogs 1.43.
usage=$(mkfs.ext4 2>&1 || true)
if [[ $usage != *"-d root-directory"* ]]; then
  echo "mkfs.ext4 here has no -d (populate from a directory); e2fsprogs >= 1.43 is needed" >&2
  exit 1
fi
