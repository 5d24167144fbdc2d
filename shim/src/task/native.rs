//! The Task verbs of a native container that differ from a guest's: Start through runc.

use super::TaskService;
use crate::error::{Error, Result};
use crate::native::Native;
use crate::state::Status;
use containerd_shim::api::StartResponse;
use containerd_shim::protos::events::task::TaskStart;
use containerd_shim::protos::topics::TASK_START_EVENT_TOPIC;
use std::time::Instant;
use tracing::info;

impl TaskService {
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
