//! The pods of the v2 node's CRI checks. Outcomes only: every wait is a generous timeout
//! (guest code runs 10–50× slower under the VM's emulation), never a time asserted.

use super::{Checks, image};
use crate::cri::{Pod, Spec, log_lines};
use anyhow::{Context, Result, bail, ensure};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub(super) const EXIT: Duration = Duration::from_secs(600);
pub(super) const POLL: Duration = Duration::from_millis(250);
/// Grace period of StopContainer (kubelet's default is 30 s).
pub(super) const GRACE: i64 = 30;

/// `/sys/fs/cgroup/<path>/<file>`, trimmed.
fn cgroup_file(path: &str, file: &str) -> Result<String> {
    let p = Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join(file);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("read {}", p.display()))?
        .trim()
        .to_string())
}

fn cgroup_dir(path: &str) -> PathBuf {
    Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))
}

/// The cgroup of `pid` on the unified hierarchy (`0::<path>`).
pub(super) fn cgroup_of(pid: i32) -> Result<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
        .with_context(|| format!("no unified cgroup for {pid}: {text}"))
}

/// Polls `f` until it is true or `timeout` passes.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// A pod through its whole life as kubelet runs a Job's pod: RunPodSandbox, CreateContainer,
/// StartContainer, ContainerStatus until it exited, its log, StopContainer, RemoveContainer;
/// then a long-running container in the cgroup kubelet's driver names; StopPodSandbox,
/// RemovePodSandbox and the pod cgroup's removal.
pub fn lifecycle(c: &Checks, ids: &mut Vec<String>) -> Result<()> {
    let pod = c.cri.run_pod("life", &c.logs)?;
    ids.push(pod.id.clone());
    let pod_dir = c.driver.dir(&pod.cgroup_parent);
    eprintln!("pod {} in {}", pod.id, pod_dir.display());
    ensure!(pod_dir.is_dir(), "no pod cgroup {}", pod_dir.display());

    let hello = c.cri.create(&pod, &Spec::new("hello", &image("hello")))?;
    ids.push(hello.clone());
    c.cri.start(&hello)?;
    let status = c.cri.wait_exited_polling(&hello, EXIT, POLL)?;
    ensure!(
        (status.exit_code, status.reason.as_str()) == (0, "Completed"),
        "hello ended with {} {:?}: {}",
        status.exit_code,
        status.reason,
        status.message
    );
    let log = pod.log_dir.join("hello.log");
    let lines = log_lines(&log)?;
    ensure!(
        lines
            .iter()
            .any(|(s, _, t)| s == "stdout" && t == "Hello from WebAssembly!"),
        "{} has {lines:?}",
        log.display()
    );
    c.cri.stop(&hello, GRACE)?;
    c.cri.remove(&hello)?;
    ensure!(
        c.cri.status(&hello).is_err(),
        "{hello} still has a status after RemoveContainer"
    );

    let sleeper = c.cri.run(&pod, &Spec::new("sleeper", &image("sleeper")))?;
    ids.push(sleeper.clone());
    let pid = c.cri.pid(&sleeper)?;
    let want = c.driver.container_path(&pod.cgroup_parent, &sleeper);
    let got = cgroup_of(pid)?;
    eprintln!("sleeper {sleeper}: pid {pid} in {got}");
    ensure!(got == want, "the guest is in {got}, not {want}");
    c.cri.stop(&sleeper, GRACE)?;
    let status = c.cri.status(&sleeper)?;
    ensure!(
        status.finished_at > 0,
        "sleeper not exited after StopContainer: {status:?}"
    );
    c.cri.remove(&sleeper)?;
    ensure!(
        eventually(Duration::from_secs(60), || !cgroup_dir(&want).exists()),
        "{want} is left after RemoveContainer"
    );
    c.cri.remove_pod(&pod)?;
    ensure!(
        !pod_dir.exists(),
        "{} is left after the pod",
        pod_dir.display()
    );
    Ok(())
}

/// A pod of limited containers: `busy` spins under a CPU quota, `sleeper` sleeps with 64 MiB.
pub struct Limits {
    pod: Pod,
    busy: String,
    sleeper: String,
}

impl Limits {
    pub fn start(c: &Checks, ids: &mut Vec<String>) -> Result<Limits> {
        let pod = c.cri.run_pod("limits", &c.logs)?;
        ids.push(pod.id.clone());
        let busy = c.cri.run(
            &pod,
            &Spec::new("busy", &image("busy-loop")).cpu_quota(20_000, 100_000),
        )?;
        ids.push(busy.clone());
        let sleeper = c.cri.run(
            &pod,
            &Spec::new("sleeper", &image("sleeper")).memory_limit(64 << 20),
        )?;
        ids.push(sleeper.clone());
        Ok(Limits { pod, busy, sleeper })
    }

    fn path(&self, c: &Checks, id: &str) -> String {
        c.driver.container_path(&self.pod.cgroup_parent, id)
    }

