#!/usr/bin/env bash
# Installs what building and testing need on a fresh Debian 12 machine (run as root):
# Debian's containerd 1.6, runc and CNI plugins, libseccomp (guests' seccomp filters), protoc
# (containerd's gRPC API for the benchmark client), busybox-static (the benchmark's native
# baseline), docker-registry and htpasswd (the registry the image tests push to), wrk (the HTTP
# benchmark's load generator), the wasm
# targets of the Rust toolchain, and containerd 1.7 and 2.1 (below).
set -euo pipefail
cd "$(dirname "$0")/.."

export DEBIAN_FRONTEND=noninteractive
need=()
for pkg in containerd runc containernetworking-plugins protobuf-compiler busybox-static libseccomp-dev \
  docker-registry apache2-utils wrk; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if ((${#need[@]})); then
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2

# containerd 1.7 (Debian trixie) and 2.1 (sid, config version 3) beside Debian's 1.6, each
# unpacked into target/containerd-<minor> and never installed system-wide.
fetch_containerd() {
  local suite=$1 wanted=$2 dest=$3
  [ -x "$dest/usr/bin/containerd" ] && return 0
  if [ ! -f "/etc/apt/sources.list.d/$suite.list" ]; then
    echo "deb http://deb.debian.org/debian $suite main" > "/etc/apt/sources.list.d/$suite.list"
    printf 'Package: *\nPin: release n=%s\nPin-Priority: 50\n' "$suite" > "/etc/apt/preferences.d/$suite-low"
    apt-get update -qq
  fi
  local tmp version
  tmp=$(mktemp -d)
  version=$(apt-cache madison containerd | awk -v v="$wanted" '$3 ~ "^"v {print $3; exit}')
  if [ -z "$version" ]; then
    echo "containerd $wanted is not in Debian's archive" >&2
    exit 1
  fi
  (cd "$tmp" && apt-get download -qq "containerd=$version")
  mkdir -p "$dest"
  dpkg -x "$tmp"/containerd_*.deb "$dest"
  rm -rf "$tmp"
}
fetch_containerd trixie "${CTRD17_VERSION:-1.7.24}" target/containerd-1.7
fetch_containerd sid "${CTRD2_VERSION:-2.1.9}" target/containerd-2.1
target/containerd-1.7/usr/bin/containerd --version
target/containerd-2.1/usr/bin/containerd --version
