//! A guest's cgroup: created at `linux.cgroupsPath` with `linux.resources` applied, the guest
//! process moved into it at Create, frozen and thawed for Pause/Resume, updated in place,
//! read for Stats, removed at Delete.
//!
//! cgroup v1 and v2 go through cgroups-rs's managers: the cgroupfs one for a path
//! (`/default/<id>`, taken from the root of each hierarchy), the systemd one (a transient
//! scope over D-Bus) for a `slice:prefix:name` path, which is what containerd's CRI passes
//! when the node uses the systemd cgroup driver.
//!
//! Stats are always encoded as containerd's `io.containerd.cgroups.v1.Metrics`, filled from
//! whichever hierarchy the node has: `ctr` and CRI decode that message on v1 and v2 nodes alike.
//! On v1 they come from cgroups-rs; on v2 from the unified directory's own files ([`v2`]),
//! since cgroups-rs reads CPU usage from `cpuacct`, which v2 does not have.

mod oom;
pub use oom::OomWatch;
mod systemd;
mod v1;
mod v2;

use crate::error::{Error, Result};
use cgroups_rs::manager::{FsManager, Manager, SystemdManager, is_systemd_cgroup};
use cgroups_rs::systemd::utils::expand_slice;
use cgroups_rs::{CgroupPid, FreezerState};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use oci_spec::runtime::LinuxResources;
use std::os::fd::OwnedFd;

/// How long freezing may take before Pause fails (and thaws what froze), and how long Delete
/// waits for systemd to remove a stopped scope's cgroup.
const FREEZE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

pub struct Cgroup {
    path: String,
    /// The cgroup's directory below each hierarchy's mount point: the path itself for
    /// cgroupfs, the expanded slice and the scope (`kubepods.slice/kubepods-pod1.slice/
    /// cri-containerd-<id>.scope`) for systemd.
    relative: String,
    manager: Box<dyn Manager>,
}

impl std::fmt::Debug for Cgroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cgroup").field("path", &self.path).finish()
    }
}

fn cgroup_error(what: String) -> impl FnOnce(cgroups_rs::manager::Error) -> Error {
    move |e| Error::Internal(format!("{what}: {e}"))
}

impl Cgroup {
    /// Creates the cgroup at `path`, applies `resources` and moves `pid` into it.
    pub fn create(path: &str, resources: Option<&LinuxResources>, pid: i32) -> Result<Cgroup> {
        let (manager, relative) = Cgroup::manager(path)?;
        let mut cgroup = Cgroup {
            path: path.to_string(),
            relative,
            manager,
        };
        // The process first (that creates the cgroup), then the limits: systemd sets them on
        // the scope it starts with the process.
        if let Err(err) = cgroup.adopt(pid) {
            cgroup.destroy();
            return Err(err);
        }
        if let Some(resources) = resources
            && let Err(err) = cgroup.update(resources)
        {
            cgroup.destroy();
            return Err(err);
        }
        Ok(cgroup)
    }

    /// Whether a guest for cgroups path `path` can be born in its cgroup ([`Cgroup::create_empty`]):
    /// on cgroup v2 with the cgroupfs driver. (systemd starts a scope only with a process in it.)
    pub fn can_be_born_in(path: &str) -> bool {
        !is_systemd_cgroup(path) && cgroups_rs::fs::hierarchies::is_cgroup2_unified_mode()
    }

    /// Creates the v2 cgroup at `path` with `resources` applied and no process in it, for a
    /// guest to be born in: returns it with its directory open (for `CLONE_INTO_CGROUP`).
    pub fn create_empty(
        path: &str,
        resources: Option<&LinuxResources>,
    ) -> Result<(Cgroup, OwnedFd)> {
        let relative = path.trim_start_matches('/');
        cgroups_rs::fs::Cgroup::new(cgroups_rs::fs::hierarchies::auto(), relative)
            .map_err(|e| Error::Internal(format!("create cgroup {path}: {e}")))?;
        let mut cgroup = Cgroup::open(path)?;
        let opened = match resources.map(|r| cgroup.update(r)).transpose() {
            Ok(_) => cgroup.open_dir(),
            Err(err) => Err(err),
        };
        match opened {
            Ok(dir) => Ok((cgroup, dir)),
            Err(err) => {
                cgroup.destroy();
                Err(err)
            }
        }
    }

