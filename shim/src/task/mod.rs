//! The Task service: containerd's view of the containers this shim runs.
//!
//! Handlers run on the shim's one async thread; their blocking steps (cgroup reads and writes,
//! `/proc` reads, which with the systemd driver also talk to systemd over D-Bus) go to tokio's
//! blocking pool, so a slow cgroup of one container does not hold up the others' requests.

use crate::container::{self, Container};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exits::{self, Exits};
use crate::state::Status;
use containerd_shim::api::*;
use containerd_shim::protos::events::task::{TaskCreate, TaskStart};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use oci_spec::runtime::LinuxResources;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;
use tracing::{debug, info, instrument};

mod exec;
mod exit;
mod lifecycle;
mod native;
mod resources;
#[cfg(test)]
mod tests;
mod wasm_exec;
use lifecycle::timestamp;

pub struct TaskService {
    containers: Arc<Mutex<Containers>>,
    exits: Arc<Exits>,
    events: Events,
    exit_signal: Arc<ExitSignal>,
    /// containerd's gRPC address and this shim's namespace, for guests that read their image.
    containerd: (String, String),
}

/// The containers, and the ids of those being created, under one lock: an id is in at most
/// one of the two.
#[derive(Default)]
struct Containers {
    by_id: HashMap<String, Container>,
    creating: HashSet<String>,
}

/// An id reserved for a Create in flight; dropping it frees the id (a Create that succeeded
/// has moved its container into the map by then).
struct Reservation<'a> {
    containers: &'a Mutex<Containers>,
    id: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        lock_containers(self.containers).creating.remove(&self.id);
    }
}

fn lock_containers(containers: &Mutex<Containers>) -> MutexGuard<'_, Containers> {
    containers.lock().unwrap_or_else(|e| e.into_inner())
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
        let service = TaskService::without_zygote(exits, events, exit_signal, containerd);
        crate::guest::set_zygote_label(first_id);
        crate::guest::GuestProcess::warm_up();
        service
    }

    /// The service, without starting the zygote (which `new` does).
    fn without_zygote(
        exits: Arc<Exits>,
        events: Events,
        exit_signal: Arc<ExitSignal>,
        containerd: (String, String),
    ) -> Self {
        TaskService {
            containers: Arc::default(),
            exits,
            events,
            exit_signal,
            containerd,
        }
    }

    fn containers(&self) -> MutexGuard<'_, Containers> {
        lock_containers(&self.containers)
    }

    /// Reserves `id` for a Create, atomically with the check that it is free.
    fn reserve(&self, id: &str) -> Result<Reservation<'_>> {
        let mut containers = self.containers();
        if containers.by_id.contains_key(id) || !containers.creating.insert(id.to_string()) {
            return Err(Error::AlreadyExists(id.to_string()));
        }
        Ok(Reservation {
            containers: &self.containers,
            id: id.to_string(),
        })
    }

    /// Reads a field of container `id` under the lock.
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut containers = self.containers();
        let c = containers
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::NotFound(id.to_string()))?;
        f(c)
    }
}

/// Runs `f` on tokio's blocking pool and waits for it without holding up the async thread.
async fn blocking<T: Send + 'static>(
    what: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("{what}: the blocking task failed: {e}")))?
}

/// A status as the task API names it.
fn api_status(status: Status) -> containerd_shim::api::Status {
    match status {
        Status::Created => containerd_shim::api::Status::CREATED,
        Status::Running => containerd_shim::api::Status::RUNNING,
        Status::Paused => containerd_shim::api::Status::PAUSED,
        Status::Stopped(_) => containerd_shim::api::Status::STOPPED,
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
            return Ok(self.start_exec(&req.id, &req.exec_id).await?);
        }
        let began = Instant::now();
        let (lifecycle, native) =
            self.with(&req.id, |c| Ok((c.lifecycle.clone(), c.native.clone())))?;
        let _order = lifecycle.lock().await;
        if let Some(native) = native {
            return Ok(self.start_native(&req.id, &native, began).await?);
        }
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
            return Ok(self.delete_exec(&req.id, &req.exec_id).await?);
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
            self.kill_exec(&req.id, &req.exec_id, req.signal)?;
            return Ok(Empty::new());
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
        if let Some(native) = self.with(&req.id, |c| Ok(c.native.clone()))? {
            native.kill(&self.exits, req.signal, req.all).await?;
        } else {
            container::send_signal(&pidfd, req.signal as i32)?;
        }
        // A frozen guest cannot die: thaw it for SIGKILL, as runc does.
        if req.signal as i32 == libc::SIGKILL {
            self.thaw_for_kill(&req.id).await?;
        }
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = if req.exec_id.is_empty() {
            let exit = self.with(&req.id, |c| Ok(c.exit.clone()))?;
            exits::wait(exit)
                .await
                .ok_or_else(|| Error::Internal("exit status lost".into()))?
        } else {
            self.wait_exec(&req.id, &req.exec_id).await?
        };
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        if !req.exec_id.is_empty() {
            return Ok(self.state_exec(&req.id, &req.exec_id)?);
        }
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
            resp.set_status(api_status(status));
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
        let mut resp = PidsResponse::new();
        for pid in self.do_pids(&req.id).await? {
            resp.processes.push(ProcessInfo {
                pid,
                ..Default::default()
            });
        }
        Ok(resp)
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let stats = self.do_stats(&req.id).await?;
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
        let idle = {
            let containers = self.containers();
            containers.by_id.is_empty() && containers.creating.is_empty()
        };
        if idle {
            info!("no containers left, shutting down");
            self.exit_signal.signal();
        }
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.do_pause_or_resume(&req.id, true).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.do_pause_or_resume(&req.id, false).await?;
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
        self.do_update(&req.id, resources).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        self.do_exec(&req).await?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id, exec_id = %req.exec_id))]
    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        if req.exec_id.is_empty() {
            return unimplemented("ResizePty of a container's first process (it has no terminal)");
        }
        self.resize_exec(&req.id, &req.exec_id, req.width, req.height)?;
        Ok(Empty::new())
    }

    #[instrument(skip_all, fields(id = %req.id))]
    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if !req.exec_id.is_empty() {
            self.close_exec_stdin(&req.id, &req.exec_id)?;
            return Ok(Empty::new());
        }
        // A guest reads its stdin FIFO until containerd's writer goes: nothing to close. A
        // native process's stdin relay ends here, as at the writer's end.
        if let Some(native) = self.with(&req.id, |c| Ok(c.native.clone()))? {
            native.close_stdin();
        }
        Ok(Empty::new())
    }
}
