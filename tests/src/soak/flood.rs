//! A guest writing to stdout as fast as it can, in a long-lived pod: the shim's memory must
//! stay bounded, and the CRI log must keep up (grow in every second of the flood).

use super::guests;
use super::node;
use super::pod::PodNode;
use super::report::{Section, mib};
use crate::cri::Spec;
use anyhow::{Context, Result};
use std::io::{Read, Seek, SeekFrom};
use std::time::{Duration, Instant};

/// How much the pod shim's RSS may grow during the flood.
const SHIM_GROWTH_BOUND: u64 = 32 << 20;
const SAMPLE: Duration = Duration::from_millis(250);

fn size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Lines of the last MiB of the log that are not `<time> stdout F xxx…x` (63 `x`).
fn bad_tail_lines(path: &std::path::Path) -> Result<(usize, usize)> {
    let mut f = std::fs::File::open(path)?;
    let len = f.metadata()?.len();
    f.seek(SeekFrom::Start(len.saturating_sub(1 << 20)))?;
    let mut tail = String::new();
    f.read_to_string(&mut tail)?;
    let lines: Vec<&str> = tail.lines().skip(1).collect();
    let expected = "x".repeat(63);
    let bad = lines
        .iter()
        .filter(|l| {
            let mut parts = l.splitn(4, ' ');
            let (time, stream, tag, text) =
                (parts.next(), parts.next(), parts.next(), parts.next());
            !(time.is_some_and(|t| t.contains('T'))
                && stream == Some("stdout")
                && tag == Some("F")
                && text == Some(expected.as_str()))
        })
        .count();
    Ok((lines.len(), bad))
}

pub fn flood(p: &PodNode, secs: u64, s: &mut Section) -> Result<()> {
    let image = p.import(&guests::flood()?)?;
    let containerd = p.c.containerd_pid().context("containerd is not running")? as i32;
    let shim_before = node::rss_kib(p.watch.shim).unwrap_or(0) * 1024;
    let log = p.pod.log_dir.join("flood.log");
    let id = p.cri.run(&p.pod, &Spec::new("flood", &image))?;
    let t0 = Instant::now();
    let (mut shim_peak, mut containerd_peak, mut guest_peak) = (0, 0, 0);
    let mut sizes = vec![(Duration::ZERO, size(&log))];
    while t0.elapsed() < Duration::from_secs(secs) {
        std::thread::sleep(SAMPLE);
        shim_peak = shim_peak.max(node::rss_kib(p.watch.shim).unwrap_or(0) * 1024);
        containerd_peak = containerd_peak.max(node::rss_kib(containerd).unwrap_or(0) * 1024);
        for pid in node::descendants(&[p.watch.shim]).difference(&p.watch.children) {
            guest_peak = guest_peak.max(node::rss_kib(*pid).unwrap_or(0) * 1024);
        }
        sizes.push((t0.elapsed(), size(&log)));
    }
    p.cri.stop(&id, 2)?;
    let status = p.cri.status(&id)?;
    let stopped = t0.elapsed();
    // Every full second of the flood: the log grew.
    let mut stalls = Vec::new();
    let mut mark = 0;
    for (k, (at, bytes)) in sizes.iter().enumerate() {
        if at.as_secs_f64() - sizes[mark].0.as_secs_f64() >= 1.0 {
            if *bytes <= sizes[mark].1 {
                stalls.push(format!(
                    "{:.1}–{:.1} s",
                    sizes[mark].0.as_secs_f64(),
                    at.as_secs_f64()
                ));
            }
            mark = k;
        }
    }
    let written = sizes.last().map_or(0, |s| s.1);
    let (checked, bad) = bad_tail_lines(&log)?;
    if status.exit_code != 143 {
        s.fail(format!(
            "after StopContainer: exit {} {} (expected 143)",
            status.exit_code, status.reason
        ));
    }
    if !stalls.is_empty() {
        s.fail(format!("the log did not grow in: {}", stalls.join(", ")));
    }
    if bad > 0 {
        s.fail(format!(
            "{bad} of the last {checked} log lines are not the guest's lines in CRI format"
        ));
    }
    if shim_peak > shim_before + SHIM_GROWTH_BOUND {
        s.fail(format!(
            "shim RSS grew from {} to {} (bound: +{})",
            mib(shim_before),
            mib(shim_peak),
            mib(SHIM_GROWTH_BOUND)
        ));
    }
    p.cri.remove(&id)?;
    let _ = std::fs::remove_file(&log);
    s.row(
        "flood",
        format!(
            "{secs} s, then StopContainer (SIGTERM): exit {}",
            status.exit_code
        ),
    );
    s.row(
        "CRI log written",
        format!(
            "{} ({:.0} MiB/s)",
            mib(written),
            written as f64 / (1 << 20) as f64 / stopped.as_secs_f64()
        ),
    );
    s.row("seconds in which the log did not grow", stalls.len());
    s.row(
        "log lines checked (last MiB): malformed",
        format!("{checked}: {bad}"),
    );
    s.row(
        "pod shim RSS before / peak during",
        format!("{} / {}", mib(shim_before), mib(shim_peak)),
    );
    s.row(
        "guest peak RSS / containerd peak RSS",
        format!("{} / {}", mib(guest_peak), mib(containerd_peak)),
    );
    s.leaks("after the flood", p.pod_left());
    Ok(())
}
