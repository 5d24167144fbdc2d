//! The guest process: one per container, forked from the shim's zygote, that runs one program.
//!
//! The shim never runs Wasm itself. Its zygote ([`zygote`]) forks each guest with:
//!
//! - the shim's end of a socketpair, the control channel;
//! - wasmtime's engine and WASI linkers already built, inherited from the zygote;
//! - `/dev/null` on fds 0, 1 and 2, no environment but for the shim's pid.
//!
//! At Create, the shim sends the container's stdout and stderr (with `SCM_RIGHTS`) and a
//! [`Launch`] (one JSON line); the guest resolves, compiles (or loads from the node cache) and
//! links the program, then answers a [`Ready`] line and waits. Start writes `start\n`; the guest
//! runs the program and exits with its status; a guest that died of memory exhaustion inside
//! wasmtime says so first ([`OUT_OF_MEMORY`]). The shim reaps it and reads the status. A guest
//! whose control channel closes before Start exits at once, and every guest is killed by the
//! kernel if the shim dies (`PR_SET_PDEATHSIG`).

pub mod child;
mod fork;
pub mod zygote;

use crate::confine::{Confinement, PidNamespace};
use crate::error::{Error, Result};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use wasmtime_shim_runtime::{ErrorKind, GuestSpec};

/// Marks a guest process in its command line (`containerd-shim-wasmtime-v1 --wasmtime-guest <id>`).
pub const GUEST_ARG: &str = "--wasmtime-guest";
/// What a guest writes on its control channel, after Start, when it dies because its memory
/// budget refused it more memory.
pub const OUT_OF_MEMORY: &[u8] = b"oom\n";
/// What the shim writes on a running guest's control channel, followed by a byte count or
/// `none`, when an Update changed the container's memory limit.
pub const MEMORY_LIMIT: &str = "memory-limit ";
/// Environment variable carrying the shim's pid to the guest.
const PARENT_ENV: &str = "WASMTIME_SHIM_PARENT";

/// What the shim asks a guest to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Launch {
    pub spec: GuestSpec,
    /// The node's compile cache, `None` to compile in memory.
    pub cache_dir: Option<PathBuf>,
    /// The compile cache's size bound in bytes.
    pub cache_limit: u64,
    /// Where to find the container's image, for programs shipped as Wasm layers.
    pub image: Option<crate::image::ImageSource>,
    /// The stdin FIFO, opened by the guest when a writer appears.
    pub stdin: Option<PathBuf>,
    /// Applied by the guest to itself before it opens the program's WASI capabilities.
    pub confinement: Confinement,
    /// Run the built-in pause process instead of a program (a pod's sandbox container).
    pub pause: bool,
    /// An exec into a running container: the mount namespace (of its first guest) to join
    /// once the program is loaded from the host's view of the container's root
    /// (`spec.rootfs`, `/proc/<pid>/root`); the other namespaces are joined as `confinement`
    /// says, and nothing is mounted.
    #[serde(default)]
    pub join_mount_ns: Option<PathBuf>,
}

/// The guest's answer once its program is prepared.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ready {
    Prepared {
        path: String,
        kind: String,
        cache: String,
        /// Microseconds spent confining itself (namespaces, mounts, pivot_root, privileges)
        /// and loading the program.
        #[serde(default)]
        confine_us: u64,
        #[serde(default)]
        load_us: u64,
    },
    Failed {
        kind: WireErrorKind,
        message: String,
    },
}

/// [`ErrorKind`] as it crosses the process boundary.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum WireErrorKind {
    NotFound,
    InvalidArgument,
    Unimplemented,
    Internal,
}

impl From<ErrorKind> for WireErrorKind {
    fn from(kind: ErrorKind) -> Self {
        match kind {
            ErrorKind::NotFound => WireErrorKind::NotFound,
            ErrorKind::InvalidArgument => WireErrorKind::InvalidArgument,
            ErrorKind::Unimplemented => WireErrorKind::Unimplemented,
            ErrorKind::Internal => WireErrorKind::Internal,
        }
    }
}

impl From<WireErrorKind> for ErrorKind {
    fn from(kind: WireErrorKind) -> Self {
        match kind {
            WireErrorKind::NotFound => ErrorKind::NotFound,
            WireErrorKind::InvalidArgument => ErrorKind::InvalidArgument,
            WireErrorKind::Unimplemented => ErrorKind::Unimplemented,
            WireErrorKind::Internal => ErrorKind::Internal,
        }
    }
}

/// A spawned guest process and the shim's end of its control channel.
pub struct GuestProcess {
    pub pid: i32,
    /// Whether it was born in the cgroup it was spawned for (the kernel may not support it).
    pub born_in_cgroup: bool,
    control: BufReader<UnixStream>,
}

/// Cleared once the kernel refused to clone into a cgroup: later guests are not even tried.
static CLONE_INTO_CGROUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

