//! Create and delete: the container's life around the guest process.

use super::TaskService;
use crate::bundle::Bundle;
use crate::cgroup::Cgroup;
use crate::container::{self, Container, PID_FILE, StdioPaths};
use crate::error::{Error, Result};
use crate::exits;
use crate::guest::{GuestProcess, Launch, Ready};
use crate::native::{Executor, Native};
use crate::state::{Exit, Status};
use crate::stdio;
use containerd_shim::api::*;
use containerd_shim::asynchronous::util::mount_rootfs;
use containerd_shim::protos::events::task::TaskDelete;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::topics::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::watch;
use tracing::debug;

impl TaskService {
    pub(super) async fn do_create(&self, req: &CreateTaskRequest) -> Result<i32> {
        // Held until the container is in the map (or the Create failed): a second Create of
        // the same id meanwhile gets AlreadyExists.
        let _reservation = self.reserve(&req.id)?;
        let bundle_path = PathBuf::from(&req.bundle);
        let mut bundle = Bundle::load(&bundle_path)?;
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
        let image = self.image_source(&req.id);
        let (probed, image_source) = (crate::native::Choice::of(&bundle), image);
        let chosen = super::blocking("choose the executor", move || {
            crate::native::choose(&probed, image_source.as_ref())
        })
        .await;
        let spawned = match chosen {
            Ok(Executor::Native) => self.spawn_native(req, &bundle).await,
            Ok(Executor::Wasm) => match bundle.wasm_refusal.take() {
                Some(refusal) => Err(refusal),
                None => self
                    .spawn_guest(req, &bundle)
                    .await
                    .map(|(guest, exit, cgroup)| (guest.pid, Process::Guest(guest), exit, cgroup)),
            },
            Err(err) => Err(err),
        };
        match spawned {
            Ok((pid, process, exit, cgroup)) => {
                let guest_spec_for_exec = matches!(process, Process::Guest(_)).then_some(());
                let (guest, native) = match process {
                    Process::Guest(guest) => (Some(guest), None),
                    Process::Native(native) => (None, Some(Arc::new(native))),
                };
                let pidfd = container::pidfd_open(pid).map(Arc::new);
                let (reported_tx, exit_reported) = watch::channel(false);
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
                    guest,
                    native,
                    exit,
                    exit_reported,
                    lifecycle: Arc::default(),
                    cgroup: cgroup.map(|c| Arc::new(std::sync::Mutex::new(c))),
                    execs: Default::default(),
                    exec_base: (guest_spec_for_exec.is_some()).then(|| {
                        Arc::new(container::ExecBase {
                            guest: bundle.guest.clone(),
                            confinement: bundle.confinement.clone(),
                        })
                    }),
                };
                self.admit(container, reported_tx);
                if !bundle.annotations.contains_key(crate::bundle::SANDBOX_ID) {
                    GuestProcess::retire_zygote();
                }
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

    /// Where the container's image is, if the shim knows containerd's address.
    fn image_source(&self, id: &str) -> Option<crate::image::ImageSource> {
        (!self.containerd.0.is_empty()).then(|| crate::image::ImageSource {
            address: self.containerd.0.clone(),
            namespace: self.containerd.1.clone(),
            container: id.to_string(),
        })
    }

    /// Spawns the guest, moves it into its cgroup and waits until it has confined itself and
    /// prepared its program. On failure the guest and its cgroup are gone.
    async fn spawn_guest(
        &self,
        req: &CreateTaskRequest,
        bundle: &Bundle,
    ) -> Result<(GuestProcess, watch::Receiver<Option<Exit>>, Option<Cgroup>)> {
        let stdout = stdio::open_output("stdout", &req.stdout)?;
        let stderr = stdio::open_output("stderr", &req.stderr)?;
        let launch = Launch {
            spec: bundle.guest.clone(),
            cache_dir: cache_dir(&bundle.path),
            cache_limit: cache_limit(),
            image: self.image_source(&req.id),
            stdin: stdio::stdin_path(&req.stdin)?,
            confinement: bundle.confinement.clone(),
            pause: bundle.sandbox,
            join_mount_ns: None,
        };
        // On cgroup v2 with the cgroupfs driver the guest is born in its cgroup (clone3 with
        // CLONE_INTO_CGROUP): created first, limits set, nothing to migrate.
        let created = match &bundle.cgroups_path {
            Some(path) if Cgroup::can_be_born_in(path) && clone_into_cgroup() => {
                let (path, resources) = (path.clone(), bundle.resources.clone());
                let create = move || Cgroup::create_empty(&path, resources.as_ref());
                Some(super::blocking("create the cgroup", create).await?)
            }
            _ => None,
        };
        let (mut created, cgroup_fd) = match created {
            Some((cgroup, fd)) => (Some(cgroup), Some(fd)),
            None => (None, None),
        };
        // Taken before the fork, so an exit of the guest before it is watched is kept for it.
        let ticket = self.exits.begin_spawn();
        let mut guest = match GuestProcess::spawn(&req.id, bundle.pid_ns.clone(), cgroup_fd).await {
            Ok(guest) => guest,
            Err(err) => {
                if let Some(mut cgroup) = created.take() {
                    let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
                }
                return Err(err);
            }
        };
        let exit = self.exits.watch(&ticket, guest.pid);
        drop(ticket);
        let born_in_cgroup = guest.born_in_cgroup;
        let _ = std::fs::write(bundle.path.join(PID_FILE), guest.pid.to_string());
        // Moving a process between cgroups waits for an RCU grace period in the kernel (about
        // 10 ms here), so the guest confines itself and loads its program meanwhile. It runs
        // none of the program before Start, which waits for both. A guest that creates its own
        // cgroup namespace must be in its cgroup first: the namespace is rooted where it is.
        let pid = guest.pid;
        let placing = std::time::Instant::now();
        let timed_place = async {
            let placed = self
                .place_in_cgroup(bundle, pid, created, born_in_cgroup)
                .await;
            (placed, placing.elapsed().as_micros() as u64)
        };
        let ((placed, cgroup_us), prepared) = if bundle.confinement.new_cgroup_namespace() {
            let placed = timed_place.await;
            let prepared = match placed.0 {
                Ok(_) => Some(guest.prepare(&launch, stdout, stderr).await),
                Err(_) => None,
            };
            (placed, prepared)
        } else {
            let (placed, prepared) =
                tokio::join!(timed_place, guest.prepare(&launch, stdout, stderr));
            (placed, Some(prepared))
        };
        let mut cgroup = None;
        let failure = match (placed, prepared) {
            // The guest's own failure says more (and it may have exited before it could be
            // moved into its cgroup).
            (Err(_), Some(Ok(Ready::Failed { kind, message }))) => Error::Guest {
                kind: kind.into(),
                message,
            },
            (Err(err), _) => err,
            (Ok(placed), prepared) => {
                cgroup = placed;
                match prepared {
                    Some(Ok(Ready::Prepared {
                        path,
                        kind,
                        cache,
                        confine_us,
                        load_us,
                    })) => {
                        debug!(
                            pid,
                            path,
                            kind,
                            cache,
                            born_in_cgroup,
                            cgroup_us,
                            confine_us,
                            load_us,
                            "program prepared"
                        );
                        return Ok((guest, exit, cgroup));
                    }
                    Some(Ok(Ready::Failed { kind, message })) => Error::Guest {
                        kind: kind.into(),
                        message,
                    },
                    Some(Err(err)) => err,
                    None => Error::Internal("the guest was not prepared".into()),
                }
            }
        };
        container::kill(guest.pid);
        drop(guest);
        exits::wait(exit).await;
        if let Some(mut cgroup) = cgroup {
            let _ = tokio::task::spawn_blocking(move || cgroup.destroy()).await;
        }
        Err(failure)
    }

    /// Creates the guest's cgroup (if the spec names one) with the spec's resources, and moves
    /// the guest process into it before it does any work. A cgroup `created` before the fork
    /// only needs the guest moved in if it was not `born` there.
    async fn place_in_cgroup(
        &self,
        bundle: &Bundle,
        pid: i32,
        created: Option<Cgroup>,
        born: bool,
    ) -> Result<Option<Cgroup>> {
        if let Some(mut cgroup) = created {
            if born {
                return Ok(Some(cgroup));
            }
            let adopt = move || match cgroup.adopt(pid) {
                Ok(()) => Ok(Some(cgroup)),
                Err(err) => {
                    cgroup.destroy();
                    Err(err)
                }
            };
            return super::blocking("move the guest into its cgroup", adopt).await;
        }
        let Some(path) = bundle.cgroups_path.clone() else {
            return Ok(None);
        };
        let resources = bundle.resources.clone();
        tokio::task::spawn_blocking(move || Cgroup::create(&path, resources.as_ref(), pid))
            .await
            .map_err(|e| Error::Internal(format!("cgroup task failed: {e}")))?
            .map(Some)
    }

    /// Puts `container` in the map and starts watching for its exit; `reported` is the sender
    /// of its `exit_reported`.
    pub(super) fn admit(&self, container: Container, reported: watch::Sender<bool>) {
        let id = container.id.clone();
        let pid = container.pid;
        let exit = container.exit.clone();
        let lifecycle = container.lifecycle.clone();
        let cgroup = container.cgroup.clone();
        self.containers().by_id.insert(id.clone(), container);
        self.watch_exit(id, pid, exit, lifecycle, cgroup, reported);
    }

    pub(super) async fn do_delete(&self, id: &str) -> Result<DeleteResponse> {
        let (status, pidfd, exit, mut reported, lifecycle, native) = self.with(id, |c| {
            let status = c.refresh();
            if !status.can_delete() {
                return Err(Error::FailedPrecondition(format!(
                    "container {id} is running: kill it before deleting it"
                )));
            }
            c.guest = None;
            let reported = c.exit_reported.clone();
            Ok((
                status,
                c.pidfd.clone(),
                c.exit.clone(),
                reported,
                c.lifecycle.clone(),
                c.native.clone(),
            ))
        })?;
        if let Some(native) = &native {
            // Kills a created init; removes the cgroup (or scope) and runc's state.
            native.delete(&self.exits, false).await?;
        } else if status == Status::Created
            && let Some(pidfd) = &pidfd
        {
            container::send_signal(pidfd, libc::SIGKILL)?;
        }
        let exit = exits::wait(exit).await;
        // TaskExit first: wait until the exit watcher has published it (or has ended), then
        // publish TaskDelete under the same lock it publishes under.
        let _ = reported.wait_for(|done| *done).await;
        let _order = lifecycle.lock().await;
        let Some(c) = self.containers().by_id.remove(id) else {
            return Err(Error::NotFound(id.to_string()));
        };
        // A native container's cgroup is runc's, gone with `runc delete`.
        if let Some(cgroup) = c.cgroup.clone().filter(|_| c.native.is_none()) {
            let _ = tokio::task::spawn_blocking(move || {
                cgroup.lock().unwrap_or_else(|e| e.into_inner()).destroy()
            })
            .await;
        }
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

/// The node's compile cache (see [`cache_dir`]), for an exec's guest.
pub(super) fn exec_cache(bundle: &Path) -> (Option<PathBuf>, u64) {
    (cache_dir(bundle), cache_limit())
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

/// The compile cache's size bound: `WASMTIME_SHIM_CACHE_MAX_BYTES` in containerd's
/// environment, else [`wasmtime_shim_runtime::DEFAULT_LIMIT`].
fn cache_limit() -> u64 {
    std::env::var("WASMTIME_SHIM_CACHE_MAX_BYTES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(wasmtime_shim_runtime::DEFAULT_LIMIT)
}

pub(super) fn timestamp(at: SystemTime) -> Timestamp {
    let d = at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Whether guests may be born in their cgroup (`WASMTIME_SHIM_CLONE_INTO_CGROUP=off` in the
/// shim's environment moves them in instead: for comparing the two, as the benchmark does).
fn clone_into_cgroup() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("WASMTIME_SHIM_CLONE_INTO_CGROUP").as_deref() != Ok("off"))
}

/// The process a Create made.
pub(super) enum Process {
    Guest(GuestProcess),
    Native(Native),
}
