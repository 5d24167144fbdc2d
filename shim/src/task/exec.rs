//! Exec: processes added to a running container (`ctr task exec`, CRI's ExecSync for exec
//! probes and Exec for `kubectl exec`). A native container's exec goes through `runc exec`.
//! CRI calls Wait before Start, so an exec's exit watch exists from Exec on.

use super::{TaskService, lifecycle::timestamp};
use crate::container::{self, ExecProcess, StdioPaths};
use crate::error::{Error, Result};
use crate::exits;
use crate::state::{Exit, Status};
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskExecAdded, TaskExecStarted, TaskExit};
use containerd_shim::protos::topics::*;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::info;

/// What an exec starts in.
enum Target {
    Native(Arc<crate::native::Native>),
    Wasm {
        init: i32,
        base: Arc<crate::container::ExecBase>,
        cgroup: Option<Arc<std::sync::Mutex<crate::cgroup::Cgroup>>>,
        bundle: std::path::PathBuf,
    },
}

/// containerd's rule for exec ids, which also makes them safe in file names.
fn check_exec_id(exec_id: &str) -> Result<()> {
    let ok = !exec_id.is_empty()
        && exec_id.len() <= 76
        && exec_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !exec_id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "invalid exec id {exec_id:?}"
        )))
    }
}

