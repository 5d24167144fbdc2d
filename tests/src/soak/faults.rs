//! Faults under running guests, through `ctr`: containerd killed with SIGKILL and started
//! again, and the shim killed with SIGKILL.

use super::events::{Events, exits};
use super::node::{self, Baseline};
use super::report::{Section, spread};
use crate::containerd::{Containerd, RUNTIME, Version, wait_for};
use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// Guests per round.
const GUESTS: usize = 10;
/// How long after containerd's restart every TaskExit of a round must have arrived.
const EVENT_WAIT: Duration = Duration::from_secs(20);

/// `(pid, status)` of task `id` from `ctr tasks ls`.
fn task(c: &Containerd, id: &str) -> Option<(i32, String)> {
    let out = c.ctr_ok(&["tasks", "ls"]).ok()?;
    out.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        (f.next() == Some(id)).then(|| {
            let pid = f.next().and_then(|p| p.parse().ok()).unwrap_or(0);
            (pid, f.next().unwrap_or("").to_string())
        })
    })
}

/// Starts `n` sleepers named `<prefix>-<k>`: the first half each with a shim of its own, the
/// rest sharing one (a pod's sandbox-id annotation). Returns the ids and the shared group.
fn start_sleepers(
    c: &Containerd,
    image: &str,
    prefix: &str,
    n: usize,
) -> Result<(Vec<String>, Vec<String>)> {
    let shared = format!("{prefix}-pod");
    let mut ids = Vec::new();
    let mut groups = vec![shared.clone()];
    for k in 0..n {
        let id = format!("{prefix}-{k}");
        let mut args = vec!["run", "-d", "--runtime", RUNTIME];
        let annotation = format!("io.kubernetes.cri.sandbox-id={shared}");
        if k >= n / 2 {
            args.extend(["--annotation", &annotation]);
        } else {
            groups.push(id.clone());
        }
        args.extend([image, &id]);
        c.ctr_ok(&args)?;
        ids.push(id);
    }
    Ok((ids, groups))
}

