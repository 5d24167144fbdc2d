#!/usr/bin/env bash
# shellcheck disable=SC2317 # the checks are called through check()
# Smoke payload of the test VM: checks that the VM is the node later tests need (systemd as PID 1,
# cgroup v2 with its controllers, containerd running as a systemd service, D-Bus, runc, the CNI
# plugins) and that containerd runs a native busybox container through runc with each cgroup
# driver and on a CNI bridge. Run from the host:
#
#   scripts/vm/run.sh scripts/vm/smoke target/vm/results/smoke
#
# Writes smoke.txt (one line per check, with its time), boot.txt (systemd's boot timing) and
# versions.txt to the results directory; exits 1 if a check failed.
set -uo pipefail

results=${RESULTS_DIR:?run through scripts/vm/run.sh}
summary=$results/smoke.txt
: >"$summary"
failed=0

now() { cut -d' ' -f1 /proc/uptime; }

# check NAME COMMAND...: runs COMMAND (its output goes to payload.log) and records the outcome.
check() {
  local name=$1 start status
  shift
  start=$(now)
  echo "== $name"
  if "$@"; then status=ok; else status=FAIL failed=1; fi
  awk -v s="$status" -v n="$name" -v a="$start" -v b="$(now)" \
    'BEGIN {printf "%-4s %-30s %6.1f s\n", s, n, b - a}' | tee -a "$summary"
}

# expect PATTERN COMMAND...: COMMAND succeeds and its output contains PATTERN.
expect() {
  local pattern=$1 out
  shift
  out=$(timeout 180 "$@" 2>&1)
  local rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 0 ] || { echo "exit status $rc"; return 1; }
  grep -q -- "$pattern" <<<"$out" || { echo "expected: $pattern"; return 1; }
}

pid1() {
  ps -o pid=,comm=,args= -p 1
  [ "$(cat /proc/1/comm)" = systemd ]
}

cgroup2() {
  local fs controllers c
  fs=$(stat -fc %T /sys/fs/cgroup)
  controllers=$(cat /sys/fs/cgroup/cgroup.controllers)
  echo "/sys/fs/cgroup: $fs; controllers: $controllers"
  [ "$fs" = cgroup2fs ] || return 1
  for c in cpuset cpu io memory pids; do
    [[ " $controllers " == *" $c "* ]] || { echo "controller $c missing"; return 1; }
  done
}

containerd_service() {
  systemctl --no-pager status containerd | head -n 12
  [ "$(systemctl is-active containerd)" = active ] &&
    grep -qx '0::/system.slice/containerd.service' "/proc/$(systemctl show -P MainPID containerd)/cgroup"
}

# runc's systemd cgroup driver talks to systemd through dbus-daemon (the system bus).
dbus_systemd() {
  expect '"' busctl --system get-property org.freedesktop.systemd1 /org/freedesktop/systemd1 \
    org.freedesktop.systemd1.Manager Version
}

cni_plugins() {
  local p
  for p in bridge host-local loopback portmap; do
    [ -x "/usr/lib/cni/$p" ] || { echo "no /usr/lib/cni/$p"; return 1; }
  done
  iptables --version
}

# A one-layer OCI image (busybox from the VM's busybox-static) as an archive `ctr images import`
# takes, named localhost/vm-smoke/busybox:latest.
busybox_image() {
  local dir out=$1
  dir=$(mktemp -d)
  mkdir -p "$dir/rootfs/bin" "$dir/oci/blobs/sha256"
  cp /usr/bin/busybox "$dir/rootfs/bin/busybox"
  ln -s busybox "$dir/rootfs/bin/sh"
  tar --numeric-owner --owner=0 --group=0 --mtime=@0 -C "$dir/rootfs" -cf "$dir/layer" .
  blob() { # FILE -> "sha256:<digest> <size>", stored under blobs/
    local d
    d=$(sha256sum "$1" | cut -d' ' -f1)
    cp "$1" "$dir/oci/blobs/sha256/$d"
    echo "sha256:$d $(stat -c %s "$1")"
  }
  read -r layer layer_size < <(blob "$dir/layer")
  printf '{"architecture":"amd64","os":"linux","config":{"Cmd":["/bin/sh"]},"rootfs":{"type":"layers","diff_ids":["%s"]}}' \
    "$layer" >"$dir/config"
  read -r config config_size < <(blob "$dir/config")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%s}]}' \
    "$config" "$config_size" "$layer" "$layer_size" >"$dir/manifest"
  read -r manifest manifest_size < <(blob "$dir/manifest")
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"%s","size":%s,"platform":{"architecture":"amd64","os":"linux"},"annotations":{"io.containerd.image.name":"localhost/vm-smoke/busybox:latest","org.opencontainers.image.ref.name":"latest"}}]}' \
    "$manifest" "$manifest_size" >"$dir/oci/index.json"
  echo '{"imageLayoutVersion":"1.0.0"}' >"$dir/oci/oci-layout"
  tar -C "$dir/oci" -cf "$out" oci-layout index.json blobs
  rm -rf "$dir"
}

