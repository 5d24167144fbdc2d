#!/usr/bin/env bash
# VM payload (issue 17): the Wasm shim against runc on the cgroup v2 + systemd node, in one run.
# Run from the host with scripts/vm/bench.sh, which puts into the payload directory the release
# shim (containerd-shim-wasmtime-v1) and the images hello.tar, sleeper.tar and busybox.tar (a
# static busybox, built on the host with mkimage).
#
#   1. `ctr run --rm`: hello (io.containerd.wasmtime.v1) against busybox `echo` (runc), with ctr's
#      default cgroupfs path (/default/<id>) and with a systemd path
#      (--cgroup system.slice:bench:<id>; runc with --runc-systemd-cgroup). The four kinds take
#      turns, so drift and the host's other load reach all of them alike.
#   2. The shim's Create handler (`created ... took_us=` in containerd's journal) for hello with a
#      cgroupfs path: guests born in their cgroup (clone3 CLONE_INTO_CGROUP, the default), then
#      moved in (WASMTIME_SHIM_CLONE_INTO_CGROUP=off in containerd's environment through a
#      systemd drop-in, inherited by the shims), then born in again once the drop-in is gone.
#   3. API cycles: `ctr run -d`, `ctr task kill -s SIGKILL`, `ctr task delete -f` (waits for the
#      exit, then deletes), `ctr container delete`, one after another; sleeper against busybox
#      `sleep 1000`, taking turns, cgroupfs paths.
#
# BENCH_N (default 10; bench.sh passes it in the file env) runs per kind after one warm-up run
# each (the first hello compiles).
# Writes bench.md (the tables), samples.csv (every sample) and versions.txt to RESULTS_DIR;
# exits 1 if a run failed or a check on the setup did not hold. QEMU TCG: absolute times are
# 10-50x a real node's; compare the ratios, measured in this run.
set -uo pipefail

results=${RESULTS_DIR:?run through scripts/vm/run.sh}
payload=${PAYLOAD_DIR:-$(cd "$(dirname "$0")" && pwd)}
# bench.sh passes BENCH_N in the payload's env file.
# shellcheck disable=SC1091
if [ -f "$payload/env" ]; then . "$payload/env"; fi
N=${BENCH_N:-10}
RUNTIME=io.containerd.wasmtime.v1
IMG=localhost/wasmtime-shim
BUSYBOX=localhost/bench/busybox:latest
DROPIN=/etc/systemd/system/containerd.service.d/bench-clone-into-cgroup.conf
report=$results/bench.md
samples=$results/samples.csv
echo "section,kind,run,value" >"$samples"
failed=0

say() { echo "bench: $*"; }
fail() {
  echo "bench: FAIL $*"
  failed=1
}
now_ns() { date +%s%N; }

