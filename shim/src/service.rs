//! The shim process: containerd's `start` and `delete` actions and the server's lifetime.

use crate::bundle::Bundle;
use crate::container;
use crate::events::Events;
use crate::exits::Exits;
use crate::task::TaskService;
use containerd_shim::asynchronous::util::write_str_to_file;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub struct Service {
    namespace: String,
    /// containerd's gRPC socket.
    address: String,
    /// The container whose Create started this shim.
    id: String,
    /// The ttrpc socket this shim serves (`unix://...`), removed when it exits.
    socket: String,
    bundle: PathBuf,
    exit_signal: Arc<ExitSignal>,
}

/// The shim crate's settings: our own `tracing` logger instead of its `log` one; its reaper
/// and subreaper stay on, as guests are our children.
pub fn config() -> Config {
    Config {
        no_setup_logger: true,
        ..Default::default()
    }
}

#[async_trait::async_trait]
impl containerd_shim::asynchronous::Shim for Service {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            crate::logging::init(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        Service {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            socket: args.socket.clone(),
            bundle,
            exit_signal: Arc::default(),
        }
    }

    /// Containers of one pod (same `io.kubernetes.cri.sandbox-id`) share one shim: if the pod's
    /// shim already listens, its address is returned without starting a process.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let group = Bundle::load(Path::new("."))
            .map(|b| b.group_id(&opts.id))
            .unwrap_or_else(|_| opts.id.clone());
        let address = containerd_shim::socket_address(&opts.address, &opts.namespace, &group);
        if let Some(path) = address.strip_prefix("unix://")
            && std::os::unix::net::UnixStream::connect(path).is_ok()
        {
            write_str_to_file("address", &address).await?;
            return Ok(address);
        }
        tokio::task::spawn_blocking(crate::options::filter_stdin)
            .await
            .map_err(|e| containerd_shim::Error::Other(format!("read runtime options: {e}")))?
            .map_err(|e| containerd_shim::Error::Other(format!("read runtime options: {e}")))?;
        let address = containerd_shim::asynchronous::spawn(opts, &group, Vec::new()).await?;
        // containerd reads it back from the bundle when it restarts and reconnects.
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// Cleans up after a shim that died: kills a leftover guest, unmounts the rootfs.
    async fn delete_shim(&mut self) -> containerd_shim::Result<DeleteResponse> {
        let pid = container::kill_leftover_guest(&self.bundle).unwrap_or(0);
        // A native container's processes and cgroup, through runc.
        crate::native::runc::remove_leftover(&self.bundle);
        let bundle = Bundle::load(&self.bundle).ok();
        if let Some(path) = bundle.as_ref().and_then(|b| b.cgroups_path.clone()) {
            let removed =
                tokio::task::spawn_blocking(move || crate::cgroup::Cgroup::remove_leftover(&path))
                    .await;
            if let Ok(Err(err)) = removed {
                eprintln!("delete: {}", err.chain());
            }
        }
        let rootfs = bundle
            .map(|b| b.rootfs)
            .unwrap_or_else(|| self.bundle.join("rootfs"));
        if let Err(err) = container::unmount_rootfs(&rootfs).await {
            eprintln!("delete: {}", err.chain());
        }
        let _ = std::fs::remove_file(self.bundle.join(container::PID_FILE));
        // The dead shim's socket, unless another shim of the pod serves on it.
        if let Ok(address) = std::fs::read_to_string(self.bundle.join("address"))
            && let Some(path) = address.trim().strip_prefix("unix://")
            && std::os::unix::net::UnixStream::connect(path).is_err()
        {
            let _ = std::fs::remove_file(path);
        }
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let mut exited_at =
            containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp::new();
        exited_at.seconds = now.as_secs() as i64;
        exited_at.nanos = now.subsec_nanos() as i32;
        Ok(DeleteResponse {
            pid: pid as u32,
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: Some(exited_at).into(),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit_signal.wait().await;
        let uptime = crate::STARTED
            .get()
            .map(|t| t.elapsed())
            .unwrap_or_default();
        tracing::info!(uptime_us = uptime.as_micros() as u64, "shim exiting");
        // The shim crate removes the socket named in the first container's bundle, which
        // containerd may already have deleted when containers of one pod outlive each other.
        if let Some(path) = self.socket.strip_prefix("unix://") {
            let _ = std::fs::remove_file(path);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        let exits = match Exits::start().await {
            Ok(exits) => exits,
            Err(err) => {
                tracing::error!("cannot subscribe to child exits: {err}");
                std::process::exit(1);
            }
        };
        TaskService::new(
            exits,
            Events::new(publisher, &self.namespace),
            self.exit_signal.clone(),
            &self.id,
            (self.address.clone(), self.namespace.clone()),
        )
    }
}