image=localhost/vm-smoke/busybox:latest
import_image() {
  busybox_image /tmp/busybox-oci.tar && timeout 180 ctr images import /tmp/busybox-oci.tar &&
    ctr images ls -q | grep -qx "$image"
}

run_echo() {
  expect hello-from-runc ctr run --rm "$image" smoke-echo /bin/busybox echo hello-from-runc
}

# native ID CGROUP [CTR RUN OPTIONS]: a detached container with a 64 MiB limit is in cgroup CGROUP
# with memory.max set, and the cgroup is gone after the task and container are deleted.
native() {
  local id=$1 want=$2 pid cg max ok=0
  shift 2
  timeout 180 ctr run -d --memory-limit 67108864 "$@" "$image" "$id" /bin/busybox sleep 600 || return 1
  pid=$(ctr task ls | awk -v id="$id" '$1 == id {print $2}')
  cg=$(cut -d: -f3 "/proc/$pid/cgroup")
  max=$(cat "/sys/fs/cgroup$cg/memory.max")
  echo "task $id: pid $pid, cgroup $cg, memory.max $max"
  [ "$cg" = "$want" ] && [ "$max" = 67108864 ] && ok=1
  timeout 120 ctr task delete --force "$id" && timeout 60 ctr container delete "$id" || ok=0
  if [ -e "/sys/fs/cgroup$cg" ]; then
    echo "cgroup $cg left behind"
    ok=0
  fi
  ((ok))
}

# ctr's default cgroup path /default/<id>, through runc's cgroupfs driver.
run_cgroupfs() { native smoke-cgroupfs /default/smoke-cgroupfs; }

# runc's systemd driver: a transient scope created over D-Bus, its limit applied by systemd.
run_systemd() {
  native smoke-systemd /system.slice/smoke-systemd.scope \
    --runc-systemd-cgroup --cgroup system.slice:smoke:systemd
}

# A bridge network from the CNI plugins (iptables for the masquerade rule).
run_cni() {
  cat >/etc/cni/net.d/10-smoke.conflist <<'JSON'
{"cniVersion": "1.0.0", "name": "smoke", "plugins": [
  {"type": "bridge", "bridge": "cni-smoke0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]], "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  expect 'inet 10.88.' ctr run --rm --cni "$image" smoke-cni /bin/busybox ip -4 addr show eth0
  local rc=$?
  rm -f /etc/cni/net.d/10-smoke.conflist
  return "$rc"
}

echo "payload started at uptime $(now) s"
check "systemd is PID 1" pid1
check "cgroup v2 (cgroup2fs)" cgroup2
check "containerd.service active" containerd_service
check "systemd over D-Bus" dbus_systemd
check "ctr version" expect 'Server:' ctr version
check "runc --version" expect 'runc version' runc --version
check "CNI plugins, iptables" cni_plugins
check "import busybox image" import_image
check "runc: ctr run --rm echo" run_echo
check "runc, cgroupfs driver" run_cgroupfs
check "runc, systemd driver" run_systemd
check "runc, CNI bridge" run_cni

{
  uname -r
  systemctl --version | head -n 1
  containerd --version
  runc --version | head -n 1
} >"$results/versions.txt"
{
  timeout 60 systemctl is-system-running --wait
  systemd-analyze time
  systemd-analyze critical-chain vm-payload.service containerd.service
} >"$results/boot.txt" 2>&1

echo "smoke checks done at uptime $(now) s"
cat "$summary"
exit $failed