# stats FILE: "median p90 min max n" of the numbers in FILE (nearest-rank percentiles).
stats() {
  sort -g "$1" | awk '{v[NR] = $1}
    END {
      if (NR == 0) { print "- - - - 0"; exit }
      m = int((NR + 1) / 2); p = int(NR * 0.9); if (p < NR * 0.9) p++
      print v[m], v[p], v[1], v[NR], NR
    }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

# timed SECTION KIND RUN COMMAND...: runs COMMAND (output to payload.log), appends its wall time
# in ms to /tmp/bench/SECTION-KIND and samples.csv; returns COMMAND's status.
timed() {
  local section=$1 kind=$2 run=$3 t0 t1 rc ms
  shift 3
  t0=$(now_ns)
  "$@"
  rc=$?
  t1=$(now_ns)
  ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", (b - a) / 1e6}')
  if [ "$rc" -eq 0 ]; then
    echo "$ms" >>"/tmp/bench/$section-$kind"
    echo "$section,$kind,$run,$ms" >>"$samples"
  else
    fail "$section $kind run $run: exit status $rc"
  fi
  return "$rc"
}

# expect_out PATTERN COMMAND...: COMMAND exits 0 and prints PATTERN.
expect_out() {
  local pattern=$1 out rc
  shift
  out=$(timeout 300 "$@" 2>&1)
  rc=$?
  [ "$rc" -eq 0 ] || { printf '%s\n' "$out"; return "$rc"; }
  grep -q -- "$pattern" <<<"$out" || { printf '%s\n' "$out"; echo "expected: $pattern"; return 1; }
}

cgroup_flags() { # DRIVER ID RUNTIME
  if [ "$1" = systemd ]; then
    echo "--cgroup system.slice:bench:$2"
    if [ "$3" = runc ]; then echo --runc-systemd-cgroup; fi
  fi
}

run_wasm() { # DRIVER ID
  # shellcheck disable=SC2046
  expect_out 'Hello from WebAssembly!' ctr run --rm --runtime "$RUNTIME" $(cgroup_flags "$1" "$2" wasm) \
    "$IMG/hello:latest" "$2"
}
run_runc() { # DRIVER ID
  # shellcheck disable=SC2046
  expect_out '^bench-echo$' ctr run --rm $(cgroup_flags "$1" "$2" runc) "$BUSYBOX" "$2" \
    /bin/busybox echo bench-echo
}

# One API cycle of container ID: create+start, kill, wait+delete the task, delete the container.
cycle() { # wasm|runc ID
  if [ "$1" = wasm ]; then
    timeout 300 ctr run -d --null-io --runtime "$RUNTIME" "$IMG/sleeper:latest" "$2" || return 1
  else
    timeout 300 ctr run -d --null-io "$BUSYBOX" "$2" /bin/busybox sleep 1000 || return 1
  fi
  timeout 300 ctr task kill -s SIGKILL "$2" || return 1
  timeout 300 ctr task delete -f "$2" >/dev/null || return 1
  timeout 300 ctr container delete "$2"
}

# Leftovers of a failed run.
cleanup_id() {
  timeout 120 ctr task delete -f "$1" >/dev/null 2>&1
  timeout 60 ctr container delete "$1" >/dev/null 2>&1
  true
}

restart_containerd() {
  systemctl daemon-reload
  timeout 300 systemctl restart containerd || return 1
  local i
  for i in $(seq 120); do
    timeout 30 ctr version >/dev/null 2>&1 && return 0
    sleep 0.5
  done
  echo "containerd did not come back"
  return 1
}

# containerd_env: containerd's WASMTIME_SHIM_CLONE_INTO_CGROUP ("unset" if it has none).
containerd_env() {
  local pid
  pid=$(systemctl show -P MainPID containerd)
  tr '\0' '\n' <"/proc/$pid/environ" | sed -n 's/^WASMTIME_SHIM_CLONE_INTO_CGROUP=//p' | grep . || echo unset
}

# A detached sleeper's shim process has the variable containerd has (the shims inherit it).
shim_env_is() { # WANT
  local id=bench-envcheck pid env
  timeout 300 ctr run -d --null-io --runtime "$RUNTIME" "$IMG/sleeper:latest" "$id" || return 1
  pid=$(pgrep -o -f -- "containerd-shim-wasmtime-v1 .*-id $id( |$)")
  [ -n "$pid" ] || { pgrep -a containerd-shim; echo "no shim for $id"; cleanup_id "$id"; return 1; }
  env=$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null | sed -n 's/^WASMTIME_SHIM_CLONE_INTO_CGROUP=//p')
  echo "shim $pid: WASMTIME_SHIM_CLONE_INTO_CGROUP=${env:-unset} (want $1)"
  timeout 120 ctr task kill -s SIGKILL "$id"
  cleanup_id "$id"
  [ "${env:-unset}" = "$1" ]
}

# took_us PREFIX: the Create times (µs) the shims logged for container ids PREFIX<n>.
took_us() {
  journalctl -u containerd -o cat --no-pager |
    grep -o "create{id=$1[0-9]*}: created pid=[0-9]* took_us=[0-9]*" | sed 's/.*took_us=//'
}

row() { # LABEL FILE [UNIT_DIVISOR]: a table row "label | median | p90 | min | max | n"
  local s
  read -r -a s <<<"$(stats "$2")"
  awk -v l="$1" -v d="${3:-1}" -v m="${s[0]}" -v p="${s[1]}" -v lo="${s[2]}" -v hi="${s[3]}" -v n="${s[4]}" \
    'BEGIN { if (n == 0) { printf "| %s | - | - | - | - | 0 |\n", l; exit }
             printf "| %s | %.1f | %.1f | %.1f | %.1f | %d |\n", l, m / d, p / d, lo / d, hi / d, n }'
}
median() { read -r m _ <<<"$(stats "$1")"; echo "$m"; }

