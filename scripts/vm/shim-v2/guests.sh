# shellcheck shell=bash disable=SC2317 # sourced by run.sh; the checks are called through check()
# More ctr checks of the shim on the v2 node, per cgroup driver (run.sh's helpers: check,
# cgroup_flags, cgroup_dir, wait_status, guest_pid, remove; RUNTIME, IMG, payload): device
# nodes, OOM kills seen while the guest runs, capabilities on every thread, a native container
# through runc, exec into Wasm and native containers.

# A device node shipped in the image cannot be opened (nodev mounts: v2 has no devices controller).
device_node() { # DRIVER
  local id="device-$1" out rc
  # shellcheck disable=SC2046
  out=$(timeout 300 ctr run --rm --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") "$IMG/device-node:latest" "$id" 2>&1)
  rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 1 ] || { echo "exit status $rc, want 1"; return 1; }
  grep -q '^/devices/null: error: Permission denied' <<<"$out" && grep -q '^/data/message.txt: ' <<<"$out"
}

# The kernel's OOM killer stops a guest filling a tmpfs past its 48 MiB limit: TaskOOM comes
# before TaskExit (with systemd the scope is gone right after the exit: it is seen while the
# guest runs, through memory.events).
oom_event() { # DRIVER
  local id="oom-$1" ev evpid ok=1
  ev=$(mktemp)
  ctr events >"$ev" 2>&1 &
  evpid=$!
  sleep 1
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --memory-limit 50331648 --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    --mount type=tmpfs,src=tmpfs,dst=/scratch,options=size=512m "$IMG/disk-filler:latest" "$id" || ok=0
  wait_status "$id" STOPPED || ok=0
  timeout 120 ctr task delete "$id"
  timeout 60 ctr container delete "$id"
  sleep 2
  kill "$evpid"
  grep -E "/tasks/(oom|exit)" "$ev" | grep -- "$id"
  grep -q "/tasks/oom.*\"$id\"" "$ev" || { echo "no /tasks/oom for $id"; ok=0; }
  rm -f "$ev"
  remove "$id"
  ((ok))
}

# Every thread of a guest has the same capability sets, none with CAP_SYS_ADMIN (bit 21).
capabilities() { # DRIVER
  local id="caps-$1" pid t n=0 first="" sets ok=1
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") "$IMG/sleeper:latest" "$id" ||
    return 1
  wait_status "$id" RUNNING || ok=0
  pid=$(guest_pid "$id")
  for t in /proc/"$pid"/task/*; do
    n=$((n + 1))
    sets=$(grep '^Cap' "$t/status" | tr '\n' ' ')
    echo "$t: $sets"
    [ -z "$first" ] && first=$sets
    [ "$sets" = "$first" ] || ok=0
    local eff
    eff=$(awk '/^CapEff:/ {print $2}' "$t/status")
    (((16#$eff >> 21) & 1)) && { echo "CAP_SYS_ADMIN in $t"; ok=0; }
  done
  [ "$n" -gt 0 ] || ok=0
  remove "$id"
  ((ok))
}

# A native program (busybox) runs through runc under this shim: output, exit code, exec into it,
# in its cgroup, nothing left.
native() { # DRIVER
  local id="native-$1" out rc want pid cg ok=1
  # shellcheck disable=SC2046
  out=$(timeout 300 ctr run --rm --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    localhost/native/busybox:latest "$id" sh -c 'echo native says hi; exit 4' 2>&1)
  rc=$?
  printf '%s\n' "$out"
  [ "$rc" -eq 4 ] || { echo "exit status $rc, want 4"; ok=0; }
  grep -q 'native says hi' <<<"$out" || ok=0
  id="native-d-$1"
  want=$(cgroup_dir "$1" "$id")
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    localhost/native/busybox:latest "$id" sleep 1000 || return 1
  wait_status "$id" RUNNING || ok=0
  pid=$(guest_pid "$id")
  cg=$(cut -d: -f3 "/proc/$pid/cgroup")
  echo "native init $pid in $cg (want $want)"
  [ "$cg" = "$want" ] || ok=0
  out=$(timeout 120 ctr task exec --exec-id probe "$id" sh -c 'echo from exec; exit 6' 2>&1)
  rc=$?
  printf '%s\n' "$out"
  if [ "$rc" -ne 6 ] || ! grep -q 'from exec' <<<"$out"; then echo "exec: status $rc"; ok=0; fi
  remove "$id"
  [ -e "/sys/fs/cgroup$want" ] && { echo "cgroup $want left"; ok=0; }
  ((ok))
}

# Exec into a running Wasm container: a Wasm program of its image, found through PATH.
wasm_exec() { # DRIVER
  local id="wexec-$1" rc ok=1
  # shellcheck disable=SC2046
  timeout 300 ctr run -d --runtime "$RUNTIME" $(cgroup_flags "$1" "$id") \
    localhost/exec/wasm:latest "$id" || return 1
  wait_status "$id" RUNNING || ok=0
  timeout 120 ctr task exec --exec-id code "$id" exit-code.wasm 9
  rc=$?
  echo "exec status $rc"
  [ "$rc" -eq 9 ] || ok=0
  remove "$id"
  ((ok))
}

guest_checks() { # DRIVER
  check "$1: a device node in the image cannot be opened" device_node "$1"
  check "$1: the kernel's OOM kill gives TaskOOM" oom_event "$1"
  check "$1: every guest thread has the same capabilities, without CAP_SYS_ADMIN" capabilities "$1"
  check "$1: a native container runs through runc, exec into it" native "$1"
  check "$1: exec into a Wasm container" wasm_exec "$1"
}