    /// What kubelet's summary API reads: the spinning container's and the pod's CPU usage and
    /// memory working set are non-zero. containerd 2.1's PodSandboxStats loads the pod's
    /// `cgroup_parent` as a path, which a systemd slice name is not ("invalid group path", for
    /// runc pods as well); there the pod slice's own files, which cAdvisor reads for kubelet,
    /// stand in for it.
    pub fn stats(&self, c: &Checks) -> Result<()> {
        let mut last = String::new();
        let ok = eventually(Duration::from_secs(300), || {
            let container = c.cri.stats(&self.busy);
            let (cpu, memory) = match &container {
                Ok(s) => (
                    s.cpu
                        .as_ref()
                        .and_then(|c| c.usage_core_nano_seconds.as_ref())
                        .map(|v| v.value),
                    s.memory
                        .as_ref()
                        .and_then(|m| m.working_set_bytes.as_ref())
                        .map(|v| v.value),
                ),
                Err(_) => (None, None),
            };
            let (pod_cpu, pod_memory, pod_note) = match c.cri.pod_stats(&self.pod) {
                Ok(p) => {
                    let linux = p.linux.as_ref();
                    (
                        linux
                            .and_then(|l| l.cpu.as_ref())
                            .and_then(|c| c.usage_core_nano_seconds.as_ref())
                            .map(|v| v.value),
                        linux
                            .and_then(|l| l.memory.as_ref())
                            .and_then(|m| m.working_set_bytes.as_ref())
                            .map(|v| v.value),
                        String::new(),
                    )
                }
                Err(e) if format!("{e:#}").contains("invalid group path") => {
                    let path = c.driver.path(&self.pod.cgroup_parent);
                    let usage = cgroup_file(&path, "cpu.stat").ok().and_then(|s| {
                        s.lines()
                            .find_map(|l| l.strip_prefix("usage_usec "))
                            .and_then(|v| v.parse::<u64>().ok())
                    });
                    let current = cgroup_file(&path, "memory.current")
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok());
                    (
                        usage.map(|u| u * 1000),
                        current,
                        format!(" (from {path}: PodSandboxStats said {e:#})"),
                    )
                }
                Err(e) => (None, None, format!(" ({e:#})")),
            };
            last = format!(
                "container cpu {cpu:?} ns, working set {memory:?} B{}; pod cpu {pod_cpu:?} ns, \
                 memory {pod_memory:?} B{pod_note}",
                container
                    .err()
                    .map_or(String::new(), |e| format!(" ({e:#})")),
            );
            [cpu, memory, pod_cpu, pod_memory]
                .iter()
                .all(|v| v.unwrap_or(0) > 0)
        });
        eprintln!("{last}");
        ensure!(ok, "{last}");
        Ok(())
    }

    /// The quota is in `cpu.max`, and over a window the spinning guest used well under the
    /// full core it would take without it (20% asked; under 60% accepted).
    pub fn cpu_quota(&self, c: &Checks) -> Result<()> {
        let path = self.path(c, &self.busy);
        let max = cgroup_file(&path, "cpu.max")?;
        ensure!(max == "20000 100000", "{path}/cpu.max is {max:?}");
        let usage = || -> Result<u64> {
            let stat = cgroup_file(&path, "cpu.stat")?;
            stat.lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .and_then(|v| v.parse().ok())
                .context("no usage_usec in cpu.stat")
        };
        let (u0, t0) = (usage()?, Instant::now());
        std::thread::sleep(Duration::from_secs(15));
        let (u1, wall) = (usage()?, t0.elapsed());
        let share = (u1 - u0) as f64 / wall.as_micros() as f64;
        eprintln!(
            "busy used {} µs of CPU in {} µs: {:.0}% of a core",
            u1 - u0,
            wall.as_micros(),
            share * 100.0
        );
        ensure!(u1 > u0, "the spinning guest used no CPU");
        ensure!(
            share < 0.6,
            "the guest used {:.0}% of a core under a 20% quota",
            share * 100.0
        );
        Ok(())
    }

    /// UpdateContainerResources with kubelet's whole resources message: memory.max follows.
    pub fn update_memory(&self, c: &Checks) -> Result<()> {
        let path = self.path(c, &self.sleeper);
        let before = cgroup_file(&path, "memory.max")?;
        ensure!(
            before == "67108864",
            "{path}/memory.max is {before:?} at start"
        );
        let spec = Spec::new("sleeper", &image("sleeper")).memory_limit(128 << 20);
        c.cri.update(&self.sleeper, spec.resources())?;
        let after = cgroup_file(&path, "memory.max")?;
        eprintln!("{path}/memory.max: {before} -> {after}");
        ensure!(
            after == "134217728",
            "{path}/memory.max is {after:?} after the update"
        );
        ensure!(
            c.cri.status(&self.sleeper)?.state == 1,
            "the sleeper is no longer running"
        );
        Ok(())
    }

    /// A guest allocating without bound under 64 MiB ends with reason `OOMKilled`.
    pub fn oom(&self, c: &Checks, ids: &mut Vec<String>) -> Result<()> {
        let hog = c.cri.run(
            &self.pod,
            &Spec::new("hog", &image("memory-hog")).memory_limit(64 << 20),
        )?;
        ids.push(hog.clone());
        let status = c.cri.wait_exited_polling(&hog, EXIT, POLL)?;
        eprintln!(
            "hog: exit {} reason {:?} message {:?}",
            status.exit_code, status.reason, status.message
        );
        if status.reason != "OOMKilled" {
            bail!(
                "reason {:?} (exit code {}), not OOMKilled",
                status.reason,
                status.exit_code
            );
        }
        Ok(())
    }

    /// StopPodSandbox, RemovePodSandbox, and kubelet's removal of the pod cgroup.
    pub fn remove(&self, c: &Checks) -> Result<()> {
        c.cri.remove_pod(&self.pod)?;
        let dir = c.driver.dir(&self.pod.cgroup_parent);
        ensure!(!dir.exists(), "{} is left after the pod", dir.display());
        Ok(())
    }
}