impl GuestProcess {
    /// Forks a guest process from the zygote into pid namespace `pid_ns`, born in the cgroup v2
    /// directory `cgroup` if given and the kernel can (Linux 5.7+; see `born_in_cgroup`);
    /// `label` (the container id) shows in its command line.
    pub async fn spawn(
        label: &str,
        pid_ns: PidNamespace,
        cgroup: Option<OwnedFd>,
    ) -> Result<GuestProcess> {
        use std::sync::atomic::Ordering::Relaxed;
        if let PidNamespace::Join(path) = &pid_ns {
            // Checked here: the zygote failing to open it would look like a broken zygote.
            std::fs::metadata(path)
                .map_err(Error::io(format!("open pid namespace {}", path.display())))?;
        }
        let cgroup = cgroup.filter(|_| CLONE_INTO_CGROUP.load(Relaxed));
        let born_in_cgroup = cgroup.is_some();
        let request = Request::Fork(label.to_string(), pid_ns.clone(), cgroup);
        let (pid, ours, born_in_cgroup) = match spawner_request(request).await {
            Err(Error::Io { source, .. })
                if born_in_cgroup && source.raw_os_error() == Some(libc::ENOSYS) =>
            {
                tracing::info!(
                    "the kernel cannot clone into a cgroup: guests are moved into theirs"
                );
                CLONE_INTO_CGROUP.store(false, Relaxed);
                let request = Request::Fork(label.to_string(), pid_ns, None);
                let (pid, ours) = forked(spawner_request(request).await?)?;
                (pid, ours, false)
            }
            answer => {
                let (pid, ours) = forked(answer?)?;
                (pid, ours, born_in_cgroup)
            }
        };
        ours.set_nonblocking(true)
            .map_err(Error::io("set up control socket"))?;
        let control = UnixStream::from_std(ours).map_err(Error::io("set up control socket"))?;
        Ok(GuestProcess {
            pid,
            born_in_cgroup,
            control: BufReader::new(control),
        })
    }

    /// Starts the zygote ahead of the first Create, so it is warm by then.
    pub fn warm_up() {
        tokio::spawn(async move {
            if let Err(err) = spawner_request(Request::WarmUp).await {
                tracing::warn!("cannot start the zygote: {}", err.chain());
            }
        });
    }

    /// Ends the zygote: this shim will fork no other guest (it serves one container, not a
    /// pod), and an idle node should not keep a zygote per container.
    pub fn retire_zygote() {
        tokio::spawn(async move {
            let _ = spawner_request(Request::Retire).await;
        });
    }

    /// Hands over the container's stdout and stderr and the launch request, and waits until the
    /// program is prepared or refused.
    pub async fn prepare(&mut self, launch: &Launch, stdout: File, stderr: File) -> Result<Ready> {
        send_fds(
            self.control.get_ref(),
            &[stdout.as_raw_fd(), stderr.as_raw_fd()],
        )
        .map_err(Error::io("pass stdio to the guest process"))?;
        drop((stdout, stderr));
        let mut line = serde_json::to_vec(launch)
            .map_err(|e| Error::Internal(format!("encode launch request: {e}")))?;
        line.push(b'\n');
        self.control
            .get_mut()
            .write_all(&line)
            .await
            .map_err(Error::io("send launch request to the guest process"))?;
        let mut answer = String::new();
        let n = self
            .control
            .read_line(&mut answer)
            .await
            .map_err(Error::io("read the guest process's answer"))?;
        if n == 0 {
            return Err(Error::Internal(
                "the guest process exited while preparing the program".into(),
            ));
        }
        serde_json::from_str(&answer)
            .map_err(|e| Error::Internal(format!("bad answer from the guest process: {e}")))
    }

    /// Whether the guest, now gone, reported that it ran out of memory. Reads what is left on
    /// the control channel; the guest's end is closed, so this ends at once.
    pub async fn ran_out_of_memory(mut self) -> bool {
        let mut rest = Vec::new();
        let read = tokio::io::AsyncReadExt::read_to_end(&mut self.control, &mut rest);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(200), read).await;
        rest.windows(OUT_OF_MEMORY.len())
            .any(|w| w == OUT_OF_MEMORY)
    }

    /// Tells the running guest its new memory budget (`None`: unlimited).
    pub async fn set_memory_limit(&mut self, budget: Option<u64>) -> Result<()> {
        let value = budget.map_or("none".to_string(), |b| b.to_string());
        self.control
            .get_mut()
            .write_all(format!("{MEMORY_LIMIT}{value}\n").as_bytes())
            .await
            .map_err(Error::io("send the new memory limit to the guest process"))
    }

    /// Lets the prepared program run.
    pub async fn start(&mut self) -> Result<()> {
        self.control
            .get_mut()
            .write_all(b"start\n")
            .await
            .map_err(Error::io("start the guest process"))
    }
}

