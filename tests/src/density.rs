//! Density: how much memory idle containers cost. Starts `n` sleeping containers through
//! containerd (`ctr run -d`, one container per shim as without pods), then sums the PSS
//! (proportional set size: shared pages divided among their users) of every process that
//! exists for them, and the memory charged to their cgroups.

use crate::containerd::{Containerd, processes_with_arg, wait_for};
use anyhow::{Context, Result, bail};
use std::time::{Duration, Instant};

/// What `n` idle containers of one runtime cost.
#[derive(Debug, Clone)]
pub struct Density {
    pub containers: usize,
    /// Wall time of the `n` sequential `ctr run -d`.
    pub start_all: Duration,
    /// Sum of PSS over the shims, their helpers and the containers' processes (bytes).
    pub pss: u64,
    pub processes: usize,
    /// Sum of the containers' cgroup memory usage (bytes).
    pub cgroup_memory: u64,
}

impl Density {
    pub fn pss_per_container(&self) -> f64 {
        self.pss as f64 / self.containers as f64
    }

    pub fn cgroup_per_container(&self) -> f64 {
        self.cgroup_memory as f64 / self.containers as f64
    }
}

/// PSS of `pid` in bytes, from `/proc/<pid>/smaps_rollup`.
pub fn pss(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    text.lines().find_map(|l| {
        let kb: u64 = l
            .strip_prefix("Pss:")?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse()
            .ok()?;
        Some(kb * 1024)
    })
}

fn parent(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Memory charged to container `id`'s cgroup (`/<namespace>/<id>`, ctr's default), v1 or v2.
fn cgroup_memory(namespace: &str, id: &str) -> u64 {
    [
        format!("/sys/fs/cgroup/memory/{namespace}/{id}/memory.usage_in_bytes"),
        format!("/sys/fs/cgroup/{namespace}/{id}/memory.current"),
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok()?.trim().parse().ok())
    .unwrap_or(0)
}

/// Starts `n` containers of `image` (`runtime`: `None` for runc), each `args`, measures them,
/// then removes them. `shim_name` picks the runtime's shim processes out of the process
/// table; every live process whose parent is one of them (guests, zygotes, container
/// processes) is counted too.
pub fn measure(
    c: &Containerd,
    runtime: Option<&str>,
    shim_name: &str,
    image: &str,
    args: &[&str],
    prefix: &str,
    n: usize,
) -> Result<Density> {
    let ids: Vec<String> = (0..n).map(|i| format!("{prefix}-{i}")).collect();
    let started = Instant::now();
    for id in &ids {
        let mut argv = vec!["run", "-d"];
        if let Some(r) = runtime {
            argv.extend(["--runtime", r]);
        }
        argv.push(image);
        argv.push(id);
        argv.extend_from_slice(args);
        c.ctr_ok(&argv)?;
    }
    let start_all = started.elapsed();
    // Let lazy work (page faults of first use, deferred frees) settle.
    std::thread::sleep(Duration::from_secs(2));

    let socket = c.socket().to_string_lossy().into_owned();
    let shims: Vec<i32> = processes_with_arg(&socket)
        .into_iter()
        .filter(|(_, args)| args.first().is_some_and(|a| a.contains(shim_name)))
        .map(|(pid, _)| pid)
        .collect();
    if shims.is_empty() {
        bail!("no {shim_name} process found");
    }
    let mut counted = shims.clone();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if parent(pid).is_some_and(|p| shims.contains(&p)) && !counted.contains(&pid) {
            counted.push(pid);
        }
    }
    let mut pss_total = 0;
    let mut processes = 0;
    for pid in &counted {
        // Zombies and kernel threads have no smaps.
        if let Some(p) = pss(*pid) {
            pss_total += p;
            processes += 1;
        }
    }
    let cgroup_memory = ids.iter().map(|id| cgroup_memory("default", id)).sum();
    // For a closer look at the processes: DENSITY_HOLD=<seconds> keeps them that long.
    if let Some(secs) = std::env::var("DENSITY_HOLD")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        eprintln!("holding {n} containers for {secs}s");
        std::thread::sleep(Duration::from_secs(secs));
    }

    for id in &ids {
        c.ctr_ok(&["tasks", "kill", "--signal", "SIGKILL", id])?;
    }
    for id in &ids {
        wait_for(Duration::from_secs(10), || {
            let out = c.ctr_ok(&["tasks", "ls"]).ok()?;
            out.lines()
                .find(|l| l.split_whitespace().next() == Some(id))
                .is_some_and(|l| l.contains("STOPPED"))
                .then_some(())
        })
        .with_context(|| format!("{id} did not stop"))?;
        c.ctr_ok(&["tasks", "delete", id])?;
        c.ctr_ok(&["containers", "delete", id])?;
    }
    Ok(Density {
        containers: n,
        start_all,
        pss: pss_total,
        processes,
        cgroup_memory,
    })
}
