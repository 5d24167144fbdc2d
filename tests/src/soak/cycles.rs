//! Containers coming and going in one long-lived pod, through CRI as kubelet drives it:
//! sequential create/start/wait/remove cycles, then many containers started at once and all
//! stopped and removed.

use super::node;
use super::pod::PodNode;
use super::report::{Section, mib, spread};
use crate::containerd::Containerd;
use crate::cri::{Cri, Spec, log_lines};
use anyhow::{Context, Result, bail};
use k8s_cri::v1::ContainerState;
use std::sync::Barrier;
use std::time::{Duration, Instant};

/// Full checks of the pod (open files, processes, cgroups, state) every this many cycles.
const CHECK_EVERY: usize = 100;

/// `n` cycles of the `exit-code` example, cycle `i` exiting with `i % 7`: CreateContainer,
/// StartContainer, wait for Exited, check the exit code and the log, RemoveContainer, check
/// the guest and its cgroup are gone.
pub fn sequential(p: &PodNode, image: &str, n: usize, s: &mut Section) -> Result<()> {
    let mut phases: [Vec<Duration>; 5] = Default::default();
    let mut ok = 0;
    for i in 0..n {
        let code = (i % 7) as i32;
        let name = format!("c{i}");
        let spec = Spec::new(&name, image).args(&[&code.to_string()]);
        let t0 = Instant::now();
        let id = p.cri.create(&p.pod, &spec)?;
        let t1 = Instant::now();
        p.cri.start(&id)?;
        let t2 = Instant::now();
        let status =
            p.cri
                .wait_exited_polling(&id, Duration::from_secs(30), Duration::from_millis(2))?;
        let t3 = Instant::now();
        p.cri.remove(&id)?;
        let t4 = Instant::now();
        for (k, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0]
            .into_iter()
            .enumerate()
        {
            phases[k].push(d);
        }
        let mut good = true;
        if status.exit_code != code {
            s.fail(format!(
                "cycle {i}: exit code {} (expected {code}): {status:?}",
                status.exit_code
            ));
            good = false;
        }
        let log = p.pod.log_dir.join(format!("{name}.log"));
        let said = log_lines(&log).map(|l| l.into_iter().map(|(_, _, t)| t).collect::<Vec<_>>());
        let expected = format!("exiting with {code}");
        match said {
            Ok(lines) if lines == [expected.clone()] => {}
            other => {
                s.fail(format!("cycle {i}: log {other:?}, expected [{expected:?}]"));
                good = false;
            }
        }
        let left = p.container_left(&id);
        good &= left.is_empty();
        s.leaks(&format!("cycle {i}"), left);
        if (i + 1) % CHECK_EVERY == 0 || i + 1 == n {
            let left = p.pod_left();
            good &= left.is_empty();
            s.leaks(&format!("after cycle {i}"), left);
        }
        ok += usize::from(good);
        if (i + 1) % 100 == 0 {
            eprintln!("soak: {} cycles", i + 1);
        }
    }
    s.row(
        "cycles (exit code and log checked, nothing left)",
        format!("{ok} of {n}"),
    );
    s.row(
        "cycle, CreateContainer → removed (median / p99 / max)",
        spread(&phases[4]),
    );
    for (k, what) in [
        "CreateContainer",
        "StartContainer",
        "start → Exited seen (2 ms polls)",
        "RemoveContainer",
    ]
    .iter()
    .enumerate()
    {
        s.row(format!("  {what}"), spread(&phases[k]));
    }
    s.row(
        "cycles per second",
        format!(
            "{:.1}",
            n as f64 / phases[4].iter().sum::<Duration>().as_secs_f64()
        ),
    );
    s.row(
        "shim open files (checked every 100 cycles)",
        format!(
            "{} at start, unchanged unless a failure says so",
            p.watch.fds.len()
        ),
    );
    Ok(())
}

/// Runs `f(i)` on `n` threads, each with its own CRI connection, released together.
fn together<T: Send>(
    c: &Containerd,
    n: usize,
    f: impl Fn(&Cri, usize) -> Result<T> + Sync,
) -> Vec<Result<T>> {
    let barrier = Barrier::new(n);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                scope.spawn(move || {
                    let cri = Cri::connect(c);
                    barrier.wait();
                    f(&cri?, i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("thread panicked")))
            })
            .collect()
    })
}