    /// The cgroup's v2 directory, open, for a process to be born in it (`None` where
    /// [`Cgroup::can_be_born_in`] says no).
    pub fn dir_fd(&self) -> Option<OwnedFd> {
        if !Cgroup::can_be_born_in(&self.path) {
            return None;
        }
        self.open_dir().ok()
    }

    /// The cgroup's (unified) directory, open.
    fn open_dir(&self) -> Result<OwnedFd> {
        let dir = self
            .manager
            .cgroup_path(None)
            .map_err(cgroup_error(format!("find cgroup {}", self.path)))?;
        let file =
            std::fs::File::open(&dir).map_err(Error::io(format!("open cgroup directory {dir}")))?;
        Ok(file.into())
    }

    /// Moves `pid` into the cgroup (creating it, or starting its systemd scope and waiting for
    /// the job), and the children it forked before (its compiler, on a compile-cache miss);
    /// whatever it forks later is born in the cgroup.
    pub fn adopt(&mut self, pid: i32) -> Result<()> {
        let what = format!("move the guest into cgroup {}", self.path);
        let unit = self
            .relative
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let jobs = if self.manager.systemd() {
            Some(systemd::Jobs::watch()?).filter(|jobs| !jobs.loaded(&unit))
        } else {
            None
        };
        self.manager
            .add_proc(CgroupPid::from(pid as u64))
            .map_err(cgroup_error(what))?;
        if let Some(jobs) = jobs {
            jobs.wait(&unit, "start")?;
        }
        for child in children(pid) {
            // A child that exited meanwhile cannot be moved, and needs not be.
            let _ = self.manager.add_proc(CgroupPid::from(child as u64));
        }
        Ok(())
    }

    /// The directory whose `memory.events` to watch for OOM kills while the guest runs
    /// ([`OomWatch`]): v2 only (v1 has no inotify on them, and its cgroup stays until the shim
    /// removes it, so it is read after the exit).
    pub fn oom_events_dir(&self) -> Option<std::path::PathBuf> {
        if !self.manager.v2() {
            return None;
        }
        self.manager.cgroup_path(None).ok().map(Into::into)
    }

