//! The Task service: containerd's view of the containers this shim runs.

use crate::container::{self, Container};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exits::{self, Exits};
use crate::state::Status;
use crate::stats;
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskCreate, TaskStart};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tracing::{debug, info, instrument};

mod lifecycle;
use lifecycle::timestamp;

pub struct TaskService {
    containers: Arc<Mutex<HashMap<String, Container>>>,
    exits: Arc<Exits>,
    events: Events,
    exit_signal: Arc<ExitSignal>,
}

impl TaskService {
    /// The service, with the zygote being started for the container that started this shim
    /// (`first_id`), so it is warm when that container's Create arrives.
    pub fn new(
        exits: Arc<Exits>,
        events: Events,
        exit_signal: Arc<ExitSignal>,
        first_id: &str,
    ) -> Self {
        let service = TaskService {
            containers: Arc::default(),
            exits,
            events,
            exit_signal,
        };
        crate::guest::set_zygote_label(first_id);
        crate::guest::GuestProcess::warm_up();
        service
    }

    fn containers(&self) -> MutexGuard<'_, HashMap<String, Container>> {
        self.containers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads a field of container `id` under the lock.
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut containers = self.containers();
        let c = containers
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        f(c)
    }
}

fn unimplemented<T>(operation: &str) -> TtrpcResult<T> {
    Err(Error::Unimplemented(operation.to_string()).into())
}

#[async_trait::async_trait]
impl Task for TaskService {
    #[instrument(skip_all, fields(id = %req.id))]
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> TtrpcResult<CreateTaskResponse> {
        let began = Instant::now();
        let pid = self.do_create(&req).await?;
        info!(pid, took_us = began.elapsed().as_micros(), "created");
        self.events
            .publish(
                TASK_CREATE_EVENT_TOPIC,
                TaskCreate {
                    container_id: req.id.clone(),
                    bundle: req.bundle.clone(),
                    rootfs: req.rootfs.clone(),
                    io: Some(containerd_shim::protos::events::task::TaskIO {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                        terminal: req.terminal,
                        ..Default::default()
                    })
                    .into(),
                    pid: pid as u32,
                    ..Default::default()
                },
            )
            .await;
        Ok(CreateTaskResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        if !req.exec_id.is_empty() {
            return unimplemented("Exec (starting an exec process)");
        }
        let began = Instant::now();
        let lifecycle = self.with(&req.id, |c| Ok(c.lifecycle.clone()))?;
        let _order = lifecycle.lock().await;
        let (mut guest, pid) = self.with(&req.id, |c| {
            let status = c.refresh();
            if !status.can_start() {
                return Err(Error::FailedPrecondition(format!(
                    "container {} cannot be started: it is {}",
                    req.id,
                    status.name()
                )));
            }
            let guest = c.guest.take().ok_or_else(|| {
                Error::FailedPrecondition(format!("container {} is already starting", req.id))
            })?;
            Ok((guest, c.pid))
        })?;
        guest.start().await?;
        self.with(&req.id, |c| {
            if c.status == Status::Created {
                c.status = Status::Running;
            }
            // Keep the channel open: the guest exits when it closes before Start only.
            c.guest = Some(guest);
            Ok(())
        })?;
        info!(pid, took_us = began.elapsed().as_micros(), "started");
        self.events
            .publish(
                TASK_START_EVENT_TOPIC,
                TaskStart {
                    container_id: req.id.clone(),
                    pid: pid as u32,
                    ..Default::default()
                },
            )
            .await;
        Ok(StartResponse {
            pid: pid as u32,
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        if !req.exec_id.is_empty() {
            return unimplemented("Exec (deleting an exec process)");
        }
        let began = Instant::now();
        let resp = self.do_delete(&req.id).await?;
        let took_us = began.elapsed().as_micros();
        info!(status = resp.exit_status, took_us, "deleted");
        Ok(resp)
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        if !req.exec_id.is_empty() {
            return unimplemented("Exec (signalling an exec process)");
        }
        let pidfd = self.with(&req.id, |c| {
            let status = c.refresh();
            if !status.can_kill() {
                return Err(Error::NotFound(format!(
                    "{}: process already finished",
                    req.id
                )));
            }
            c.pidfd
                .clone()
                .ok_or_else(|| Error::NotFound(format!("{}: process already finished", req.id)))
        })?;
        debug!(signal = req.signal, all = req.all, "kill");
        container::send_signal(&pidfd, req.signal as i32)?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        if !req.exec_id.is_empty() {
            return unimplemented("Exec (waiting for an exec process)");
        }
        let exit = self.with(&req.id, |c| Ok(c.exit.clone()))?;
        let exit = exits::wait(exit)
            .await
            .ok_or_else(|| Error::Internal("exit status lost".into()))?;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let resp = self.with(&req.id, |c| {
            let status = c.refresh();
            let mut resp = StateResponse {
                id: c.id.clone(),
                bundle: c.bundle.to_string_lossy().into_owned(),
                pid: c.pid as u32,
                stdin: c.stdio.stdin.clone(),
                stdout: c.stdio.stdout.clone(),
                stderr: c.stdio.stderr.clone(),
                ..Default::default()
            };
            resp.set_status(match status {
                Status::Created => containerd_shim::api::Status::CREATED,
                Status::Running => containerd_shim::api::Status::RUNNING,
                Status::Stopped(_) => containerd_shim::api::Status::STOPPED,
            });
            if let Some(exit) = status.exit() {
                resp.exit_status = exit.status;
                resp.exited_at = Some(timestamp(exit.at)).into();
            }
            Ok(resp)
        })?;
        Ok(resp)
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let (pid, status) = self.with(&req.id, |c| Ok((c.pid, c.refresh())))?;
        let mut resp = PidsResponse::new();
        if status.can_kill() {
            resp.processes.push(ProcessInfo {
                pid: pid as u32,
                ..Default::default()
            });
        }
        Ok(resp)
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let (pid, status) = self.with(&req.id, |c| Ok((c.pid, c.refresh())))?;
        if !status.can_kill() {
            return Err(Error::NotFound(format!("{}: process already finished", req.id)).into());
        }
        let stats = stats::collect(pid)?;
        Ok(StatsResponse {
            stats: Some(stats).into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: ConnectRequest,
    ) -> TtrpcResult<ConnectResponse> {
        let task_pid = self.with(&req.id, |c| Ok(c.pid)).unwrap_or(0);
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: task_pid as u32,
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    #[instrument(skip_all)]
    async fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if self.containers().is_empty() {
            info!("no containers left, shutting down");
            self.exit_signal.signal();
        }
        Ok(Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: PauseRequest) -> TtrpcResult<Empty> {
        unimplemented("Pause")
    }

    async fn resume(&self, _ctx: &TtrpcContext, _req: ResumeRequest) -> TtrpcResult<Empty> {
        unimplemented("Resume")
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Checkpoint")
    }

    async fn update(&self, _ctx: &TtrpcContext, _req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        unimplemented("Update")
    }

    async fn exec(&self, _ctx: &TtrpcContext, _req: ExecProcessRequest) -> TtrpcResult<Empty> {
        unimplemented("Exec")
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, _req: ResizePtyRequest) -> TtrpcResult<Empty> {
        unimplemented("ResizePty")
    }

    async fn close_io(&self, _ctx: &TtrpcContext, _req: CloseIORequest) -> TtrpcResult<Empty> {
        unimplemented("CloseIO")
    }
}