/// `ctr tasks delete id`: the exit status it reports (ctr only warns about non-zero ones).
fn delete_task(c: &Containerd, id: &str) -> Result<i32> {
    let out = c.ctr(&["tasks", "delete", id])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("ctr tasks delete {id}: {}", stderr.trim());
    }
    Ok(stderr
        .split("exit code ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}

/// Deletes task and container `id`: its status must be 143, and a second delete must find no
/// task. 1 if the status was reported right.
fn delete_once(c: &Containerd, id: &str, s: &mut Section, round: usize) -> Result<usize> {
    let mut right = 0;
    match delete_task(c, id) {
        Ok(143) => right = 1,
        Ok(other) => s.fail(format!(
            "round {round}: {id} exit status {other}, expected 143"
        )),
        Err(err) => s.fail(format!("round {round}: {err:#}")),
    }
    let again = c.ctr(&["tasks", "delete", id])?;
    if again.status.success() || !String::from_utf8_lossy(&again.stderr).contains("not found") {
        s.fail(format!(
            "round {round}: {id}: a second delete did not say not found: {}{}",
            String::from_utf8_lossy(&again.stdout),
            String::from_utf8_lossy(&again.stderr)
        ));
    }
    c.ctr_ok(&["containers", "delete", id])?;
    Ok(right)
}

/// Network namespaces of the guests of `ids`.
fn guest_netns(c: &Containerd, ids: &[String]) -> Vec<String> {
    ids.iter()
        .filter_map(|id| task(c, id))
        .filter_map(|(pid, _)| node::netns(pid))
        .collect()
}

/// Rounds of: 10 sleepers run; containerd is killed (SIGKILL); while it is down, half of them
/// end (SIGTERM to the guest: 143); containerd starts again; the rest are killed through it.
/// Every task must show its status (STOPPED or RUNNING), publish exactly one TaskExit (143)
/// within 20 s of the restart, and report 143 exactly once at delete. One guest is deleted as
/// soon as it stopped, the others after their TaskExit.
///
/// containerd 2.x, when it starts, removes a task whose shim lists no process (`Pids` empty) as
/// a leaked shim (containerd#6860): a task that ended while it was down is gone, exit status
/// and all, under runc as under this shim (checked by hand). There, those tasks must be gone
/// and leave nothing; they report no status.
pub fn containerd_kills(version: Version, rounds: usize, s: &mut Section) -> Result<()> {
    let mut c = Containerd::start(version)?;
    let image = c.import_example("sleeper")?;
    let baseline = Baseline::take(&c);
    let (mut restarts, mut round_times) = (Vec::new(), Vec::new());
    let (mut reported, mut events_outage) = (0, 0);
    let mut event_delays = Vec::new();
    let reaped = version == Version::V2_1;
    let (mut expected_reports, mut gone) = (0, 0);
    for round in 0..rounds {
        let t0 = Instant::now();
        let prefix = format!("ck{round}-{}", std::process::id());
        let (ids, groups) = start_sleepers(&c, &image, &prefix, GUESTS)?;
        let netns = guest_netns(&c, &ids);
        let pids: Vec<i32> = ids
            .iter()
            .map(|id| task(&c, id).map_or(0, |t| t.0))
            .collect();
        c.kill();
        let outage: Vec<usize> = (0..GUESTS).filter(|k| k % 2 == 0).collect();
        for k in &outage {
            // SAFETY: signalling a guest this run started.
            unsafe { libc::kill(pids[*k], libc::SIGTERM) };
        }
        let ended = wait_for(Duration::from_secs(5), || {
            outage.iter().all(|k| !node::alive(pids[*k])).then_some(())
        });
        if ended.is_none() {
            s.fail(format!(
                "round {round}: a guest did not end on SIGTERM while containerd was down"
            ));
        }
        let t1 = Instant::now();
        c.start_again()?;
        restarts.push(t1.elapsed());
        let events = Events::watch(&c, &image)?;
        // What must report an exit status (and one TaskExit).
        let reports: Vec<bool> = (0..GUESTS)
            .map(|k| !(reaped && outage.contains(&k)))
            .collect();
        expected_reports += reports.iter().filter(|r| **r).count();
        for (k, id) in ids.iter().enumerate() {
            let expected = match (outage.contains(&k), reports[k]) {
                (false, _) => "RUNNING",
                (true, true) => "STOPPED",
                (true, false) => "gone",
            };
            let status = wait_for(Duration::from_secs(5), || match task(&c, id) {
                None => (expected == "gone").then_some(()),
                Some(t) => (t.1 == expected).then_some(()),
            });
            gone += usize::from(expected == "gone" && status.is_some());
            if status.is_none() {
                s.fail(format!(
                    "round {round}: {id}: {:?} after the restart, expected {expected}",
                    task(&c, id)
                ));
            }
        }
        for (k, id) in ids.iter().enumerate() {
            if !outage.contains(&k) {
                c.ctr_ok(&["tasks", "kill", id])?;
            }
        }
        // Guest 1 (a shim of its own) is deleted as soon as it stopped, as a script does with
        // `ctr task kill; ctr task delete`; the others once their TaskExit arrived, as CRI does.
        wait_for(Duration::from_secs(5), || {
            task(&c, &ids[1]).filter(|t| t.1 == "STOPPED")
        });
        reported += delete_once(&c, &ids[1], s, round)?;
        // A shim retries an event containerd did not take (the crate's publisher: after 1, 2,
        // 3, 4, 5 s, then drops it), so an exit may arrive late.
        let (mut have, mut last) = (0, None);
        let arrived = wait_for(EVENT_WAIT, || {
            let seen = events.so_far();
            let n = (0..GUESTS)
                .filter(|k| reports[*k] && !exits(&seen, &ids[*k]).is_empty())
                .count();
            if n > have {
                (have, last) = (n, Some(t1.elapsed()));
            }
            (n == reports.iter().filter(|r| **r).count()).then_some(())
        });
        for (k, id) in ids.iter().enumerate() {
            if !reports[k] {
                c.ctr_ok(&["containers", "delete", id])?;
            } else if k != 1 {
                wait_for(Duration::from_secs(5), || {
                    task(&c, id).filter(|t| t.1 == "STOPPED")
                });
                reported += delete_once(&c, id, s, round)?;
            }
        }
        let seen = events.stop();
        event_delays.extend(last);
        // Defect 1: the TaskExit of guest 1, deleted as soon as it stopped, may be lost; that
        // loss alone is reported below as the known defect, not as a missing event here.
        let lost_only_guest_1 = exits(&seen, &ids[1]).is_empty()
            && ids
                .iter()
                .enumerate()
                .all(|(k, id)| k == 1 || !reports[k] || exits(&seen, id).len() == 1);
        if arrived.is_none() && !lost_only_guest_1 {
            s.fail(format!(
                "round {round}: {have} of the TaskExit events expected arrived within \
                 {EVENT_WAIT:?} of the restart"
            ));
        }
        for (k, id) in ids.iter().enumerate() {
            let exits = exits(&seen, id);
            let during = outage.contains(&k);
            if during {
                events_outage += exits.len();
            }
            let count_ok = exits.len() == 1 || (!reports[k] && exits.is_empty());
            if !count_ok || exits.iter().any(|l| !l.contains("\"exit_status\":143")) {
                let when = match k {
                    _ if during => "ended during the outage",
                    1 => "killed after the restart, deleted as soon as it stopped",
                    _ => "killed after the restart",
                };
                let what = format!(
                    "round {round}: {id} ({when}): {} TaskExit events: {exits:?}",
                    exits.len()
                );
                if k == 1 && !during && exits.is_empty() {
                    s.known(1, what);
                } else {
                    s.fail(what);
                }
            }
        }
        let left = wait_for(Duration::from_secs(10), || {
            let left = baseline.leftovers(&c, &ids, &groups, &netns);
            left.is_empty().then_some(())
        });
        if left.is_none() {
            s.leaks(
                &format!("round {round}"),
                baseline.leftovers(&c, &ids, &groups, &netns),
            );
        }
        round_times.push(t0.elapsed());
    }
    s.row(
        "rounds × guests",
        format!("{rounds} × {GUESTS} (5 with a shim each, 5 sharing one)"),
    );
    s.row(
        "exit status 143 reported by `ctr tasks delete`, once",
        format!("{reported} of {expected_reports}"),
    );
    if reaped {
        s.row(
            "tasks that ended during the outage, removed by containerd 2.x at its start",
            format!("{gone} of {}", rounds * GUESTS / 2),
        );
    }
    s.row(
        "TaskExit events for guests that ended during the outage",
        format!("{events_outage} of {}", rounds * GUESTS / 2),
    );
    s.row(
        "restart → the last TaskExit of the round received (median / p99 / max)",
        spread(&event_delays),
    );
    s.row(
        "containerd start after SIGKILL (median / p99 / max)",
        spread(&restarts),
    );
    s.row("round (median / p99 / max)", spread(&round_times));
    Ok(())
}

/// Rounds of: 10 sleepers run (5 with a shim each, 5 sharing one); every shim is killed with
/// SIGKILL. containerd must report each task stopped (one TaskExit each), and the shim's
/// `delete` action must leave no guest, zygote, mount, cgroup, socket or bundle.
pub fn shim_kills(version: Version, rounds: usize, s: &mut Section) -> Result<()> {
    let c = Containerd::start(version)?;
    let image = c.import_example("sleeper")?;
    let baseline = Baseline::take(&c);
    let (mut noticed, mut cleaned) = (Vec::new(), Vec::new());
    let mut statuses = std::collections::BTreeMap::<String, usize>::new();
    let mut exit_events = std::collections::BTreeMap::<String, usize>::new();
    for round in 0..rounds {
        let prefix = format!("sk{round}-{}", std::process::id());
        let (ids, groups) = start_sleepers(&c, &image, &prefix, GUESTS)?;
        let netns = guest_netns(&c, &ids);
        let shims = c.shim_pids();
        if shims.len() != GUESTS / 2 + 1 {
            s.fail(format!(
                "round {round}: {} shims for {GUESTS} guests, expected {}",
                shims.len(),
                GUESTS / 2 + 1
            ));
        }
        let events = Events::watch(&c, &image)?;
        let t0 = Instant::now();
        for shim in &shims {
            // SAFETY: killing shims of this run's containerd.
            unsafe { libc::kill(*shim, libc::SIGKILL) };
        }
        let stopped = wait_for(Duration::from_secs(20), || {
            ids.iter()
                .all(|id| task(&c, id).is_none_or(|t| t.1 == "STOPPED"))
                .then_some(())
        });
        noticed.push(t0.elapsed());
        if stopped.is_none() {
            let still: Vec<_> = ids
                .iter()
                .filter_map(|id| task(&c, id).map(|t| format!("{id} {t:?}")))
                .collect();
            s.fail(format!(
                "round {round}: tasks not reported stopped within 20 s: {still:?}"
            ));
        }
        for id in &ids {
            match delete_task(&c, id) {
                Ok(code) => *statuses.entry(code.to_string()).or_default() += 1,
                Err(err) if format!("{err:#}").contains("not found") => {
                    *statuses.entry("task already gone".into()).or_default() += 1
                }
                Err(err) => s.fail(format!("round {round}: {err:#}")),
            }
            if let Err(err) = c.ctr_ok(&["containers", "delete", id]) {
                s.fail(format!("round {round}: {err:#}"));
            }
        }
        let seen = events.stop();
        for id in &ids {
            let exits = exits(&seen, id);
            if exits.len() != 1 {
                s.fail(format!(
                    "round {round}: {id}: {} TaskExit events: {exits:?}",
                    exits.len()
                ));
            }
            for e in exits {
                let status = e
                    .split("\"exit_status\":")
                    .nth(1)
                    .and_then(|r| r.split([',', '}']).next());
                *exit_events
                    .entry(status.unwrap_or("none (0)").to_string())
                    .or_default() += 1;
            }
        }
        let left = wait_for(Duration::from_secs(10), || {
            baseline
                .leftovers(&c, &ids, &groups, &netns)
                .is_empty()
                .then_some(())
        });
        cleaned.push(t0.elapsed());
        if left.is_none() {
            s.leaks(
                &format!("round {round}"),
                baseline.leftovers(&c, &ids, &groups, &netns),
            );
        }
    }
    s.row(
        "rounds × guests",
        format!("{rounds} × {GUESTS} (6 shims killed per round)"),
    );
    s.row(
        "shims killed → every task reported stopped (median / p99 / max)",
        spread(&noticed),
    );
    s.row(
        "shims killed → deleted and nothing left (median / p99 / max)",
        spread(&cleaned),
    );
    let statuses: Vec<String> = statuses.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    s.row("`ctr tasks delete` afterwards", statuses.join(", "));
    let exit_events: Vec<String> = exit_events
        .iter()
        .map(|(k, n)| format!("status {k}: {n}"))
        .collect();
    s.row(
        "TaskExit events (one per task expected)",
        exit_events.join(", "),
    );
    Ok(())
}
