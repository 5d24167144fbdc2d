//! The Task service: containerd's view of the containers this shim runs.

use crate::cgroup::Cgroup;
use crate::container::{self, Container};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exits::{self, Exits};
use crate::state::Status;
use crate::stats;
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskCreate, TaskPaused, TaskResumed, TaskStart};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use oci_spec::runtime::LinuxResources;
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
    /// containerd's gRPC address and this shim's namespace, for guests that read their image.
    containerd: (String, String),
}

impl TaskService {
    /// The service, with the zygote being started for the container that started this shim
    /// (`first_id`), so it is warm when that container's Create arrives.
    pub fn new(
        exits: Arc<Exits>,
        events: Events,
        exit_signal: Arc<ExitSignal>,
        first_id: &str,
        containerd: (String, String),
    ) -> Self {
        let service = TaskService {
            containers: Arc::default(),
            exits,
            events,
            exit_signal,
            containerd,
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

fn lock(cgroup: &Mutex<Cgroup>) -> MutexGuard<'_, Cgroup> {
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
}

impl TaskService {
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
        // Give back what parsing the spec and setting up the guest left free in the heap: a
        // node runs many idle shims.
        // SAFETY: malloc_trim only returns free memory to the kernel.
        unsafe { libc::malloc_trim(0) };
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
        // A frozen guest cannot die: thaw it for SIGKILL, as runc does.
        if req.signal as i32 == libc::SIGKILL
            && let Ok(cgroup) = self.paused_or_resumed(&req.id, false)
        {
            lock(&cgroup).thaw()?;
        }
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
                Status::Paused => containerd_shim::api::Status::PAUSED,
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
        let (pid, status, cgroup) =
            self.with(&req.id, |c| Ok((c.pid, c.refresh(), c.cgroup.clone())))?;
        let mut resp = PidsResponse::new();
        if !status.can_kill() {
            return Ok(resp);
        }
        // The cgroup is the ground truth; the guest is its only process.
        let mut pids = match cgroup {
            Some(cgroup) => lock(&cgroup).pids(),
            None => Vec::new(),
        };
        if !pids.contains(&(pid as u32)) {
            pids.insert(0, pid as u32);
        }
        for pid in pids {
            resp.processes.push(ProcessInfo {
                pid,
                ..Default::default()
            });
        }
        Ok(resp)
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let (pid, status, cgroup) =
            self.with(&req.id, |c| Ok((c.pid, c.refresh(), c.cgroup.clone())))?;
        if !status.can_kill() {
            return Err(Error::NotFound(format!("{}: process already finished", req.id)).into());
        }
        let stats = match cgroup {
            Some(cgroup) => lock(&cgroup).metrics()?,
            None => stats::collect(pid)?,
        };
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

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        let cgroup = self.paused_or_resumed(&req.id, true)?;
        lock(&cgroup).freeze()?;
        self.with(&req.id, |c| {
            if c.refresh() == Status::Running {
                c.status = Status::Paused;
            }
            Ok(())
        })?;
        info!("paused");
        self.events
            .publish(
                TASK_PAUSED_EVENT_TOPIC,
                TaskPaused {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        let cgroup = self.paused_or_resumed(&req.id, false)?;
        lock(&cgroup).thaw()?;
        self.with(&req.id, |c| {
            if c.refresh() == Status::Paused {
                c.status = Status::Running;
            }
            Ok(())
        })?;
        info!("resumed");
        self.events
            .publish(
                TASK_RESUMED_EVENT_TOPIC,
                TaskResumed {
                    container_id: req.id.clone(),
                    ..Default::default()
                },
            )
            .await;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        unimplemented("Checkpoint")
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources = req
            .resources
            .as_ref()
            .map(|any| {
                serde_json::from_slice::<LinuxResources>(&any.value).map_err(|e| {
                    Error::InvalidArgument(format!("update: resources are not valid JSON: {e}"))
                })
            })
            .transpose()?;
        let (status, cgroup) = self.with(&req.id, |c| Ok((c.refresh(), c.cgroup.clone())))?;
        if !status.can_kill() {
            return Err(Error::NotFound(format!("{}: process already finished", req.id)).into());
        }
        let Some(cgroup) = cgroup else {
            return Err(Error::FailedPrecondition(format!(
                "container {} has no cgroup (linux.cgroupsPath) to update",
                req.id
            ))
            .into());
        };
        if let Some(resources) = resources {
            lock(&cgroup).update(&resources)?;
            if resources
                .memory()
                .as_ref()
                .is_some_and(|m| m.limit().is_some())
            {
                self.resize_wasm_memory(&req.id, crate::bundle::wasm_budget(&resources))
                    .await?;
            }
            info!("resources updated");
        }
        Ok(Empty::new())
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
