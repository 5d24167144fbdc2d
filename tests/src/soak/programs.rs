//! Hostile programs in a long-lived pod, through CRI: modules that cannot run (each must fail
//! StartContainer with an error that names the problem) and a 1 GiB `memory.grow` bomb.

use super::guests;
use super::node;
use super::pod::PodNode;
use super::report::{Section, mib};
use crate::cri::{Spec, log_lines};
use anyhow::Result;
use k8s_cri::v1::ContainerState;
use std::time::{Duration, Instant};

/// The first line of `text`, cut to `n` characters.
pub fn excerpt(text: &str, n: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let cut: String = line.chars().take(n).collect();
    if cut.len() < line.len() {
        format!("{cut}…")
    } else {
        cut
    }
}

/// Each bad program must fail StartContainer with a message naming the problem, and leave
/// the pod as it was (shim open files, processes, cgroups, state).
pub fn bad_programs(p: &PodNode, s: &mut Section) -> Result<()> {
    for (k, (image, message)) in guests::bad_programs()?.into_iter().enumerate() {
        let short = image.name.trim_start_matches("localhost/soak/").to_string();
        let name = p.import(&image)?;
        let t0 = Instant::now();
        // CRI creates containerd's container at CreateContainer and its task (where the shim
        // loads the program) at StartContainer.
        let id = p
            .cri
            .create(&p.pod, &Spec::new(&format!("bad{k}"), &name))?;
        let started = p.cri.start(&id);
        p.cri.remove(&id)?;
        match started {
            Ok(()) => {
                s.fail(format!(
                    "{short}: StartContainer succeeded (expected: {message})"
                ));
            }
            Err(err) => {
                let text = format!("{err:#}");
                if !text.contains(message) {
                    s.fail(format!("{short}: error does not say {message:?}: {text}"));
                }
                let shown = text
                    .find("entrypoint")
                    .map_or(text.as_str(), |at| &text[at..]);
                s.row(
                    format!("{short} ({} ms)", t0.elapsed().as_millis()),
                    format!("`{}`", excerpt(shown, 200).replace('|', "\\|")),
                );
            }
        }
        s.leaks(&short, p.pod_left());
    }
    Ok(())
}

/// Runs `spec` to its exit, sampling the peak RSS of its guest; returns (exit code, reason,
/// log text, peak RSS in bytes).
fn run_sampled(p: &PodNode, spec: &Spec) -> Result<(i32, String, String, u64)> {
    let id = p.cri.run(&p.pod, spec)?;
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        for pid in node::descendants(&[p.watch.shim]).difference(&p.watch.children) {
            peak = peak.max(node::rss_kib(*pid).unwrap_or(0) * 1024);
        }
        let status = p.cri.status(&id)?;
        if status.state == ContainerState::ContainerExited as i32 {
            break status;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} did not exit in 120 s",
            spec.name
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let log = log_lines(&p.pod.log_dir.join(format!("{}.log", spec.name)))?
        .into_iter()
        .map(|(_, _, t)| t)
        .collect::<Vec<_>>()
        .join("\n");
    p.cri.remove(&id)?;
    Ok((status.exit_code, status.reason, log, peak))
}

/// A guest that grows its memory by 1 GiB at once: under a 256 MiB limit the growth is refused
/// (134, OOMKilled, the log says why); without a limit it gets the memory and exits 0.
pub fn memory_bomb(p: &PodNode, s: &mut Section) -> Result<()> {
    let image = p.import(&guests::bomb()?)?;
    let limited = Spec::new("bomb-limited", &image).memory_limit(256 << 20);
    let (code, reason, log, peak) = run_sampled(p, &limited)?;
    if code != 134 || reason != "OOMKilled" || !log.contains("ran out of memory") {
        s.fail(format!("under 256 MiB: exit {code} {reason}, log: {log}"));
    }
    let peak = if peak == 0 {
        "ended before a sample".to_string()
    } else {
        mib(peak)
    };
    s.row(
        "under a 256 MiB limit: exit, reason, guest peak RSS",
        format!("{code}, {reason}, {peak}"),
    );
    s.row(
        "  its log",
        format!("`{}`", excerpt(&log.replace('\n', " "), 240)),
    );
    s.leaks("bomb under a limit", p.pod_left());

    let unlimited = Spec::new("bomb-unlimited", &image);
    let (code, reason, log, peak) = run_sampled(p, &unlimited)?;
    if code != 0 || log != "grew 1 GiB and touched every page" {
        s.fail(format!("without a limit: exit {code} {reason}, log: {log}"));
    }
    s.row(
        "without a limit: exit, reason, guest peak RSS",
        format!("{code}, {reason}, {}", mib(peak)),
    );
    s.leaks("bomb without a limit", p.pod_left());
    Ok(())
}
