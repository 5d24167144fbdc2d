//! The Task service: containerd's view of the containers this shim runs.

use crate::bundle::Bundle;
use crate::container::{self, Container, PID_FILE, StdioPaths};
use crate::error::{Error, Result};
use crate::events::Events;
use crate::exits::{self, Exits};
use crate::guest::{GuestProcess, Launch, Ready};
use crate::state::{Exit, Status};
use crate::{stats, stdio};
use containerd_shim::api::*;
use containerd_shim::asynchronous::util::mount_rootfs;
use containerd_shim::protos::events::task::{TaskCreate, TaskDelete, TaskExit, TaskStart};
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics::*;
use containerd_shim::protos::types::task::ProcessInfo;
use containerd_shim::{ExitSignal, TtrpcContext, TtrpcResult};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;
use tracing::{debug, info, instrument};

pub struct TaskService {
    containers: Arc<Mutex<HashMap<String, Container>>>,
    exits: Arc<Exits>,
    events: Events,
    exit_signal: Arc<ExitSignal>,
}

impl TaskService {
    pub fn new(exits: Arc<Exits>, events: Events, exit_signal: Arc<ExitSignal>) -> Self {
        TaskService {
            containers: Arc::default(),
            exits,
            events,
            exit_signal,
        }
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

    async fn do_create(&self, req: &CreateTaskRequest) -> Result<i32> {
        if self.containers().contains_key(&req.id) {
            return Err(Error::AlreadyExists(req.id.clone()));
        }
        if req.terminal {
            return Err(Error::Unimplemented(
                "a terminal (ctr run -t, tty: true)".into(),
            ));
        }
        let bundle_path = PathBuf::from(&req.bundle);
        let bundle = Bundle::load(&bundle_path)?;
        let mut mounted = None;
        for m in &req.rootfs {
            if let Err(e) = mount_rootfs(m, &bundle.rootfs).await {
                if mounted.is_some() {
                    let _ = container::unmount_rootfs(&bundle.rootfs).await;
                }
                return Err(Error::Internal(format!(
                    "mount rootfs {}: {e}",
                    bundle.rootfs.display()
                )));
            }
            mounted = Some(bundle.rootfs.clone());
        }
        match self.spawn_guest(req, &bundle).await {
            Ok((guest, exit)) => {
                let pid = guest.pid;
                let pidfd = container::pidfd_open(pid).map(Arc::new);
                let container = Container {
                    id: req.id.clone(),
                    bundle: bundle_path,
                    mounted_rootfs: mounted,
                    pid,
                    pidfd,
                    status: Status::Created,
                    stdio: StdioPaths {
                        stdin: req.stdin.clone(),
                        stdout: req.stdout.clone(),
                        stderr: req.stderr.clone(),
                    },
                    guest: Some(guest),
                    exit: exit.clone(),
                    lifecycle: Arc::default(),
                };
                let lifecycle = container.lifecycle.clone();
                self.containers().insert(req.id.clone(), container);
                self.watch_exit(req.id.clone(), pid, exit, lifecycle);
                Ok(pid)
            }
            Err(err) => {
                if let Some(rootfs) = &mounted {
                    let _ = container::unmount_rootfs(rootfs).await;
                }
                let _ = std::fs::remove_file(bundle.path.join(PID_FILE));
                Err(err)
            }
        }
    }

    /// Spawns the guest and waits until its program is prepared. On failure the guest is gone.
    async fn spawn_guest(
        &self,
        req: &CreateTaskRequest,
        bundle: &Bundle,
    ) -> Result<(GuestProcess, tokio::sync::watch::Receiver<Option<Exit>>)> {
        let stdout = stdio::open_output("stdout", &req.stdout)?;
        let stderr = stdio::open_output("stderr", &req.stderr)?;
        let launch = Launch {
            spec: bundle.guest.clone(),
            cache_dir: cache_dir(&bundle.path),
            stdin: stdio::stdin_path(&req.stdin)?,
        };
        let mut guest = GuestProcess::spawn(&req.id, stdout, stderr).await?;
        let exit = self.exits.watch(guest.pid);
        let _ = std::fs::write(bundle.path.join(PID_FILE), guest.pid.to_string());
        let failure = match guest.prepare(&launch).await {
            Ok(Ready::Prepared { path, kind, cache }) => {
                debug!(pid = guest.pid, path, kind, cache, "program prepared");
                return Ok((guest, exit));
            }
            Ok(Ready::Failed { kind, message }) => Error::Guest {
                kind: kind.into(),
                message,
            },
            Err(err) => err,
        };
        if let Some(pidfd) = container::pidfd_open(guest.pid) {
            let _ = container::send_signal(&pidfd, libc::SIGKILL);
        }
        drop(guest);
        exits::wait(exit).await;
        Err(failure)
    }

    /// Records the guest's exit in the container and tells containerd, once.
    fn watch_exit(
        &self,
        id: String,
        pid: i32,
        exit: tokio::sync::watch::Receiver<Option<Exit>>,
        lifecycle: Arc<tokio::sync::Mutex<()>>,
    ) {
        let containers = self.containers.clone();
        let events = self.events.clone();
        tokio::spawn(async move {
            let Some(exit) = exits::wait(exit).await else {
                return;
            };
            let _order = lifecycle.lock().await;
            if let Some(c) = containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_mut(&id)
            {
                c.status = c.status.stopped(exit);
                c.guest = None;
            }
            info!(id, pid, status = exit.status, "guest exited");
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
        });
    }

    async fn do_delete(&self, id: &str) -> Result<DeleteResponse> {
        let (status, pidfd, exit) = self.with(id, |c| {
            let status = c.refresh();
            if !status.can_delete() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is running: kill it before deleting it"
                )));
            }
            c.guest = None;
            Ok((status, c.pidfd.clone(), c.exit.clone()))
        })?;
        if status == Status::Created
            && let Some(pidfd) = &pidfd
        {
            container::send_signal(pidfd, libc::SIGKILL)?;
        }
        let exit = exits::wait(exit).await;
        let Some(c) = self.containers().remove(id) else {
            return Err(Error::NotFound(id.to_string()));
        };
        if let Some(rootfs) = &c.mounted_rootfs {
            container::unmount_rootfs(rootfs).await?;
        }
        let _ = std::fs::remove_file(c.bundle.join(PID_FILE));
        let exit = exit.unwrap_or(Exit {
            status: 255,
            at: SystemTime::now(),
        });
        self.events
            .publish(
                TASK_DELETE_EVENT_TOPIC,
                TaskDelete {
                    container_id: id.to_string(),
                    id: id.to_string(),
                    pid: c.pid as u32,
                    exit_status: exit.status,
                    exited_at: Some(timestamp(exit.at)).into(),
                    ..Default::default()
                },
            )
            .await;
        Ok(DeleteResponse {
            pid: c.pid as u32,
            exit_status: exit.status,
            exited_at: Some(timestamp(exit.at)).into(),
            ..Default::default()
        })
    }
}

/// The node's compile cache: `<containerd state dir>/io.containerd.wasmtime.v1/cache`, found
/// from the bundle path `<state>/io.containerd.runtime.v2.task/<namespace>/<id>`.
/// `WASMTIME_SHIM_CACHE_DIR` in containerd's environment overrides it.
fn cache_dir(bundle: &Path) -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("WASMTIME_SHIM_CACHE_DIR") {
        return (!dir.is_empty()).then(|| PathBuf::from(dir));
    }
    let task_root = bundle.parent()?.parent()?;
    task_root
        .file_name()?
        .to_str()?
        .starts_with("io.containerd.runtime.")
        .then(|| {
            task_root
                .parent()
                .map(|state| state.join(crate::RUNTIME_ID).join("cache"))
        })?
}

fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
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
        let pid = self.do_create(&req).await?;
        info!(pid, "created");
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
        info!(pid, "started");
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
        let resp = self.do_delete(&req.id).await?;
        info!(status = resp.exit_status, "deleted");
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
