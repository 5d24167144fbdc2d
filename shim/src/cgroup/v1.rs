//! cgroup v1 specifics: the usage cgroups-rs reads, as containerd's v1 metrics message.

use cgroups_rs::stats::CgroupStats;
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat, Throttle,
};

/// `stats` (from cgroups-rs's v1 controllers) as containerd's metrics message.
pub fn metrics(stats: &CgroupStats) -> Metrics {
    let mut metrics = Metrics::new();

    let mut cpu = CPUStat::new();
    if let Some(acct) = &stats.cpu.cpu_acct {
        let mut usage = CPUUsage::new();
        usage.total = acct.total_usage;
        usage.user = acct.user_usage;
        usage.kernel = acct.system_usage;
        usage.per_cpu = acct.usage_percpu.clone();
        cpu.usage = Some(usage).into();
    }
    if let Some(t) = &stats.cpu.cpu_throttling {
        let mut throttle = Throttle::new();
        throttle.periods = t.periods;
        throttle.throttled_periods = t.throttled_periods;
        throttle.throttled_time = t.throttled_time;
        cpu.throttling = Some(throttle).into();
    }
    metrics.cpu = Some(cpu).into();

    let m = &stats.memory;
    let mut memory = MemoryStat::new();
    let entry = |s: &Option<cgroups_rs::stats::MemoryStats>| {
        let mut e = MemoryEntry::new();
        if let Some(s) = s {
            e.usage = s.usage;
            e.max = s.max_usage;
            e.limit = u64::try_from(s.limit).unwrap_or(u64::MAX);
            e.failcnt = s.fail_cnt;
        }
        e
    };
    memory.usage = Some(entry(&m.memory)).into();
    memory.swap = Some(entry(&m.memory_swap)).into();
    memory.kernel = Some(entry(&m.kernel_memory)).into();
    memory.cache = m.cache;
    memory.rss = m.rss;
    memory.rss_huge = m.rss_huge;
    memory.mapped_file = m.mapped_file;
    memory.dirty = m.dirty;
    memory.writeback = m.writeback;
    memory.pg_fault = m.pgfault;
    memory.pg_maj_fault = m.pgmajfault;
    memory.inactive_anon = m.inactive_anon;
    memory.active_anon = m.active_anon;
    memory.inactive_file = m.inactive_file;
    memory.active_file = m.active_file;
    memory.unevictable = m.unevictable;
    memory.total_cache = m.total_cache;
    memory.total_rss = m.total_rss;
    memory.total_inactive_file = m.total_inactive_file;
    memory.hierarchical_memory_limit = u64::try_from(m.hierarchical_memory_limit).unwrap_or(0);
    metrics.memory = Some(memory).into();

    let mut pids = PidsStat::new();
    pids.current = stats.pids.current;
    pids.limit = u64::try_from(stats.pids.limit).unwrap_or(0);
    metrics.pids = Some(pids).into();

    metrics
}
