//! Task metrics in containerd's cgroup v1 metrics format.
//!
//! A guest with a cgroup is measured there ([`crate::cgroup`]); one without (a spec with no
//! `linux.cgroupsPath`) from `/proc/<pid>`: CPU time (user, kernel, total) and resident memory.

use crate::error::{Error, Result};
use containerd_shim::protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim::protos::protobuf::Message;
use containerd_shim::protos::protobuf::well_known_types::any::Any;

/// The type URL `ctr task metrics` and CRI decode.
const METRICS_V1: &str = "io.containerd.cgroups.v1.Metrics";

#[derive(Debug, PartialEq, Eq)]
pub struct ProcessUsage {
    pub user_ns: u64,
    pub kernel_ns: u64,
    pub rss_bytes: u64,
    pub threads: u64,
}

pub fn collect(pid: i32) -> Result<Any> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(Error::io(format!("read /proc/{pid}/stat")))?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .map_err(Error::io(format!("read /proc/{pid}/statm")))?;
    let ticks = rustix::param::clock_ticks_per_second();
    let usage = parse(&stat, &statm, ticks, rustix::param::page_size() as u64)
        .ok_or_else(|| Error::Internal(format!("unreadable /proc/{pid}/stat")))?;
    let mut metrics = Metrics::new();
    let mut cpu = CPUStat::new();
    let mut cpu_usage = CPUUsage::new();
    cpu_usage.user = usage.user_ns;
    cpu_usage.kernel = usage.kernel_ns;
    cpu_usage.total = usage.user_ns + usage.kernel_ns;
    cpu.usage = Some(cpu_usage).into();
    metrics.cpu = Some(cpu).into();
    let mut memory = MemoryStat::new();
    memory.rss = usage.rss_bytes;
    let mut entry = MemoryEntry::new();
    entry.usage = usage.rss_bytes;
    memory.usage = Some(entry).into();
    metrics.memory = Some(memory).into();
    let mut pids = PidsStat::new();
    pids.current = usage.threads;
    metrics.pids = Some(pids).into();
    encode(&metrics)
}

/// `metrics` as the `Any` that `ctr task metrics` and CRI decode.
pub fn encode(metrics: &Metrics) -> Result<Any> {
    let mut any = Any::new();
    any.type_url = METRICS_V1.to_string();
    any.value = metrics
        .write_to_bytes()
        .map_err(|e| Error::Internal(format!("encode metrics: {e}")))?;
    Ok(any)
}

fn parse(stat: &str, statm: &str, ticks_per_second: u64, page_size: u64) -> Option<ProcessUsage> {
    // Fields after the parenthesised command name, starting with field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks_to_ns = |t: &str| -> Option<u64> {
        Some(t.parse::<u64>().ok()? * (1_000_000_000 / ticks_per_second.max(1)))
    };
    let user_ns = ticks_to_ns(fields.get(11)?)?;
    let kernel_ns = ticks_to_ns(fields.get(12)?)?;
    let threads = fields.get(17)?.parse().ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(ProcessUsage {
        user_ns,
        kernel_ns,
        rss_bytes: resident * page_size,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc() {
        let stat = "42 (a (b) c) R 1 42 42 0 -1 4194560 100 0 0 0 250 30 0 0 20 0 3 0 1 1 1";
        let usage = parse(stat, "1000 256 10 1 0 50 0", 100, 4096).unwrap();
        assert_eq!(
            usage,
            ProcessUsage {
                user_ns: 2_500_000_000,
                kernel_ns: 300_000_000,
                rss_bytes: 256 * 4096,
                threads: 3
            }
        );
        assert!(parse("garbage", "", 100, 4096).is_none());
    }

    #[test]
    fn collects_for_this_process() {
        let any = collect(std::process::id() as i32).unwrap();
        assert_eq!(any.type_url, METRICS_V1);
        let metrics = Metrics::parse_from_bytes(&any.value).unwrap();
        assert!(metrics.memory.usage.usage > 0);
    }
}
