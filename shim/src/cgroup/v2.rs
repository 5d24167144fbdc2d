//! cgroup v2 specifics: which of `linux.resources` the cgroupfs manager can apply on the unified
//! hierarchy, and the guest's usage read from the unified directory (`cpu.stat`,
//! `memory.current`, `memory.max`, `memory.stat`, `memory.events`, `pids.current`, `pids.max`)
//! into containerd's v1 metrics message, which `ctr` and CRI decode on v2 nodes too.

use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};
use oci_spec::runtime::LinuxResources;
use std::collections::HashMap;
use std::path::Path;

/// The part of `resources` the cgroupfs manager applies on v2, or why some of it cannot be.
///
/// Device rules are left out: v2 has no devices controller (runc enforces them with an eBPF
/// program attached to the cgroup; this shim attaches none). What a guest can open is what
/// WASI preopens: its root filesystem and volumes. The shim mounts nothing under `/dev` (mounts
/// there are skipped), so the guest has no `/dev` of its own, but a device node shipped inside
/// the image is not blocked by a cgroup program on v2.
///
/// Groups that ask for nothing are dropped (cgroups-rs looks their controller up even then);
/// a group that asks for something needs its controller in `controllers` (the cgroup's
/// `cgroup.controllers`), else the error names the resource and the missing controller.
pub fn applicable(
    resources: &LinuxResources,
    controllers: &str,
) -> std::result::Result<LinuxResources, String> {
    let have = |c: &str| controllers.split_whitespace().any(|x| x == c);
    let need = |what: &str, controller: &str| {
        if have(controller) {
            Ok(())
        } else {
            Err(format!(
                "linux.resources.{what} needs the cgroup v2 {controller} controller, which is \
                 not enabled for this cgroup (cgroup.controllers: {:?})",
                controllers.trim()
            ))
        }
    };
    let mut out = resources.clone();
    out.set_devices(None);
    if let Some(network) = resources.network()
        && (network.class_id().is_some()
            || network.priorities().as_ref().is_some_and(|p| !p.is_empty()))
    {
        return Err(
            "linux.resources.network (net_cls class id, net_prio priorities) cannot be \
                    applied on cgroup v2: it has no net_cls or net_prio controller"
                .to_string(),
        );
    }
    out.set_network(None);
    if let Some(cpu) = resources.cpu() {
        if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
            return Err(
                "linux.resources.cpu.realtimeRuntime/realtimePeriod cannot be applied \
                        on cgroup v2: it has no real-time CPU controls"
                    .to_string(),
            );
        }
        let cfs =
            cpu.shares().is_some_and(|s| s != 0) || cpu.quota().is_some() || cpu.period().is_some();
        let set = cpu.cpus().as_ref().is_some_and(|s| !s.is_empty())
            || cpu.mems().as_ref().is_some_and(|s| !s.is_empty());
        if cfs {
            need("cpu (shares, quota, period)", "cpu")?;
        }
        if set {
            need("cpu (cpus, mems)", "cpuset")?;
        }
        if !cfs && !set {
            out.set_cpu(None);
        }
    }
    if let Some(memory) = resources.memory() {
        if memory.limit().is_some() || memory.reservation().is_some() || memory.swap().is_some() {
            need("memory", "memory")?;
        } else {
            out.set_memory(None);
        }
    }
    if resources.pids().is_some() {
        need("pids", "pids")?;
    }
    if let Some(io) = resources.block_io() {
        if io != &Default::default() {
            need("blockIO", "io")?;
        } else {
            out.set_block_io(None);
        }
    }
    if let Some(limits) = resources.hugepage_limits() {
        if !limits.is_empty() {
            need("hugepageLimits", "hugetlb")?;
        } else {
            out.set_hugepage_limits(None);
        }
    }
    if resources.rdma().as_ref().is_some_and(|r| !r.is_empty()) {
        return Err("linux.resources.rdma is not supported by this shim".to_string());
    }
    if resources.unified().as_ref().is_some_and(|u| !u.is_empty()) {
        return Err("linux.resources.unified is not supported by this shim".to_string());
    }
    Ok(out)
}

