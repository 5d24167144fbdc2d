//! Watching a container's first process: its OOM kills while it runs and its exit, told to
//! containerd once and in order (TaskOOM, then TaskExit).

use super::TaskService;
use super::lifecycle::timestamp;
use crate::cgroup::{Cgroup, OomWatch};
use crate::exits;
use crate::state::{Exit, Status};
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
        let exits = self.exits.clone();
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
            end_execs(&containers, &exits, &id).await;
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

/// How long the first process's TaskExit waits for its execs' exits to be told.
const EXECS_REPORTED: std::time::Duration = std::time::Duration::from_secs(10);

/// Ends the execs still running when a container's first process has exited, as containerd's
/// runc shim does: SIGKILL to each (and, for a native container without a pid namespace of its
/// own, `runc kill --all`, so nothing of it outlives its init), then waits until each exec's
/// TaskExit is told, so containerd sees the execs end before the container (bounded by
/// `EXECS_REPORTED`). New execs are refused from the exit on: the container reads as stopped.
async fn end_execs(
    containers: &std::sync::Mutex<super::Containers>,
    exits: &Arc<exits::Exits>,
    id: &str,
) {
    let (execs, native) = {
        let mut all = super::lock_containers(containers);
        let Some(c) = all.by_id.get_mut(id) else {
            return;
        };
        let execs: Vec<_> = c
            .execs
            .iter_mut()
            .filter_map(|(exec_id, e)| {
                matches!(e.refresh(), Status::Running | Status::Paused)
                    .then(|| (exec_id.clone(), e.pidfd.clone(), e.exit_reported.clone()))
            })
            .collect();
        let native = c.native.clone().filter(|n| n.shares_pid_namespace());
        (execs, native)
    };
    if let Some(native) = native {
        // runc refuses it for a container whose processes are all gone: nothing to do then.
        let _ = native.kill(exits, libc::SIGKILL as u32, true).await;
    }
    for (exec_id, pidfd, _) in &execs {
        info!(
            id,
            exec_id, "the container's first process exited: killing its exec"
        );
        if let Some(pidfd) = pidfd {
            let _ = crate::container::send_signal(pidfd, libc::SIGKILL);
        }
    }
    let all_told = async {
        for (_, _, mut reported) in execs {
            let _ = reported.wait_for(|told| *told).await;
        }
    };
    if tokio::time::timeout(EXECS_REPORTED, all_told)
        .await
        .is_err()
    {
        tracing::warn!(
            id,
            "execs still running {EXECS_REPORTED:?} after the first process's exit"
        );
    }
}

async fn publish_oom(events: &crate::events::Events, id: &str) {
    let event = TaskOOM {
        container_id: id.to_string(),
        ..Default::default()
    };
    events.publish(TASK_OOM_EVENT_TOPIC, event).await;
}
