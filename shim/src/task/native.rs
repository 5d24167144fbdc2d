//! The Task verbs of a native container that differ from a guest's: Create and Start through
//! runc.

use super::TaskService;
use super::lifecycle::Process;
use crate::bundle::Bundle;
use crate::cgroup::Cgroup;
use crate::container::StdioPaths;
use crate::error::{Error, Result};
use crate::native::Native;
use crate::state::Exit;
use crate::state::Status;
use containerd_shim::api::CreateTaskRequest;
use containerd_shim::api::StartResponse;
use containerd_shim::protos::events::task::TaskStart;
use containerd_shim::protos::topics::TASK_START_EVENT_TOPIC;
use std::time::Instant;
use tokio::sync::watch;
use tracing::info;

impl TaskService {
    /// Creates a native container with runc (which makes its cgroup, from the same spec); the
    /// shim only reads that cgroup, for Stats, Pids and OOM.
    pub(super) async fn spawn_native(
        &self,
        req: &CreateTaskRequest,
        bundle: &Bundle,
    ) -> Result<(i32, Process, watch::Receiver<Option<Exit>>, Option<Cgroup>)> {
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
        };
        if bundle.terminal {
            return Err(Error::Unimplemented(
                "a terminal (ctr run -t, tty: true) for a native container".into(),
            ));
        }
        let created = Native::create(&self.exits, &req.id, bundle, &stdio).await?;
        info!(pid = created.pid, "native container created by runc");
        let cgroup = match bundle.cgroups_path.clone() {
            Some(path) => {
                let open = move || Cgroup::open(&path);
                match super::blocking("open the cgroup", open).await {
                    Ok(cgroup) => Some(cgroup),
                    Err(err) => {
                        let _ = created.native.delete(&self.exits, true).await;
                        return Err(err);
                    }
                }
            }
            None => None,
        };
        Ok((
            created.pid,
            Process::Native(created.native),
            created.exit,
            cgroup,
        ))
    }

    /// `runc start`: the created init runs its program. Called under the container's
    /// lifecycle lock.
    pub(super) async fn start_native(
        &self,
        id: &str,
        native: &Native,
        began: Instant,
    ) -> Result<StartResponse> {
        let pid = self.with(id, |c| {
            let status = c.refresh();
            if !status.can_start() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} cannot be started: it is {}",
                    status.name()
                )));
            }
            Ok(c.pid)
        })?;
        native.start(&self.exits).await?;
        self.with(id, |c| {
            if c.status == Status::Created {
                c.status = Status::Running;
            }
            Ok(())
        })?;
        info!(pid, took_us = began.elapsed().as_micros(), "started");
        let event = TaskStart {
            container_id: id.to_string(),
            pid: pid as u32,
            ..Default::default()
        };
        self.events.publish(TASK_START_EVENT_TOPIC, event).await;
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }
}