/// The usage of the cgroup at `dir` (a unified-hierarchy directory), as the v1 metrics
/// message: times in nanoseconds, a missing file reads as zero.
pub fn metrics(dir: &Path) -> Metrics {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap_or_default();
    let cpu_stat = keyed(&read("cpu.stat"));
    let memory_stat = keyed(&read("memory.stat"));
    let events = keyed(&read("memory.events"));
    let get = |map: &HashMap<String, u64>, key: &str| map.get(key).copied().unwrap_or(0);

    let mut metrics = Metrics::new();
    let mut cpu = CPUStat::new();
    let mut usage = CPUUsage::new();
    usage.total = get(&cpu_stat, "usage_usec").saturating_mul(1000);
    usage.user = get(&cpu_stat, "user_usec").saturating_mul(1000);
    usage.kernel = get(&cpu_stat, "system_usec").saturating_mul(1000);
    cpu.usage = Some(usage).into();
    let mut throttle = Throttle::new();
    throttle.periods = get(&cpu_stat, "nr_periods");
    throttle.throttled_periods = get(&cpu_stat, "nr_throttled");
    throttle.throttled_time = get(&cpu_stat, "throttled_usec").saturating_mul(1000);
    cpu.throttling = Some(throttle).into();
    metrics.cpu = Some(cpu).into();

    let limit = max_value(&read("memory.max")).unwrap_or(u64::MAX);
    let swap_limit = max_value(&read("memory.swap.max")).unwrap_or(u64::MAX);
    let current = max_value(&read("memory.current")).unwrap_or(0);
    let swap_current = max_value(&read("memory.swap.current")).unwrap_or(0);
    let mut memory = MemoryStat::new();
    let mut usage = MemoryEntry::new();
    usage.usage = current;
    usage.limit = limit;
    usage.failcnt = get(&events, "max");
    memory.usage = Some(usage).into();
    // v1's swap entry counts memory and swap together.
    let mut swap = MemoryEntry::new();
    swap.usage = current.saturating_add(swap_current);
    swap.limit = limit.saturating_add(swap_limit);
    memory.swap = Some(swap).into();
    memory.kernel = Some(MemoryEntry::new()).into();
    let s = |key: &str| get(&memory_stat, key);
    // v2's memory.stat is hierarchical already: the total_* fields repeat it (CRI computes
    // the working set as usage less total_inactive_file).
    memory.rss = s("anon");
    memory.total_rss = s("anon");
    memory.cache = s("file");
    memory.total_cache = s("file");
    memory.rss_huge = s("anon_thp");
    memory.mapped_file = s("file_mapped");
    memory.dirty = s("file_dirty");
    memory.writeback = s("file_writeback");
    memory.pg_fault = s("pgfault");
    memory.pg_maj_fault = s("pgmajfault");
    memory.inactive_anon = s("inactive_anon");
    memory.active_anon = s("active_anon");
    memory.inactive_file = s("inactive_file");
    memory.total_inactive_file = s("inactive_file");
    memory.active_file = s("active_file");
    memory.unevictable = s("unevictable");
    memory.hierarchical_memory_limit = limit;
    metrics.memory = Some(memory).into();

    let mut pids = PidsStat::new();
    pids.current = max_value(&read("pids.current")).unwrap_or(0);
    pids.limit = max_value(&read("pids.max")).unwrap_or(0);
    metrics.pids = Some(pids).into();
    metrics
}

/// A flat-keyed file (`cpu.stat`, `memory.stat`, `memory.events`): `key value` lines.
fn keyed(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let (key, value) = line.split_once(' ')?;
            Some((key.to_string(), value.trim().parse().ok()?))
        })
        .collect()
}

/// A single-value file (`memory.max`, `pids.current`): a number, or `max` (None).
fn max_value(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

#[cfg(test)]
mod tests;
