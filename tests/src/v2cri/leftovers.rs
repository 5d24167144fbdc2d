//! What pods can leave on the node after RemovePodSandbox: systemd scopes, cgroups, guest,
//! zygote and shim processes, mounts of a rootfs, network namespaces.

use crate::containerd::processes_with_arg;
use anyhow::{Result, bail};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const NETNS: &str = "/var/run/netns";

/// The node before the pods: its network namespaces.
pub struct Node {
    netns: BTreeSet<String>,
}

fn netns() -> BTreeSet<String> {
    std::fs::read_dir(NETNS)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// `cri-containerd-*.scope` units systemd still knows, in any state.
fn scopes() -> Vec<String> {
    let out = Command::new("systemctl")
        .args(["list-units", "--all", "--plain", "--no-legend", "*.scope"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| l.contains("cri-containerd-"))
            .map(|l| format!("unit {}", l.trim()))
            .collect(),
        Err(e) => vec![format!("systemctl list-units: {e}")],
    }
}

/// Cgroups of the pods: named for one of `ids`, a CRI scope, or a kubelet pod cgroup.
fn cgroups(ids: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut todo = vec![Path::new("/sys/fs/cgroup").to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = e.path();
            if !path.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let parent = dir.file_name().map(|n| n.to_string_lossy().into_owned());
            let pod_dir = name.starts_with("pod")
                && matches!(parent.as_deref(), Some("besteffort" | "burstable"));
            if ids.iter().any(|id| name.contains(id.as_str()))
                || name.starts_with("cri-containerd-")
                || (name.contains("-pod") && name.ends_with(".slice"))
                || pod_dir
            {
                found.push(format!("cgroup {}", path.display()));
            }
            todo.push(path);
        }
    }
    found
}

/// Live guests, zygotes and wasmtime shims.
fn processes() -> Vec<String> {
    let mut found = Vec::new();
    for (pid, args) in processes_with_arg("") {
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        let guest = matches!(comm.trim(), "wasm-guest" | "wasm-zygote")
            || args
                .iter()
                .any(|a| a == "--wasmtime-guest" || a == "--wasmtime-zygote");
        let shim = args
            .first()
            .is_some_and(|a| a.contains("containerd-shim-wasmtime"));
        if (guest || shim) && crate::soak::node::alive(pid) {
            found.push(format!(
                "process {pid} ({}): {}",
                comm.trim(),
                args.join(" ")
            ));
        }
    }
    found
}

/// Mounts whose mount point names one of `ids` (a rootfs, a sandbox's shm).
fn mounts(ids: &[String]) -> Vec<String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| ids.iter().any(|id| m.contains(id.as_str())))
        .map(|m| format!("mount {m}"))
        .collect()
}

impl Node {
    pub fn take() -> Node {
        Node { netns: netns() }
    }

    fn found(&self, ids: &[String]) -> Vec<String> {
        let mut found = scopes();
        found.extend(cgroups(ids));
        found.extend(processes());
        found.extend(mounts(ids));
        found.extend(
            netns()
                .difference(&self.netns)
                .map(|n| format!("netns {NETNS}/{n}")),
        );
        found
    }

    /// Nothing of the pods `ids` (sandbox and container ids) is left once they are removed;
    /// waits up to 60 s for what goes away just after the calls return.
    pub fn leftovers(&self, ids: &[String]) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let found = self.found(ids);
            if found.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("left: {}", found.join("; "));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}