    /// Removes the cgroup at `path` left by a shim that died (the `delete` action). Its guest
    /// was killed just before; removal is retried for a moment while the kernel lets it go.
    pub fn remove_leftover(path: &str) -> Result<()> {
        let mut cgroup = Cgroup::open(path)?;
        for _ in 0..20 {
            if cgroup.manager.destroy().is_ok() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        cgroup
            .manager
            .destroy()
            .map_err(cgroup_error(format!("remove cgroup {path}")))
    }

    /// The existing cgroup at `path`, without creating or changing it.
    pub fn open(path: &str) -> Result<Cgroup> {
        let (manager, relative) = Cgroup::manager(path)?;
        Ok(Cgroup {
            path: path.to_string(),
            relative,
            manager,
        })
    }

    /// A cgroup driven by `manager` (a fake, in tests).
    #[cfg(test)]
    pub fn with_manager(path: &str, manager: Box<dyn Manager>) -> Cgroup {
        Cgroup {
            path: path.to_string(),
            relative: path.trim_start_matches('/').to_string(),
            manager,
        }
    }

    /// The manager for `path`, and the cgroup's directory relative to the hierarchies' mount
    /// points. (cgroups-rs's `cgroup_path(Some(controller))` is the shim's own cgroup on v1,
    /// from `/proc/self/cgroup`, not the managed one, so the directory is derived here.)
    fn manager(path: &str) -> Result<(Box<dyn Manager>, String)> {
        if is_systemd_cgroup(path) {
            let manager = SystemdManager::new(path).map_err(cgroup_error(format!(
                "cgroupsPath {path} asks for the systemd cgroup driver, but systemd cannot \
                 create its scope (is systemd running and reachable over D-Bus?)"
            )))?;
            let slice = expand_slice(manager.slice())
                .map_err(|e| Error::InvalidArgument(format!("cgroupsPath {path}: {e}")))?;
            let relative = format!("{}/{}", slice.trim_matches('/'), manager.unit());
            Ok((
                Box::new(manager),
                relative.trim_start_matches('/').to_string(),
            ))
        } else {
            let relative = path.trim_start_matches('/').to_string();
            let manager =
                FsManager::new(&relative).map_err(cgroup_error(format!("cgroup {path}")))?;
            Ok((Box::new(manager), relative))
        }
    }

    /// Applies `resources` (memory, CPU, pids, ...) in place. On v2 with cgroupfs, only what
    /// the unified hierarchy can hold ([`v2::applicable`]: device rules are left out, a limit
    /// whose controller is missing is refused by name). The systemd manager sets memory, CPU,
    /// cpuset and pids on the scope and ignores the rest (devices, block I/O, hugepages).
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        let what = format!("apply resources to cgroup {}", self.path);
        if self.manager.v2() && !self.manager.systemd() {
            let dir = self
                .manager
                .cgroup_path(None)
                .map_err(cgroup_error(what.clone()))?;
            let controllers =
                std::fs::read_to_string(format!("{dir}/cgroup.controllers")).unwrap_or_default();
            let resources = v2::applicable(resources, &controllers)
                .map_err(|e| Error::InvalidArgument(format!("{what}: {e}")))?;
            return self.manager.set(&resources).map_err(cgroup_error(what));
        }
        self.manager.set(resources).map_err(cgroup_error(what))
    }

    /// Freezes the cgroup and waits until every process in it is frozen.
    pub fn freeze(&self) -> Result<()> {
        self.manager
            .freeze(FreezerState::Frozen)
            .map_err(cgroup_error(format!("freeze cgroup {}", self.path)))?;
        if let Err(err) = self.wait_frozen(true) {
            let _ = self.manager.freeze(FreezerState::Thawed);
            return Err(err);
        }
        Ok(())
    }

    /// Thaws the cgroup and waits until the kernel says it is.
    pub fn thaw(&self) -> Result<()> {
        self.manager
            .freeze(FreezerState::Thawed)
            .map_err(cgroup_error(format!("thaw cgroup {}", self.path)))?;
        self.wait_frozen(false)
    }

