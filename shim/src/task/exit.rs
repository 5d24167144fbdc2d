//! Watching a container's first process: its OOM kills while it runs and its exit, told to
//! containerd once and in order (TaskOOM, then TaskExit).

use super::TaskService;
use super::lifecycle::timestamp;
use crate::cgroup::{Cgroup, OomWatch};
use crate::exits;
use crate::state::Exit;
use containerd_shim::protos::events::task::{TaskExit, TaskOOM};
use containerd_shim::protos::topics::*;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

impl TaskService {
    /// Records the guest's exit in the container and tells containerd, once; then sets
    /// `reported`, which Delete waits for.
    pub(super) fn watch_exit(
        &self,
        id: String,
        pid: i32,
        exit: watch::Receiver<Option<Exit>>,
        lifecycle: Arc<tokio::sync::Mutex<()>>,
        cgroup: Option<Arc<std::sync::Mutex<Cgroup>>>,
        reported: watch::Sender<bool>,
    ) {
        let containers = self.containers.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let mut oom_watch = match cgroup.clone() {
                Some(c) => {
                    let find = move || Ok(super::resources::lock(&c).oom_events_dir());
                    let dir = super::blocking("find the cgroup", find)
                        .await
                        .ok()
                        .flatten();
                    dir.and_then(|dir| {
                        OomWatch::new(&dir)
                            .inspect_err(|e| tracing::warn!(id, "cannot watch for OOM kills: {e}"))
                            .ok()
                    })
                }
                None => None,
            };
            // OOM kills while the guest runs are told as they happen (a v2 cgroup's
            // memory.events, watched); the exit's own check below covers the rest.
            let mut oom_told = false;
            let waiting = exits::wait(exit);
            tokio::pin!(waiting);
            let exit = loop {
                let Some(watch) = oom_watch.as_mut() else {
                    break waiting.await;
                };
                tokio::select! {
                    biased;
                    kills = watch.next() => match kills {
                        Some(kills) => {
                            info!(id, kills, "the kernel's OOM killer killed in the guest's cgroup");
                            publish_oom(&events, &id).await;
                            oom_told = true;
                        }
                        None => oom_watch = None,
                    },
                    exit = &mut waiting => break exit,
                }
            };
            // Dropping `reported` on any return also lets Delete go on.
            let Some(exit) = exit else {
                return;
            };
            let _order = lifecycle.lock().await;
            let guest = super::lock_containers(&containers)
                .by_id
                .get_mut(&id)
                .and_then(|c| {
                    c.status = c.status.stopped(exit);
                    c.guest.take()
                });
            info!(id, pid, status = exit.status, "guest exited");
            let mut oom = match guest {
                Some(guest) => guest.ran_out_of_memory().await,
                None => false,
            };
            if let Some(watch) = oom_watch.as_mut() {
                oom |= watch.grew().is_some();
            }
            if !oom
                && !oom_told
                && let Some(cgroup) = cgroup
            {
                let check = move || Ok(super::resources::lock(&cgroup).oom_killed());
                oom = super::blocking("read the cgroup's OOM count", check)
                    .await
                    .unwrap_or(false);
            }
            if oom {
                info!(id, "guest ran out of memory");
                publish_oom(&events, &id).await;
            }
            events
                .publish(
                    TASK_EXIT_EVENT_TOPIC,
                    TaskExit {
                        container_id: id.clone(),
                        id,
                        pid: pid as u32,
                        exit_status: exit.status,
                        exited_at: Some(timestamp(exit.at)).into(),
                        ..Default::default()
                    },
                )
                .await;
            reported.send_replace(true);
        });
    }
}

async fn publish_oom(events: &crate::events::Events, id: &str) {
    let event = TaskOOM {
        container_id: id.to_string(),
        ..Default::default()
    };
    events.publish(TASK_OOM_EVENT_TOPIC, event).await;
}
