#!/usr/bin/env bash
# shellcheck disable=SC2317 # the checks are called through check()
# VM payload (issue 17): the Wasm shim on a cgroup v2 node with systemd, containerd run by
# systemd. Run from the host with scripts/vm/test-v2.sh, which puts into the payload directory the
# release shim (containerd-shim-wasmtime-v1) and the images hello.tar, exit-code.tar,
# sleeper.tar and busy-loop.tar.
#
# For ctr's default cgroupfs path (/default/<id>) and for a systemd path
# (--cgroup system.slice:wasm:<id>, a transient scope): hello prints its line and exits 0; the
# exit-code guest returns the code asked; a detached sleeper runs in its cgroup with memory.max
# set; busy-loop shows CPU usage in `ctr task metrics`; pause/resume; kill and delete remove the
# cgroup or scope; with --seccomp every thread of the guest has Seccomp: 2.
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

setup() {
  [ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "not cgroup v2"; return 1; }
  [ "$(systemctl is-active containerd)" = active ] || { echo "containerd.service is not active"; return 1; }
  install -m 0755 "$payload/containerd-shim-wasmtime-v1" /usr/local/bin/ || return 1
  local i
  for i in hello exit-code sleeper busy-loop; do
    timeout 300 ctr images import "$payload/$i.tar" || return 1
  done
  ctr images ls -q
  ctr run --help 2>&1 | grep -- '--cgroup'
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

check "setup: shim installed, images imported" setup
for driver in cgroupfs systemd; do
  check "$driver: hello prints its line and exits 0" hello "$driver"
  check "$driver: exit-code returns 7" exit_code "$driver"
  check "$driver: sleeper in its cgroup, memory.max, pause/resume, removed at delete" sleeper "$driver"
  check "$driver: busy-loop CPU usage in ctr task metrics" metrics "$driver"
  check "$driver: every guest thread has Seccomp: 2" seccomp "$driver"
done

echo "--- summary"
cat "$summary"
exit $failed