impl TaskService {
    pub(super) async fn do_exec(&self, req: &ExecProcessRequest) -> Result<()> {
        check_exec_id(&req.exec_id)?;
        let spec = req
            .spec
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("exec: no process spec".into()))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| Error::InvalidArgument(format!("exec: invalid process spec: {e}")))?;
        self.with(&req.id, |c| {
            let status = c.refresh();
            if !matches!(status, Status::Created | Status::Running) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot exec in a {} container",
                    status.name()
                )));
            }
            if c.native.is_none() && c.exec_base.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "container {} runs no program to exec into (a pod's sandbox)",
                    req.id
                )));
            }
            if c.execs.contains_key(&req.exec_id) {
                return Err(Error::AlreadyExists(format!("exec {}", req.exec_id)));
            }
            let (exit_tx, exit) = watch::channel(None);
            let (reported_tx, exit_reported) = watch::channel(false);
            c.execs.insert(
                req.exec_id.clone(),
                ExecProcess {
                    spec: process,
                    stdio: StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                    },
                    pid: 0,
                    pidfd: None,
                    status: Status::Created,
                    exit_tx: Arc::new(exit_tx),
                    exit,
                    exit_reported,
                    reported_tx: Some(reported_tx),
                    stdin_relay: None,
                    guest: None,
                    console: None,
                },
            );
            Ok(())
        })?;
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        self.events
            .publish(TASK_EXEC_ADDED_EVENT_TOPIC, event)
            .await;
        Ok(())
    }

    pub(super) async fn start_exec(&self, id: &str, exec_id: &str) -> Result<StartResponse> {
        let (target, process, stdio, exit_tx, reported_tx, lifecycle) = self.with(id, |c| {
            // Once the first process has exited, its execs are being ended: none starts.
            let status = c.refresh();
            if !matches!(status, Status::Created | Status::Running) {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start exec {exec_id}: container {id} is {}",
                    status.name()
                )));
            }
            let target = match (&c.native, &c.exec_base) {
                (Some(native), _) => Target::Native(native.clone()),
                (None, Some(base)) => Target::Wasm {
                    init: c.pid,
                    base: base.clone(),
                    cgroup: c.cgroup.clone(),
                    bundle: c.bundle.clone(),
                },
                (None, None) => return Err(Error::Internal("nothing to exec into".into())),
            };
            let lifecycle = c.lifecycle.clone();
            let e = exec_of(&mut c.execs, id, exec_id)?;
            if e.status != Status::Created || e.reported_tx.is_none() {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id} cannot be started: it is {}",
                    e.status.name()
                )));
            }
            Ok((
                target,
                e.spec.clone(),
                e.stdio.clone(),
                e.exit_tx.clone(),
                e.reported_tx.take(),
                lifecycle,
            ))
        })?;
        let started = match target {
            Target::Native(native) => native
                .exec(&self.exits, exec_id, &process, &stdio)
                .await
                .map(|e| (e.pid, e.exit, e.stdin_relay, None, e.console)),
            Target::Wasm {
                init,
                base,
                cgroup,
                bundle,
            } => self
                .start_wasm_exec(id, exec_id, init, &base, cgroup, &process, &stdio, &bundle)
                .await
                .map(|w| (w.pid, w.exit, None, Some(w.guest), None)),
        };
        let (pid, exit, writer, guest, console) = match started {
            Ok(started) => started,
            Err(err) => {
                // A start that failed is an exec that ended: Wait returns, Delete works.
                exit_tx.send_replace(Some(Exit {
                    status: 255,
                    at: std::time::SystemTime::now(),
                }));
                if let Some(reported) = reported_tx {
                    reported.send_replace(true);
                }
                return Err(err);
            }
        };
        let pidfd = container::pidfd_open(pid).map(Arc::new);
        self.with(id, |c| {
            if let Some(e) = c.execs.get_mut(exec_id) {
                e.pid = pid;
                e.pidfd = pidfd;
                e.status = Status::Running;
                e.stdin_relay = writer;
                e.guest = guest;
                e.console = console;
            }
            Ok(())
        })?;
        info!(exec_id, pid, "exec started");
        let event = TaskExecStarted {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            pid: pid as u32,
            ..Default::default()
        };
        self.events
            .publish(TASK_EXEC_STARTED_EVENT_TOPIC, event)
            .await;
        // Forward the exit, then tell containerd (under the container's event order).
        let events = self.events.clone();
        let (id, exec_id) = (id.to_string(), exec_id.to_string());
        tokio::spawn(async move {
            let Some(exit) = exits::wait(exit).await else {
                return;
            };
            exit_tx.send_replace(Some(exit));
            let _order = lifecycle.lock().await;
            info!(id, exec_id, status = exit.status, "exec exited");
            let event = TaskExit {
                container_id: id,
                id: exec_id,
                pid: pid as u32,
                exit_status: exit.status,
                exited_at: Some(timestamp(exit.at)).into(),
                ..Default::default()
            };
            events.publish(TASK_EXIT_EVENT_TOPIC, event).await;
            if let Some(reported) = reported_tx {
                reported.send_replace(true);
            }
        });
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    pub(super) fn kill_exec(&self, id: &str, exec_id: &str, signal: u32) -> Result<()> {
        let pidfd = self.with(id, |c| {
            let e = exec_of(&mut c.execs, id, exec_id)?;
            if !e.refresh().can_kill() {
                return Err(Error::NotFound(format!(
                    "exec {exec_id}: process already finished"
                )));
            }
            e.pidfd
                .clone()
                .ok_or_else(|| Error::NotFound(format!("exec {exec_id}: process already finished")))
        })?;
        container::send_signal(&pidfd, signal as i32)
    }

    pub(super) async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<Exit> {
        let exit = self.with(id, |c| Ok(exec_of(&mut c.execs, id, exec_id)?.exit.clone()))?;
        exits::wait(exit)
            .await
            .ok_or_else(|| Error::Internal("exit status lost".into()))
    }

    pub(super) async fn delete_exec(&self, id: &str, exec_id: &str) -> Result<DeleteResponse> {
        let mut reported = self.with(id, |c| {
            let e = exec_of(&mut c.execs, id, exec_id)?;
            if matches!(e.refresh(), Status::Running | Status::Paused) {
                return Err(Error::FailedPrecondition(format!(
                    "exec {exec_id} is running: kill it before deleting it"
                )));
            }
            Ok(e.exit_reported.clone())
        })?;
        // Its TaskExit first (an exec never started has none).
        let _ = reported.wait_for(|done| *done).await;
        let e = self.with(id, |c| {
            c.execs
                .remove(exec_id)
                .ok_or_else(|| Error::NotFound(format!("exec {exec_id}")))
        })?;
        let exit = (*e.exit.borrow()).unwrap_or(Exit {
            status: 255,
            at: std::time::SystemTime::now(),
        });
        Ok(DeleteResponse {
            pid: e.pid as u32,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    pub(super) fn state_exec(&self, id: &str, exec_id: &str) -> Result<StateResponse> {
        self.with(id, |c| {
            let bundle = c.bundle.to_string_lossy().into_owned();
            let e = exec_of(&mut c.execs, id, exec_id)?;
            let status = e.refresh();
            let mut resp = StateResponse {
                id: id.to_string(),
                exec_id: exec_id.to_string(),
                bundle,
                pid: e.pid as u32,
                stdin: e.stdio.stdin.clone(),
                stdout: e.stdio.stdout.clone(),
                stderr: e.stdio.stderr.clone(),
                terminal: e.spec.terminal().unwrap_or(false),
                ..Default::default()
            };
            resp.set_status(super::api_status(status));
            if let Some(exit) = status.exit() {
                resp.exit_status = exit.status;
                resp.exited_at = Some(timestamp(exit.at)).into();
            }
            Ok(resp)
        })
    }

    /// ResizePty of an exec with a terminal.
    pub(super) fn resize_exec(
        &self,
        id: &str,
        exec_id: &str,
        width: u32,
        height: u32,
    ) -> Result<()> {
        let console = self.with(id, |c| {
            exec_of(&mut c.execs, id, exec_id)?
                .console
                .clone()
                .ok_or_else(|| Error::FailedPrecondition(format!("exec {exec_id} has no terminal")))
        })?;
        crate::native::console::resize(&console, width, height)
    }

    pub(super) fn close_exec_stdin(&self, id: &str, exec_id: &str) -> Result<()> {
        self.with(id, |c| {
            exec_of(&mut c.execs, id, exec_id)?.stdin_relay = None;
            Ok(())
        })
    }
}

fn exec_of<'a>(
    execs: &'a mut std::collections::HashMap<String, ExecProcess>,
    id: &str,
    exec_id: &str,
) -> Result<&'a mut ExecProcess> {
    execs
        .get_mut(exec_id)
        .ok_or_else(|| Error::NotFound(format!("exec {exec_id} of container {id}")))
}
