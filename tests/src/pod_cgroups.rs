//! Pod cgroups as kubelet makes them: named for its cgroup driver, created before
//! RunPodSandbox and removed after RemovePodSandbox. containerd's CRI then derives each
//! container's cgroup from the pod's (`<parent>/<id>`, or `<slice>:cri-containerd:<id>`).

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where kubelet puts pods, by its cgroup driver and the node's cgroup version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodCgroups {
    /// The host tests' own tree, `/wasmtime-e2e/pod<uid>` in every cgroup v1 hierarchy; the
    /// runtime creates the directories.
    E2e,
    /// kubelet's cgroupfs driver on cgroup v2: `/kubepods/besteffort/pod<uid>`, made by kubelet
    /// with every controller enabled for its children.
    Cgroupfs,
    /// kubelet's systemd driver: the slice `kubepods-burstable-pod<uid>.slice` (in
    /// `kubepods.slice/kubepods-burstable.slice/`), started and stopped through systemd.
    Systemd,
}

const ROOT: &str = "/sys/fs/cgroup";

impl PodCgroups {
    /// The `cgroup_parent` kubelet sends for pod `uid` (systemd escapes `-` in unit names as
    /// kubelet does, to `_`).
    pub fn parent(self, uid: &str) -> String {
        match self {
            PodCgroups::E2e => format!("/wasmtime-e2e/pod{uid}"),
            PodCgroups::Cgroupfs => format!("/kubepods/besteffort/pod{uid}"),
            PodCgroups::Systemd => {
                format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_"))
            }
        }
    }

    /// The pod's cgroup as `/proc/<pid>/cgroup` shows it on cgroup v2.
    pub fn path(self, parent: &str) -> String {
        match self {
            PodCgroups::Systemd => slice_path(parent),
            _ => parent.to_string(),
        }
    }

    /// The cgroup containerd's CRI gives container `id` of the pod (cgroup v2).
    pub fn container_path(self, parent: &str, id: &str) -> String {
        match self {
            PodCgroups::Systemd => format!("{}/cri-containerd-{id}.scope", slice_path(parent)),
            _ => format!("{parent}/{id}"),
        }
    }

    /// The pod's cgroup directory on cgroup v2.
    pub fn dir(self, parent: &str) -> PathBuf {
        Path::new(ROOT).join(self.path(parent).trim_start_matches('/'))
    }

    /// Creates the pod's cgroup before RunPodSandbox, as kubelet does.
    pub fn create(self, parent: &str) -> Result<()> {
        match self {
            PodCgroups::E2e => Ok(()),
            PodCgroups::Cgroupfs => create_v2(parent),
            PodCgroups::Systemd => systemctl(&["start", parent]),
        }
    }

    /// Removes the pod's cgroup after RemovePodSandbox, as kubelet does. A pod cgroup that
    /// still holds a container's cgroup is an error naming it.
    pub fn remove(self, parent: &str) -> Result<()> {
        match self {
            PodCgroups::E2e => remove_cgroup(parent),
            PodCgroups::Cgroupfs => {
                let dir = self.dir(parent);
                if dir.exists() {
                    no_children(&dir)?;
                    std::fs::remove_dir(&dir)
                        .with_context(|| format!("remove {}", dir.display()))?;
                }
                Ok(())
            }
            PodCgroups::Systemd => {
                let dir = self.dir(parent);
                if dir.exists() {
                    no_children(&dir)?;
                }
                systemctl(&["stop", parent])?;
                if dir.exists() {
                    bail!("{} is left after stopping {parent}", dir.display());
                }
                Ok(())
            }
        }
    }
}

/// `a-b-c.slice` → `/a.slice/a-b.slice/a-b-c.slice`, systemd's nesting of slice names.
pub fn slice_path(slice: &str) -> String {
    let name = slice.strip_suffix(".slice").unwrap_or(slice);
    let mut path = String::new();
    let mut prefix = String::new();
    for part in name.split('-') {
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(part);
        path.push_str(&format!("/{prefix}.slice"));
    }
    path
}

fn systemctl(args: &[&str]) -> Result<()> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .context("run systemctl")?;
    if !out.status.success() {
        bail!(
            "systemctl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Makes `path` under the v2 root as kubelet's cgroupfs manager does (runc's libcontainer):
/// each directory, and in each one above `path` every controller its parent offers enabled
/// for its children. The pod's own `cgroup.subtree_control` is left to the runtime.
fn create_v2(path: &str) -> Result<()> {
    let mut dir = PathBuf::from(ROOT);
    for part in path.split('/').filter(|p| !p.is_empty()) {
        let controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
            .with_context(|| format!("read {}/cgroup.controllers", dir.display()))?;
        let enable: Vec<String> = controllers
            .split_whitespace()
            .map(|c| format!("+{c}"))
            .collect();
        std::fs::write(dir.join("cgroup.subtree_control"), enable.join(" "))
            .with_context(|| format!("enable {enable:?} in {}", dir.display()))?;
        dir.push(part);
        if !dir.exists() {
            std::fs::create_dir(&dir).with_context(|| format!("create {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Fails when `dir` still holds a cgroup 30 s after the pod was removed (a runtime may
/// remove its cgroups just after answering; what is still there then is left behind).
fn no_children(dir: &Path) -> Result<()> {
    let children = || -> Vec<_> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().is_dir())
            .map(|e| e.file_name())
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !children().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let left = children();
    if !left.is_empty() {
        bail!("{} still holds {left:?}", dir.display());
    }
    Ok(())
}

/// Removes `path` (and its parent `/wasmtime-e2e` when empty) in every v1 hierarchy. A
/// directory that still has children is an error: a container's cgroup was left behind.
pub fn remove_cgroup(path: &str) -> Result<()> {
    let relative = path.trim_start_matches('/');
    for entry in std::fs::read_dir(ROOT)?.flatten() {
        let dir = entry.path().join(relative);
        if dir.is_dir()
            && let Err(err) = std::fs::remove_dir(&dir)
        {
            let children: Vec<_> = std::fs::read_dir(&dir)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name())
                .collect();
            bail!(
                "cannot remove {}: {err} (left inside: {children:?})",
                dir.display()
            );
        }
        if let Some(parent) = Path::new(relative).parent() {
            let _ = std::fs::remove_dir(entry.path().join(parent));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_names_pod_cgroups_by_driver() {
        let cases = [
            (
                PodCgroups::E2e,
                "/wasmtime-e2e/poda-1",
                "/wasmtime-e2e/poda-1/c1",
            ),
            (
                PodCgroups::Cgroupfs,
                "/kubepods/besteffort/poda-1",
                "/kubepods/besteffort/poda-1/c1",
            ),
            (
                PodCgroups::Systemd,
                "kubepods-burstable-poda_1.slice",
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-poda_1.slice/\
                 cri-containerd-c1.scope",
            ),
        ];
        for (kind, parent, container) in cases {
            assert_eq!(kind.parent("a-1"), parent, "{kind:?}");
            assert_eq!(kind.container_path(parent, "c1"), container, "{kind:?}");
        }
    }
}
