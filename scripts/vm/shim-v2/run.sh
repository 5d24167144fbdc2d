#!/usr/bin/env bash
# shellcheck disable=SC2317 # the checks are called through check()
# VM payload (issue 17): the Wasm shim on a cgroup v2 node with systemd, containerd run by
# systemd. Run from the host with scripts/vm/test-v2.sh, which puts into the payload directory the
# release shim (containerd-shim-wasmtime-v1), the installer (wasmtime-shim-installer), the CRI
# driver (v2-cri, from the tests crate) and the images hello.tar, exit-code.tar, sleeper.tar,
# busy-loop.tar and memory-hog.tar.
#
# The installer as an operator runs it: install (the drop-in, the `imports` line, the shim, a
# `systemctl restart containerd`), CRI lists the `wasmtime` handler with runc's SystemdCgroup, a
# second install changes nothing, uninstall restores config.toml byte for byte; then installed
# again for the checks below.
#
# For ctr's default cgroupfs path (/default/<id>) and for a systemd path
# (--cgroup system.slice:wasm:<id>, a transient scope): hello prints its line and exits 0; the
# exit-code guest returns the code asked; a detached sleeper runs in its cgroup with memory.max
# set; busy-loop shows CPU usage in `ctr task metrics`; pause/resume; kill and delete remove the
# cgroup or scope; with --seccomp every thread of the guest has Seccomp: 2.
#
# CRI as kubelet drives it (v2-cri pods DRIVER), once with the node's systemd cgroup driver (pod
# slices kubepods-burstable-pod<uid>.slice) and once, after switching runc's SystemdCgroup to
# false and reinstalling, with cgroupfs (/kubepods/besteffort/pod<uid>): a pod's lifecycle and
# log, its cgroups where kubelet names them, stats, a CPU quota, UpdateContainerResources,
# OOMKilled, and nothing left after removal.
#
# Prints one PASS/FAIL line per check (also in RESULTS_DIR/shim-v2.txt); exits 1 on any FAIL.
# Timeouts are generous (TCG is 10–50x slower); nothing asserts on times.
set -uo pipefail

results=${RESULTS_DIR:?run through scripts/vm/run.sh}
payload=${PAYLOAD_DIR:-$(cd "$(dirname "$0")" && pwd)}
summary=$results/shim-v2.txt
: >"$summary"
failed=0
RUNTIME=io.containerd.wasmtime.v1
IMG=localhost/wasmtime-shim
CONFIG=/etc/containerd/config.toml
DROPIN=/etc/containerd/conf.d/wasmtime-shim.toml
SHIM=/usr/local/bin/containerd-shim-wasmtime-v1
# The release the installer installs, copied out of the (slow, 9p) payload directory once.
RELEASE=/tmp/release/containerd-shim-wasmtime-v1

# check NAME COMMAND...: runs COMMAND (its output goes to payload.log) and records the outcome.
check() {
  local name=$1
  shift
  echo "== $name"
  if "$@"; then
    echo "PASS $name" | tee -a "$summary"
  else
    echo "FAIL $name" | tee -a "$summary"
    failed=1
  fi
}

# guest_pid ID: the task's pid, from `ctr task ls`.
guest_pid() { ctr task ls | awk -v id="$1" '$1 == id {print $2}'; }
task_status() { ctr task ls | awk -v id="$1" '$1 == id {print $3}'; }

# wait_status ID STATUS: polls for up to 120 s.
wait_status() {
  local i
  for i in $(seq 240); do
    [ "$(task_status "$1")" = "$2" ] && return 0
    sleep 0.5
  done
  echo "task $1 is $(task_status "$1"), not $2"
  return 1
}

# remove ID: kill, delete task and container, whatever state they are in.
remove() {
  if [ -n "$(task_status "$1")" ]; then
    timeout 120 ctr task kill -s SIGKILL "$1" 2>/dev/null
    wait_status "$1" STOPPED >/dev/null 2>&1
    timeout 120 ctr task delete --force "$1" 2>/dev/null
  fi
  if ctr container ls -q | grep -qx -- "$1"; then
    timeout 60 ctr container delete "$1" 2>/dev/null
  fi
  true
}

