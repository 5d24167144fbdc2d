#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (run as root):
# Debian's containerd 1.6, runc and CNI plugins, libseccomp (guests' seccomp filters), protoc
# (containerd's gRPC API for the benchmark client), busybox-static (the benchmark's native
# baseline), the wasm targets of the Rust toolchain, and
# containerd 2.1 from Debian sid unpacked into target/containerd-2.1 (never installed system-wide).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in containerd runc containernetworking-plugins protobuf-compiler busybox-static libseccomp-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# containerd 2.1 (config version 3) beside Debian's 1.6.
CTRD2_VERSION=${CTRD2_VERSION:-2.1.9}
dest=target/containerd-2.1
if [ ! -x "$dest/usr/bin/containerd" ]; then
  if [ ! -f /etc/apt/sources.list.d/sid.list ]; then
    echo "deb http://deb.debian.org/debian sid main" > /etc/apt/sources.list.d/sid.list
    printf 'Package: *\nPin: release a=unstable\nPin-Priority: 50\n' > /etc/apt/preferences.d/sid-low
    apt-get update -qq
  fi
  tmp=$(mktemp -d)
  version=$(apt-cache madison containerd | awk -v v="$CTRD2_VERSION" '$3 ~ "^"v {print $3; exit}')
  if [ -z "$version" ]; then
    echo "containerd $CTRD2_VERSION is not in Debian's archive" >&2
    exit 1
  fi
  (cd "$tmp" && apt-get download -qq "containerd=$version")
  mkdir -p "$dest"
  dpkg -x "$tmp"/containerd_*.deb "$dest"
  rm -rf "$tmp"
fi
"$dest/usr/bin/containerd" --version