fn forked(
    answer: Option<(i32, std::os::unix::net::UnixStream)>,
) -> Result<(i32, std::os::unix::net::UnixStream)> {
    answer.ok_or_else(|| Error::Internal("the guest spawner forked nothing".into()))
}

/// Sends one byte carrying `fds`. The socket buffer of a fresh control channel is empty, so this
/// never blocks.
fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    let rights = [ControlMessage::ScmRights(fds)];
    let iov = [std::io::IoSlice::new(b"F")];
    loop {
        match sendmsg::<()>(stream.as_raw_fd(), &iov, &rights, MsgFlags::empty(), None) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What the spawner thread is asked to do.
enum Request {
    /// Fork a guest with this label in this pid namespace, born in this cgroup.
    Fork(String, PidNamespace, Option<OwnedFd>),
    /// Only make sure the zygote runs.
    WarmUp,
    /// Let the zygote go: no other guest will be forked (a shim of one container).
    Retire,
}

type SpawnRequest = (
    Request,
    oneshot::Sender<Result<Option<(i32, std::os::unix::net::UnixStream)>>>,
);

/// Label of the zygote: the id of the container that started this shim.
static ZYGOTE_LABEL: OnceLock<String> = OnceLock::new();

/// A zygote forked by `main` at startup, for the spawner thread to take over.
static FIRST_ZYGOTE: std::sync::Mutex<Option<zygote::Zygote>> = std::sync::Mutex::new(None);

/// Sets the zygote's label; call once, before the first guest.
pub fn set_zygote_label(label: &str) {
    let _ = ZYGOTE_LABEL.set(label.to_string());
}

/// Forks the first zygote. Call first thing in the shim's `main`, while it has one thread.
pub fn fork_zygote_at_startup(label: &str) {
    let zygote = zygote::fork_at_startup(label);
    *FIRST_ZYGOTE.lock().unwrap_or_else(|e| e.into_inner()) = zygote;
}

/// Runs `request` on the one thread that owns the zygote. That thread lives as long as the
/// shim: `PR_SET_PDEATHSIG` fires when the *thread* that created a child exits, so the zygote
/// (and the guests it forks, whose parent is the same thread) must not be started from runtime
/// worker threads that come and go.
async fn spawner_request(
    request: Request,
) -> Result<Option<(i32, std::os::unix::net::UnixStream)>> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("guest-spawner".into())
                .spawn(move || spawner(rx))
                .map(|_| ())
                .unwrap_or_else(|e| tracing::error!("cannot start the guest spawner thread: {e}"));
            std::sync::Mutex::new(tx)
        })
        .lock()
        .map_err(|_| Error::Internal("guest spawner lock poisoned".into()))?
        .clone();
    let (reply, answer) = oneshot::channel();
    sender
        .send((request, reply))
        .map_err(|_| Error::Internal("the guest spawner thread is gone".into()))?;
    answer
        .await
        .map_err(|_| Error::Internal("the guest spawner thread is gone".into()))?
}

/// The spawner thread: keeps one zygote, starts another when it is gone.
fn spawner(requests: mpsc::Receiver<SpawnRequest>) {
    let mut zygote = FIRST_ZYGOTE
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .take();
    for (request, reply) in requests {
        if let Request::Retire = request {
            if let Some(z) = zygote.take() {
                tracing::debug!(pid = z.pid(), "zygote retired");
            }
            let _ = reply.send(Ok(None));
            continue;
        }
        let mut result = Err(Error::Internal("no zygote".into()));
        // A zygote that died since the last request fails the first attempt: start another.
        for _attempt in 0..2 {
            let current = match zygote.take() {
                Some(z) => z,
                None => {
                    let name = ZYGOTE_LABEL.get().map_or("shim", String::as_str);
                    match zygote::Zygote::start(name) {
                        Ok(z) => {
                            tracing::debug!(pid = z.pid(), "zygote started");
                            z
                        }
                        Err(err) => {
                            result = Err(err);
                            break;
                        }
                    }
                }
            };
            let Request::Fork(label, pid_ns, cgroup) = &request else {
                zygote = Some(current);
                result = Ok(None);
                break;
            };
            match current.fork(label, pid_ns, cgroup.as_ref().map(|fd| fd.as_fd())) {
                Ok(forked) => {
                    zygote = Some(current);
                    result = Ok(Some(forked));
                    break;
                }
                // The kernel cannot clone into a cgroup; the zygote is fine.
                Err(err) if err.raw_os_error() == Some(libc::ENOSYS) && cgroup.is_some() => {
                    zygote = Some(current);
                    result = Err(Error::io("fork a guest process into its cgroup")(err));
                    break;
                }
                Err(err) => {
                    tracing::warn!(pid = current.pid(), "zygote unusable, replacing it: {err}");
                    result = Err(Error::io("fork a guest process")(err));
                }
            }
        }
        let _ = reply.send(result);
    }
}