# --- setup

mkdir -p /tmp/bench
rm -f /tmp/bench/*
start=$SECONDS
[ "$(stat -fc %T /sys/fs/cgroup)" = cgroup2fs ] || { echo "not cgroup v2"; exit 1; }
[ "$(systemctl is-active containerd)" = active ] || { echo "containerd.service is not active"; exit 1; }
install -m 0755 "$payload/containerd-shim-wasmtime-v1" /usr/local/bin/containerd-shim-wasmtime-v1
for tar in hello sleeper busybox; do
  timeout 300 ctr images import "$payload/$tar.tar" >/dev/null || { echo "import $tar.tar failed"; exit 1; }
done
ctr images ls -q
{
  echo "kernel $(uname -r), $(nproc) vCPUs, $(awk '/MemTotal/ {print $2 / 1024 " MiB"}' /proc/meminfo)"
  containerd --version
  runc --version | head -n 1
  ctr version | sed -n 's/^ *Version: */ctr and containerd: /p' | sort -u
  echo "shim sha256 $(sha256sum "$payload/containerd-shim-wasmtime-v1" | cut -d' ' -f1)"
  echo "containerd environment WASMTIME_SHIM_CLONE_INTO_CGROUP: $(containerd_env)"
} | tee "$results/versions.txt"

say "warm-up (the first hello compiles and caches its module)"
for driver in cgroupfs systemd; do
  run_wasm "$driver" "warm-wasm-$driver" || fail "warm-up wasm $driver"
  run_runc "$driver" "warm-runc-$driver" || fail "warm-up runc $driver"
done

# --- 1. ctr run --rm

say "1. ctr run --rm, $N runs of each kind, taking turns"
t1=$SECONDS
for i in $(seq "$N"); do
  for driver in cgroupfs systemd; do
    timed run "wasm-$driver" "$i" run_wasm "$driver" "run-wasm-$driver-$i" || cleanup_id "run-wasm-$driver-$i"
    timed run "runc-$driver" "$i" run_runc "$driver" "run-runc-$driver-$i" || cleanup_id "run-runc-$driver-$i"
  done
done
say "section 1 took $((SECONDS - t1)) s"

# --- 2. Create handler: born in the cgroup against moved in

create_phase() { # KIND
  local i
  for i in $(seq "$N"); do
    run_wasm cgroupfs "create-$1-$i" || { fail "create $1 run $i"; cleanup_id "create-$1-$i"; }
  done
}

say "2. Create handler, born in / moved in / born in, $N runs each"
t2=$SECONDS
create_phase born-a
shim_env_is unset || fail "the shim had WASMTIME_SHIM_CLONE_INTO_CGROUP before the drop-in"
mkdir -p "$(dirname "$DROPIN")"
printf '[Service]\nEnvironment=WASMTIME_SHIM_CLONE_INTO_CGROUP=off\n' >"$DROPIN"
restart_containerd || fail "restart containerd with the drop-in"
echo "containerd environment WASMTIME_SHIM_CLONE_INTO_CGROUP: $(containerd_env)"
shim_env_is off || fail "the shim did not inherit WASMTIME_SHIM_CLONE_INTO_CGROUP=off"
run_wasm cgroupfs warm-moved || fail "warm-up after the restart"
create_phase moved
rm -f "$DROPIN"
restart_containerd || fail "restart containerd without the drop-in"
echo "containerd environment WASMTIME_SHIM_CLONE_INTO_CGROUP: $(containerd_env)"
shim_env_is unset || fail "the shim still had WASMTIME_SHIM_CLONE_INTO_CGROUP"
run_wasm cgroupfs warm-born-b || fail "warm-up after the restart"
create_phase born-b
say "section 2 took $((SECONDS - t2)) s"
for kind in born-a moved born-b; do
  took_us "create-$kind-" >"/tmp/bench/create-$kind"
  awk -v k="$kind" '{print "create," k "," NR "," $1}' "/tmp/bench/create-$kind" >>"$samples"
done
cat /tmp/bench/create-born-a /tmp/bench/create-born-b >/tmp/bench/create-born
for driver in cgroupfs systemd; do
  took_us "run-wasm-$driver-" >"/tmp/bench/create-run-$driver"
  awk -v k="run-$driver" '{print "create," k "," NR "," $1}' "/tmp/bench/create-run-$driver" >>"$samples"
