//! The guest process: one per container, a re-exec of this binary that runs one program.
//!
//! The shim never runs Wasm itself. It spawns `/proc/self/exe --wasmtime-guest <label>` with:
//!
//! - fd 0: one end of a socketpair, the control channel;
//! - an empty environment but for the shim's pid.
//!
//! A guest is spawned *before* it is needed (when the shim starts, and after each Create of a pod
//! container), so it can pay for its exec and build wasmtime's engine and WASI linkers while
//! containerd is still busy. At Create, the shim sends the container's stdout and stderr (with
//! `SCM_RIGHTS`) and a [`Launch`] (one JSON line); the guest resolves, compiles (or loads from the
//! node cache) and links the program, then answers a [`Ready`] line and waits. Start writes
//! `start\n`; the guest runs the program and exits with its status. The shim reaps it and reads
//! the status. A guest whose control channel closes before Start exits at once, and every guest is
//! killed by the kernel if the shim dies (`PR_SET_PDEATHSIG`).

pub mod child;

use crate::error::{Error, Result};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::oneshot;
use wasmtime_shim_runtime::{ErrorKind, GuestSpec};

/// The argument that makes this binary a guest process instead of a shim.
pub const GUEST_ARG: &str = "--wasmtime-guest";
/// Environment variable carrying the shim's pid to the guest.
const PARENT_ENV: &str = "WASMTIME_SHIM_PARENT";

/// What the shim asks a guest to run.
#[derive(Debug, Serialize, Deserialize)]
pub struct Launch {
    pub spec: GuestSpec,
    /// The node's compile cache, `None` to compile in memory.
    pub cache_dir: Option<PathBuf>,
    /// The stdin FIFO, opened by the guest when a writer appears.
    pub stdin: Option<PathBuf>,
}

/// The guest's answer once its program is prepared.
#[derive(Debug, Serialize, Deserialize)]
pub enum Ready {
    Prepared {
        path: String,
        kind: String,
        cache: String,
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
    control: BufReader<UnixStream>,
}

impl GuestProcess {
    /// Spawns an idle guest process; `label` shows in its command line.
    pub async fn spawn(label: &str) -> Result<GuestProcess> {
        let (ours, theirs) =
            std::os::unix::net::UnixStream::pair().map_err(Error::io("create control socket"))?;
        let mut command = Command::new("/proc/self/exe");
        command
            .arg0("containerd-shim-wasmtime-v1")
            .args([GUEST_ARG, label])
            .env_clear()
            .env(PARENT_ENV, std::process::id().to_string())
            .current_dir("/")
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = spawn_from_long_lived_thread(command).await?;
        let pid = child.id() as i32;
        // The reaper of the shim crate waits for every child; dropping `Child` leaves it be.
        drop(child);
        ours.set_nonblocking(true)
            .map_err(Error::io("set up control socket"))?;
        let control = UnixStream::from_std(ours).map_err(Error::io("set up control socket"))?;
        Ok(GuestProcess {
            pid,
            control: BufReader::new(control),
        })
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

    /// Lets the prepared program run.
    pub async fn start(&mut self) -> Result<()> {
        self.control
            .get_mut()
            .write_all(b"start\n")
            .await
            .map_err(Error::io("start the guest process"))
    }
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

type SpawnRequest = (Command, oneshot::Sender<std::io::Result<Child>>);

/// Spawns `command` from one thread that lives as long as the shim.
///
/// `PR_SET_PDEATHSIG` fires when the *thread* that created the child exits, not the process, so
/// guests must not be spawned from runtime worker threads that come and go.
async fn spawn_from_long_lived_thread(command: Command) -> Result<Child> {
    static SPAWNER: OnceLock<std::sync::Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let sender = SPAWNER
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<SpawnRequest>();
            std::thread::Builder::new()
                .name("guest-spawner".into())
                .spawn(move || {
                    for (mut command, reply) in rx {
                        let _ = reply.send(command.spawn());
                    }
                })
                .map(|_| ())
                .unwrap_or_else(|e| tracing::error!("cannot start the guest spawner thread: {e}"));
            std::sync::Mutex::new(tx)
        })
        .lock()
        .map_err(|_| Error::Internal("guest spawner lock poisoned".into()))?
        .clone();
    let (reply, answer) = oneshot::channel();
    sender
        .send((command, reply))
        .map_err(|_| Error::Internal("the guest spawner thread is gone".into()))?;
    answer
        .await
        .map_err(|_| Error::Internal("the guest spawner thread is gone".into()))?
        .map_err(Error::io("spawn the guest process"))
}