# Per driver: the ctr flags for a container ID, and the cgroup directory it should get.
cgroup_flags() { # DRIVER ID
  if [ "$1" = systemd ]; then echo "--cgroup system.slice:wasm:$2"; fi
}
cgroup_dir() { # DRIVER ID
  if [ "$1" = systemd ]; then echo "/system.slice/wasm-$2.scope"; else echo "/default/$2"; fi
}

# The node as kubeadm leaves it before the shim: images (ctr's namespace, and CRI's k8s.io with
# the pinned sandbox image), a CNI bridge network (CRI adds the loopback plugin itself).
setup() {
  [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "not cgroup v2"; return 1; }
  [ "$(systemctl is-active containerd)" = active ] || { echo "containerd.service is not active"; return 1; }
  local i
  install -D -m 0755 "$payload/containerd-shim-wasmtime-v1" "$RELEASE" || return 1
  for i in hello exit-code sleeper busy-loop device-node disk-filler busybox wasm-exec; do
    timeout 300 ctr images import "$payload/$i.tar" || return 1
  done
  "$payload/v2-cri" pause-image /tmp/pause.tar || return 1
  for i in hello sleeper busy-loop memory-hog busybox wasm-exec; do
    timeout 300 ctr -n k8s.io images import "$payload/$i.tar" || return 1
  done
  timeout 300 ctr -n k8s.io images import /tmp/pause.tar || return 1
  ctr images ls -q
  ctr -n k8s.io images ls -q
  cat >/etc/cni/net.d/10-pods.conflist <<'JSON'
{"cniVersion": "1.0.0", "name": "pods", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
  ctr run --help 2>&1 | grep -- '--cgroup'
}

# --- the installer

installer() { timeout 600 "$payload/wasmtime-shim-installer" "$@"; }
install_shim() { installer install --shim "$RELEASE"; }
# systemd's id of containerd.service's current run: a `systemctl restart` changes it.
invocation() { systemctl show -P InvocationID containerd; }
handlers() { timeout 300 "$payload/v2-cri" handlers; }

# containerd is active, run by systemd from its unit (not a process the installer started).
containerd_by_systemd() {
  local pid
  [ "$(systemctl is-active containerd)" = active ] || { echo "containerd.service is not active"; return 1; }
  pid=$(systemctl show -P MainPID containerd)
  grep -qx '0::/system.slice/containerd.service' "/proc/$pid/cgroup" ||
    { echo "containerd ($pid) is not in containerd.service's cgroup"; return 1; }
}

# handler_is NAME SYSTEMD: CRI's verbose Status lists handler NAME with SystemdCgroup=SYSTEMD.
handler_is() {
  local out
  out=$(handlers) || { echo "$out"; return 1; }
  printf '%s\n' "$out"
  grep -qx "$1 [^ ]* SystemdCgroup=$2" <<<"$out" || { echo "no handler $1 with SystemdCgroup=$2"; return 1; }
}

install_first() {
  local before out ok=1
  cp "$CONFIG" /tmp/config.toml.orig
  before=$(invocation)
  out=$(install_shim 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  grep -q 'restarted containerd (systemctl restart)' <<<"$out" || { echo "no systemd restart reported"; ok=0; }
  [ "$(invocation)" != "$before" ] || { echo "containerd.service was not restarted"; ok=0; }
  containerd_by_systemd || ok=0
  handler_is wasmtime true || ok=0
  timeout 120 containerd config dump | grep -F "runtimes.wasmtime" || { echo "not in containerd config dump"; ok=0; }
  cmp "$RELEASE" "$SHIM" || ok=0
  ((ok))
}

install_again_changes_nothing() {
  local before config dropin out ok=1
  before=$(invocation)
  config=$(sha256sum "$CONFIG")
  dropin=$(sha256sum "$DROPIN")
  out=$(install_shim 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  grep -q 'nothing to change' <<<"$out" || ok=0
  [ "$(sha256sum "$CONFIG")" = "$config" ] || { echo "$CONFIG changed"; ok=0; }
  [ "$(sha256sum "$DROPIN")" = "$dropin" ] || { echo "$DROPIN changed"; ok=0; }
  [ "$(invocation)" = "$before" ] || { echo "containerd was restarted"; ok=0; }
  ((ok))
}

# SystemdCgroup of the wasmtime handler is the runc handler's.
driver_follows_runc() { # WANT
  handler_is runc "$1" && handler_is wasmtime "$1"
}

uninstall_restores() {
  local before out ok=1
  before=$(invocation)
  out=$(installer uninstall 2>&1) || { printf '%s\n' "$out"; return 1; }
  printf '%s\n' "$out"
  cmp "$CONFIG" /tmp/config.toml.orig || { diff -u /tmp/config.toml.orig "$CONFIG"; ok=0; }
  [ ! -e "$DROPIN" ] || { echo "$DROPIN left"; ok=0; }
  [ ! -e "$SHIM" ] || { echo "$SHIM left"; ok=0; }
  [ "$(invocation)" != "$before" ] || { echo "containerd.service was not restarted"; ok=0; }
  containerd_by_systemd || ok=0
  out=$(handlers) || { echo "$out"; return 1; }
  printf '%s\n' "$out"
  if grep -q '^wasmtime ' <<<"$out"; then
    echo "CRI still has the wasmtime handler"
    ok=0
  fi
  ((ok))
}

install_for_checks() { # SYSTEMD
  install_shim && containerd_by_systemd && handler_is wasmtime "$1"
}

# kubelet's cgroupfs driver: runc's SystemdCgroup off in config.toml, the shim reinstalled (its
# handler follows runc's), containerd restarted by the installer.
switch_to_cgroupfs() {
  installer uninstall || return 1
  sed -i 's/^\( *SystemdCgroup = \)true$/\1false/' "$CONFIG"
  grep -n SystemdCgroup "$CONFIG"
  cp "$CONFIG" /tmp/config.toml.orig
  install_for_checks false && driver_follows_runc false
}

# --- CRI

# cri_checks DRIVER: v2-cri's PASS/FAIL lines go to the summary; a crash without one is a FAIL.
cri_checks() {
  local out=/tmp/v2-cri-$1.txt rc
  echo "== CRI checks, $1 (details on stderr)"
  timeout 1800 "$payload/v2-cri" pods "$1" >"$out"
  rc=$?
  tee -a "$summary" <"$out"
  if [ "$rc" -ne 0 ]; then
    failed=1
    grep -q '^FAIL ' "$out" || echo "FAIL $1: CRI checks exited with status $rc" | tee -a "$summary"
  fi
}

hello() { # DRIVER
  local id="hello-$1" out rc
  # shellcheck disable=SC2046
  out=$(timeout 300 ctr run --rm --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") "$IMG/hello:latest" "$id" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 0 ] || { echo "exit status $rc"; return 1; }
  grep -q 'Hello from WebAssembly!' <<<"$out"
}

exit_code() { # DRIVER
  local id="exit-$1" rc
  # shellcheck disable=SC2046
  timeout 300 ctr run --rm --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    "$IMG/exit-code:latest" "$id" /exit-code.wasm 7
  rc=$?
  echo "exit status $rc"
  [ "$rc" -eq 7 ]
}

# A detached sleeper with a 64 MiB limit: in its cgroup, memory.max set; pause/resume; kill and
# delete remove the cgroup (and the scope).
sleeper() { # DRIVER
  local driver=$1 id="sleep-$1" want pid cg max ok=1
  want=$(cgroup_dir "$driver" "$id")
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --memory-limit 67108864 --runtime "$RUNTIME" $(cgroup_flags "$driver" "$id") \
    "$IMG/sleeper:latest" "$id" || return 1
  wait_status "$id" RUNNING || { remove "$id"; return 1; }
  pid=$(guest_pid "$id")
  cg=$(cut -d: -f3 "/proc/$pid/cgroup")
  max=$(cat "/sys/fs/cgroup$want/memory.max" 2>&1)
  echo "task $id: pid $pid, cgroup $cg (want $want), memory.max $max"
  [ "$cg" = "$want" ] || ok=0
  [ "$max" = 67108864 ] || ok=0
  if [ "$driver" = systemd ]; then
    systemctl is-active "wasm-$id.scope" || ok=0
  fi
  timeout 120 ctr task pause "$id" || ok=0
  wait_status "$id" PAUSED || ok=0
  echo "cgroup.freeze: $(cat "/sys/fs/cgroup$want/cgroup.freeze" 2>&1)"
  timeout 120 ctr task resume "$id" || ok=0
  wait_status "$id" RUNNING || ok=0
  timeout 120 ctr task kill -s SIGKILL "$id" || ok=0
  wait_status "$id" STOPPED || ok=0
  timeout 120 ctr task delete "$id" || ok=0
  timeout 60 ctr container delete "$id" || ok=0
  if [ -e "/sys/fs/cgroup$want" ]; then
    echo "cgroup $want left behind"
    ok=0
  fi
  if [ "$driver" = systemd ] && systemctl is-active --quiet "wasm-$id.scope"; then
    echo "scope wasm-$id.scope still active"
    ok=0
  fi
  remove "$id"
  ((ok))
}

# busy-loop spins: after a few seconds its metrics show CPU usage.
metrics() { # DRIVER
  local id="busy-$1" out total ok=1
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") "$IMG/busy-loop:latest" "$id" ||
    return 1
  wait_status "$id" RUNNING || ok=0
  sleep 5
  out=$(timeout 120 ctr task metrics --format json "$id" 2>&1)
  printf '%s\n' "$out"
  total=$(tr -d ' \n' <<<"$out" | grep -o '"cpu":{"usage":{"total":[0-9]*' | grep -o '[0-9]*$' | head -n 1)
  echo "cpu usage total: ${total:-none} ns"
  [ -n "$total" ] && [ "$total" -gt 0 ] || ok=0
  # The table form (ctr 2.1 crashed printing a message without CPU usage).
  timeout 120 ctr task metrics "$id" || ok=0
  remove "$id"
  ((ok))
}

# Every thread of a guest run with --seccomp has a filter.
seccomp() { # DRIVER
  local id="seccomp-$1" pid t n=0 ok=1
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --seccomp --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    "$IMG/sleeper:latest" "$id" || return 1
  wait_status "$id" RUNNING || ok=0
  pid=$(guest_pid "$id")
  for t in /proc/"$pid"/task/*; do
    n=$((n + 1))
    grep -H '^Seccomp:' "$t/status"
    grep -q '^Seccomp:[[:space:]]*2$' "$t/status" || ok=0
  done
  echo "$n threads"
  [ "$n" -gt 0 ] || ok=0
  remove "$id"
  ((ok))
}

# shellcheck source=scripts/vm/shim-v2/guests.sh
. "$payload/guests.sh"

check "setup: images imported, CNI network" setup
check "installer: install restarts containerd through systemd, CRI lists wasmtime" install_first
check "installer: a second install changes nothing and restarts nothing" install_again_changes_nothing
check "installer: wasmtime's SystemdCgroup is runc's (true)" driver_follows_runc true
check "installer: uninstall restores config.toml byte-identical, removes the shim" uninstall_restores
check "installer: install again" install_for_checks true
if [ ! -x "$SHIM" ]; then
  echo "the installer left no shim: copying it for the checks below"
  install -m 0755 "$RELEASE" "$SHIM"
fi
for driver in cgroupfs systemd; do
  check "$driver: hello prints its line and exits 0" hello "$driver"
  check "$driver: exit-code returns 7" exit_code "$driver"
  check "$driver: sleeper in its cgroup, memory.max, pause/resume, removed at delete" sleeper "$driver"
  check "$driver: busy-loop CPU usage in ctr task metrics" metrics "$driver"
  check "$driver: every guest thread has Seccomp: 2" seccomp "$driver"
  guest_checks "$driver"
done
cri_checks systemd
check "installer: runc and wasmtime switched to cgroupfs (SystemdCgroup = false)" switch_to_cgroupfs
cri_checks cgroupfs
check "installer: uninstall restores the cgroupfs config.toml" uninstall_restores

echo "--- summary"
cat "$summary"
exit $failed