/// `n` sleepers created and started at once, then all stopped at once (even ones with no
/// grace period: SIGKILL, 137; odd ones SIGTERM, 143), then all removed at once.
pub fn parallel(p: &PodNode, image: &str, n: usize, s: &mut Section) -> Result<()> {
    let pod = &p.pod;
    let t0 = Instant::now();
    let started = together(&p.c, n, |cri, i| {
        let t = Instant::now();
        let id = cri.run(pod, &Spec::new(&format!("p{i}"), image))?;
        Ok((id, t.elapsed()))
    });
    let mut ids = Vec::new();
    let mut starts = Vec::new();
    for (i, r) in started.into_iter().enumerate() {
        match r {
            Ok((id, took)) => {
                ids.push((i, id));
                starts.push(took);
            }
            Err(err) => s.fail(format!("container p{i}: {err:#}")),
        }
    }
    let running = crate::containerd::wait_for(Duration::from_secs(60), || {
        ids.iter()
            .all(|(_, id)| {
                p.cri
                    .status(id)
                    .is_ok_and(|st| st.state == ContainerState::ContainerRunning as i32)
            })
            .then_some(())
    });
    let all_running = t0.elapsed();
    if running.is_none() {
        s.fail("not every container reached Running within 60 s");
    }
    let guests = node::descendants(&[p.watch.shim]).len() - p.watch.children.len();
    let shims = p.c.shim_pids().len();
    let rss = node::rss_kib(p.watch.shim).unwrap_or(0) * 1024;
    let fds_running = node::fds(p.watch.shim).len();
    if guests != ids.len() || shims != 1 {
        s.fail(format!(
            "{} containers running: {guests} guest processes, {shims} shims",
            ids.len()
        ));
    }

    let t1 = Instant::now();
    let stopped = together(&p.c, ids.len(), |cri, k| {
        let (i, id) = &ids[k];
        let (grace, expected) = if i % 2 == 0 { (0, 137) } else { (10, 143) };
        cri.stop(id, grace)?;
        let status = cri.status(id)?;
        if status.state != ContainerState::ContainerExited as i32 || status.exit_code != expected {
            bail!(
                "p{i}: after StopContainer (grace {grace}s): state {} exit {} (expected {expected})",
                status.state,
                status.exit_code
            );
        }
        Ok(())
    });
    let all_stopped = t1.elapsed();
    for r in stopped {
        if let Err(err) = r {
            s.fail(format!("{err:#}"));
        }
    }
    let t2 = Instant::now();
    let removed = together(&p.c, ids.len(), |cri, k| {
        cri.remove(&ids[k].1)
            .with_context(|| format!("remove p{}", ids[k].0))
    });
    let all_removed = t2.elapsed();
    for r in removed {
        if let Err(err) = r {
            s.fail(format!("{err:#}"));
        }
    }
    for (i, id) in &ids {
        s.leaks(&format!("p{i}"), p.container_left(id));
    }
    s.leaks("after all removed", p.pod_left());

    s.row(
        "containers started at once",
        format!("{} of {n}", ids.len()),
    );
    s.row(
        "CreateContainer + StartContainer, each (median / p99 / max)",
        spread(&starts),
    );
    s.row(
        "all Running after",
        format!("{:.2} s", all_running.as_secs_f64()),
    );
    s.row(
        "guest processes while running / shims",
        format!("{guests} / {shims}"),
    );
    s.row(
        "pod shim RSS / open files with all running",
        format!("{} / {fds_running} (idle: {})", mib(rss), p.watch.fds.len()),
    );
    s.row(
        "StopContainer of all, at once",
        format!(
            "{:.2} s (even: grace 0 → 137, odd: SIGTERM → 143)",
            all_stopped.as_secs_f64()
        ),
    );
    s.row(
        "RemoveContainer of all, at once",
        format!("{:.2} s", all_removed.as_secs_f64()),
    );
    Ok(())
}
