//! Pause, Resume, Update, Stats and Pids: the verbs that read or change a guest's cgroup.
//! Their cgroup and `/proc` work runs on the blocking pool ([`super::blocking`]), with no lock
//! of the container map held meanwhile.

use super::{TaskService, blocking};
use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::state::Status;
use crate::stats;
use containerd_shim::protos::events::task::{TaskPaused, TaskResumed};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::topics::{TASK_PAUSED_EVENT_TOPIC, TASK_RESUMED_EVENT_TOPIC};
use oci_spec::runtime::LinuxResources;
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::info;

pub(super) fn lock(cgroup: &Mutex<Cgroup>) -> MutexGuard<'_, Cgroup> {
    cgroup.lock().unwrap_or_else(|e| e.into_inner())
}

impl TaskService {
    /// The cgroup of `id`, if it is in the state Pause (`pause`) or Resume needs.
    fn paused_or_resumed(&self, id: &str, pause: bool) -> Result<Arc<Mutex<Cgroup>>> {
        self.with(id, |c| {
            let status = c.refresh();
            let ok = if pause {
                status.can_pause()
            } else {
                status.can_resume()
            };
            if !ok {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} cannot be {}: it is {}",
                    if pause { "paused" } else { "resumed" },
                    status.name()
                )));
            }
            c.cgroup.clone().ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "container {id} has no cgroup (linux.cgroupsPath) to freeze"
                ))
            })
        })
    }

    /// Freezes (`pause`) or thaws the guest's cgroup, and records and announces it.
    pub(super) async fn do_pause_or_resume(&self, id: &str, pause: bool) -> Result<()> {
        if let Some(native) = self.with(id, |c| Ok(c.native.clone()))? {
            self.paused_or_resumed(id, pause)?;
            native.pause(&self.exits, pause).await?;
        } else {
            self.freeze_or_thaw(id, pause).await?;
        }
        self.paused_or_resumed_done(id, pause).await
    }

    /// Freezes or thaws the guest's cgroup.
    async fn freeze_or_thaw(&self, id: &str, pause: bool) -> Result<()> {
        let cgroup = self.paused_or_resumed(id, pause)?;
        if pause {
            blocking("freeze the cgroup", move || lock(&cgroup).freeze()).await?;
        } else {
            blocking("thaw the cgroup", move || lock(&cgroup).thaw()).await?;
        }
        Ok(())
    }

    /// Records and announces a pause or resume that was done.
    async fn paused_or_resumed_done(&self, id: &str, pause: bool) -> Result<()> {
        self.with(id, |c| {
            match (c.refresh(), pause) {
                (Status::Running, true) => c.status = Status::Paused,
                (Status::Paused, false) => c.status = Status::Running,
                _ => {}
            }
            Ok(())
        })?;
        let container_id = id.to_string();
        if pause {
            info!("paused");
            let event = TaskPaused {
                container_id,
                ..Default::default()
            };
            self.events.publish(TASK_PAUSED_EVENT_TOPIC, event).await;
        } else {
            info!("resumed");
            let event = TaskResumed {
                container_id,
                ..Default::default()
            };
            self.events.publish(TASK_RESUMED_EVENT_TOPIC, event).await;
        }
        Ok(())
    }

    /// Thaws a paused guest so SIGKILL can end it, as runc does. A guest that is not paused
    /// (or has no cgroup) is left alone.
    pub(super) async fn thaw_for_kill(&self, id: &str) -> Result<()> {
        let Ok(cgroup) = self.paused_or_resumed(id, false) else {
            return Ok(());
        };
        if let Some(native) = self.with(id, |c| Ok(c.native.clone()))? {
            return native.pause(&self.exits, false).await;
        }
        blocking("thaw the cgroup", move || lock(&cgroup).thaw()).await
    }

    /// Applies `resources` to the guest's cgroup, and a new memory limit to its Wasm memory.
    pub(super) async fn do_update(
        &self,
        id: &str,
        resources: Option<LinuxResources>,
    ) -> Result<()> {
        let (status, cgroup) = self.with(id, |c| Ok((c.refresh(), c.cgroup.clone())))?;
        if !status.can_kill() {
            return Err(Error::NotFound(format!("{id}: process already finished")));
        }
        let Some(cgroup) = cgroup else {
            return Err(Error::FailedPrecondition(format!(
                "container {id} has no cgroup (linux.cgroupsPath) to update"
            )));
        };
        let Some(resources) = resources else {
            return Ok(());
        };
        if let Some(native) = self.with(id, |c| Ok(c.native.clone()))? {
            native.update(&self.exits, &resources).await?;
            info!("resources updated");
            return Ok(());
        }
        let memory_limit = resources
            .memory()
            .as_ref()
            .is_some_and(|m| m.limit().is_some());
        let budget = crate::bundle::wasm_budget(&resources);
        blocking("update the cgroup", move || {
            lock(&cgroup).update(&resources)
        })
        .await?;
        if memory_limit {
            self.resize_wasm_memory(id, budget).await?;
        }
        info!("resources updated");
        Ok(())
    }

    /// Moves the running guest's Wasm memory budget along with its cgroup's memory limit.
    async fn resize_wasm_memory(&self, id: &str, budget: Option<u64>) -> Result<()> {
        // The guest's channel is out of the map while it is written to; the exit watcher,
        // finding it gone, only loses the guest's own OOM report for an exit at that moment.
        let Some(mut guest) = self.with(id, |c| Ok(c.guest.take()))? else {
            return Ok(());
        };
        let sent = guest.set_memory_limit(budget).await;
        self.with(id, |c| {
            if c.refresh().can_kill() && c.guest.is_none() {
                c.guest = Some(guest);
            }
            Ok(())
        })?;
        sent
    }

    /// The guest's usage: from its cgroup, else from `/proc/<pid>`.
    pub(super) async fn do_stats(&self, id: &str) -> Result<Any> {
        let (pid, status, cgroup) =
            self.with(id, |c| Ok((c.pid, c.refresh(), c.cgroup.clone())))?;
        if !status.can_kill() {
            return Err(Error::NotFound(format!("{id}: process already finished")));
        }
        blocking("read the guest's usage", move || match cgroup {
            Some(cgroup) => lock(&cgroup).metrics(),
            None => stats::collect(pid),
        })
        .await
    }

    /// The guest's processes: those of its cgroup (the ground truth), the guest's pid first;
    /// the guest's pid alone when it has no cgroup or it cannot be read. Empty once it exited.
    pub(super) async fn do_pids(&self, id: &str) -> Result<Vec<u32>> {
        let (pid, status, cgroup) =
            self.with(id, |c| Ok((c.pid, c.refresh(), c.cgroup.clone())))?;
        if !status.can_kill() {
            return Ok(Vec::new());
        }
        let pid = pid as u32;
        let mut pids = match cgroup {
            Some(cgroup) => {
                blocking("read the cgroup's processes", move || {
                    Ok(lock(&cgroup).pids())
                })
                .await?
            }
            None => Vec::new(),
        };
        pids.retain(|p| *p != pid);
        pids.insert(0, pid);
        Ok(pids)
    }
}