done
for kind in born-a moved born-b; do
  n=$(wc -l <"/tmp/bench/create-$kind")
  [ "$n" -eq "$N" ] || fail "$n created lines for create-$kind-*, not $N"
done

# --- 3. API cycles

say "3. API cycles, $N of each kind, taking turns"
t3=$SECONDS
cycle wasm warm-cycle-wasm || { fail "warm-up cycle wasm"; cleanup_id warm-cycle-wasm; }
cycle runc warm-cycle-runc || { fail "warm-up cycle runc"; cleanup_id warm-cycle-runc; }
for i in $(seq "$N"); do
  timed cycle wasm "$i" cycle wasm "cycle-wasm-$i" || cleanup_id "cycle-wasm-$i"
  timed cycle runc "$i" cycle runc "cycle-runc-$i" || cleanup_id "cycle-runc-$i"
done
say "section 3 took $((SECONDS - t3)) s"
leftover=$(ctr container ls -q)
[ -z "$leftover" ] || fail "containers left: $leftover"

# --- report

cps() { awk '{s += $1} END { if (NR) printf "%.2f", NR * 1000 / s; else print "-" }' "$1"; }
{
  echo "## cgroup v2 + systemd node (QEMU TCG): $N runs per kind after one warm-up, $(nproc) vCPUs"
  echo
  echo "### 1. \`ctr run --rm\`, wall time (ms)"
  echo
  echo "| what | median | p90 | min | max | n |"
  echo "|---|---|---|---|---|---|"
  row "wasmtime shim, hello, cgroupfs (/default/<id>)" /tmp/bench/run-wasm-cgroupfs
  row "runc, busybox echo, cgroupfs (/default/<id>)" /tmp/bench/run-runc-cgroupfs
  row "wasmtime shim, hello, systemd (system.slice:bench:<id>)" /tmp/bench/run-wasm-systemd
  row "runc, busybox echo, systemd (--runc-systemd-cgroup)" /tmp/bench/run-runc-systemd
  echo
  for driver in cgroupfs systemd; do
    echo "**shim / runc, $driver (medians): $(ratio "$(median "/tmp/bench/run-wasm-$driver")" \
      "$(median "/tmp/bench/run-runc-$driver")")**"
    echo
  done
  echo "### 2. the shim's Create handler (took_us, shown in ms), hello, cgroupfs path"
  echo
  echo "| what | median | p90 | min | max | n |"
  echo "|---|---|---|---|---|---|"
  row "born in its cgroup (clone3 CLONE_INTO_CGROUP), before" /tmp/bench/create-born-a 1000
  row "moved in (WASMTIME_SHIM_CLONE_INTO_CGROUP=off)" /tmp/bench/create-moved 1000
  row "born in its cgroup, after" /tmp/bench/create-born-b 1000
  row "born in its cgroup, both phases" /tmp/bench/create-born 1000
  row "section 1's runs, cgroupfs (born in)" /tmp/bench/create-run-cgroupfs 1000
  row "section 1's runs, systemd (a transient scope)" /tmp/bench/create-run-systemd 1000
  echo
  echo "**born in / moved in (medians): $(ratio "$(median /tmp/bench/create-born)" \
    "$(median /tmp/bench/create-moved)")**"
  echo
  echo "### 3. API cycles: ctr run -d, task kill -s SIGKILL, task delete -f, container delete (ms per cycle)"
  echo
  echo "| what | median | p90 | min | max | n | cycles/s |"
  echo "|---|---|---|---|---|---|---|"
  echo "$(row "wasmtime shim, sleeper" /tmp/bench/cycle-wasm) $(cps /tmp/bench/cycle-wasm) |"
  echo "$(row "runc, busybox sleep 1000" /tmp/bench/cycle-runc) $(cps /tmp/bench/cycle-runc) |"
  echo
  echo "**cycles/s, shim / runc: $(ratio "$(cps /tmp/bench/cycle-wasm)" "$(cps /tmp/bench/cycle-runc)")**"
  echo
  echo "Payload time: $((SECONDS - start)) s (section 1: $((t2 - t1)) s, 2: $((t3 - t2)) s, 3: $((SECONDS - t3)) s)."
  if ((failed)); then echo; echo "Some runs FAILED: see payload.log."; fi
} >"$report"
cat "$report"
exit $failed