    /// Waits until the kernel reports the cgroup `frozen` (or not): `frozen 1` in
    /// `cgroup.events` (v2), `FROZEN` in `freezer.state` (v1, `FREEZING` meanwhile).
    fn wait_frozen(&self, frozen: bool) -> Result<()> {
        let (file, done): (&str, fn(&str) -> Option<bool>) = if self.manager.v2() {
            ("cgroup.events", |text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("frozen "))
                    .map(|v| v.trim() == "1")
            })
        } else {
            ("freezer.state", |text| Some(text.trim() == "FROZEN"))
        };
        let Some(dir) = self.controller_dir("freezer") else {
            return Ok(());
        };
        let path = format!("{dir}/{file}");
        let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
        let mut pause = std::time::Duration::from_micros(200);
        loop {
            let text = std::fs::read_to_string(&path).map_err(Error::io(format!("read {path}")))?;
            if done(&text) == Some(frozen) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                let state = if frozen { "frozen" } else { "thawed" };
                return Err(Error::Internal(format!(
                    "cgroup {} was not {state} within {} s ({file}: {})",
                    self.path,
                    FREEZE_TIMEOUT.as_secs(),
                    text.trim().replace('\n', ", ")
                )));
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(std::time::Duration::from_millis(20));
        }
    }

    /// Processes (not threads) in the cgroup, from `cgroup.procs`: of the unified directory
    /// (v2), or of the cgroup's directory in each v1 hierarchy, merged and deduplicated. Empty
    /// if none can be read. (cgroups-rs's `Manager::pids` reads `tasks` or `cgroup.threads`:
    /// one entry per thread.)
    pub fn pids(&self) -> Vec<u32> {
        let dirs: std::collections::BTreeSet<String> = if self.manager.v2() {
            self.manager.cgroup_path(None).into_iter().collect()
        } else {
            self.manager
                .mounts()
                .values()
                .map(|mount| format!("{mount}/{}", self.relative))
                .collect()
        };
        let mut pids = Vec::new();
        for dir in dirs {
            if let Ok(text) = std::fs::read_to_string(format!("{dir}/cgroup.procs")) {
                pids.extend(parse_procs(&text));
            }
        }
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Whether the kernel's OOM killer killed a process of this cgroup.
    pub fn oom_killed(&self) -> bool {
        let (file, key) = if self.manager.v2() {
            ("memory.events", "oom_kill")
        } else {
            ("memory.oom_control", "oom_kill")
        };
        let Some(dir) = self.controller_dir("memory") else {
            return false;
        };
        std::fs::read_to_string(format!("{dir}/{file}"))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix(key)?.trim().parse::<u64>().ok())
            })
            .is_some_and(|n| n > 0)
    }

    /// The cgroup's directory: the unified one (v2), or `controller`'s hierarchy's (v1).
    fn controller_dir(&self, controller: &str) -> Option<String> {
        if self.manager.v2() {
            return self.manager.cgroup_path(None).ok();
        }
        let mount = self.manager.mounts().get(controller)?;
        Some(format!("{mount}/{}", self.relative))
    }

    /// The cgroup's usage, as containerd's v1 metrics message.
    pub fn metrics(&self) -> Result<Any> {
        if self.manager.v2() {
            let dir = self
                .manager
                .cgroup_path(None)
                .map_err(cgroup_error(format!("find cgroup {}", self.path)))?;
            return crate::stats::encode(&v2::metrics(std::path::Path::new(&dir)));
        }
        crate::stats::encode(&v1::metrics(&self.manager.stats()))
    }

    /// Removes the cgroup (its processes are gone by now; any straggler is moved out first).
    /// A systemd scope is stopped, and waited for until its cgroup is gone.
    pub fn destroy(&mut self) {
        let dir = self.manager.cgroup_path(None).ok();
        if let Err(e) = self.manager.destroy() {
            tracing::warn!(path = self.path, "cannot remove cgroup: {e}");
            return;
        }
        if self.manager.systemd()
            && self.manager.v2()
            && let Some(dir) = dir
        {
            let deadline = std::time::Instant::now() + FREEZE_TIMEOUT;
            while std::path::Path::new(&dir).exists() {
                if std::time::Instant::now() > deadline {
                    tracing::warn!(
                        path = self.path,
                        "systemd has not removed the scope's cgroup"
                    );
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
    }
}

/// The children of every thread of `pid` (`/proc/<pid>/task/*/children`).
fn children(pid: i32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut children: Vec<u32> = tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    children.sort_unstable();
    children.dedup();
    children
}

/// The pids of a `cgroup.procs` file, one a line; v1 does not promise them sorted or unique.
fn parse_procs(text: &str) -> impl Iterator<Item = u32> + '_ {
    text.lines()
        .filter_map(|line| line.trim().parse::<u32>().ok())
        .filter(|pid| *pid != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cgroup_procs() {
        let pids: Vec<u32> = parse_procs("12\n7\n\n12\n 40 \ngarbage\n0\n").collect();
        assert_eq!(pids, vec![12, 7, 12, 40]);
        assert_eq!(parse_procs("").count(), 0);
    }
}
