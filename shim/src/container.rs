//! One container as the shim holds it, and the host-side operations on it.

use crate::cgroup::Cgroup;
use crate::error::{Error, Result};
use crate::guest::GuestProcess;
use crate::state::{Exit, Status};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::watch;

/// The guest's pid, written in the bundle so the `delete` action can find a leftover guest.
pub const PID_FILE: &str = "init.pid";

pub struct Container {
    pub id: String,
    pub bundle: PathBuf,
    /// Set when the shim mounted the rootfs (and so must unmount it).
    pub mounted_rootfs: Option<PathBuf>,
    pub pid: i32,
    pub pidfd: Option<Arc<OwnedFd>>,
    pub status: Status,
    pub stdio: StdioPaths,
    /// The control channel, until Start takes it.
    pub guest: Option<GuestProcess>,
    /// A native container's runc handle (then `guest` is `None`).
    pub native: Option<Arc<crate::native::Native>>,
    pub exit: watch::Receiver<Option<Exit>>,
    /// Turns `true` once the exit watcher has published TaskExit (and its sender is dropped
    /// when the watcher ends), so Delete can wait for it: TaskExit always precedes TaskDelete.
    pub exit_reported: watch::Receiver<bool>,
    /// Held while publishing lifecycle events (TaskStart, TaskOOM and TaskExit, TaskDelete),
    /// so containerd sees them in that order.
    pub lifecycle: Arc<tokio::sync::Mutex<()>>,
    /// The guest's cgroup, when the spec names one (`linux.cgroupsPath`).
    pub cgroup: Option<Arc<std::sync::Mutex<Cgroup>>>,
    /// Exec processes by exec id ([`crate::task`]'s exec verbs).
    pub execs: std::collections::HashMap<String, ExecProcess>,
    /// What an exec into this Wasm container starts from (`None` for a native one).
    pub exec_base: Option<Arc<ExecBase>>,
}

/// A Wasm container's program spec and confinement, which its exec guests take on.
#[derive(Debug)]
pub struct ExecBase {
    pub guest: wasmtime_shim_runtime::GuestSpec,
    pub confinement: crate::confine::Confinement,
}

/// A process added to a running container by Exec.
pub struct ExecProcess {
    /// The process spec containerd sent (args, env, cwd, user, terminal).
    pub spec: oci_spec::runtime::Process,
    pub stdio: StdioPaths,
    /// 0 until Start.
    pub pid: i32,
    pub pidfd: Option<Arc<OwnedFd>>,
    pub status: Status,
    /// Set once the process exited; exists from Exec on, since CRI waits before it starts.
    pub exit_tx: Arc<watch::Sender<Option<Exit>>>,
    pub exit: watch::Receiver<Option<Exit>>,
    /// Turns `true` once its TaskExit is published.
    pub exit_reported: watch::Receiver<bool>,
    pub reported_tx: Option<watch::Sender<bool>>,
    /// A native exec's stdin relay, dropped at CloseIO (the process reads EOF).
    pub stdin_relay: Option<crate::native::StdinRelay>,
    /// A Wasm exec's guest (its control channel), once started.
    pub guest: Option<GuestProcess>,
    /// A native exec's pty master, when it has a terminal.
    pub console: Option<Arc<OwnedFd>>,
}

impl ExecProcess {
    pub fn refresh(&mut self) -> Status {
        if let Some(exit) = *self.exit.borrow() {
            self.status = self.status.stopped(exit);
        }
        self.status
    }
}

#[derive(Debug, Clone, Default)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
}

impl Container {
    /// The status, refreshed from the exit watch (the ground truth) rather than trusted.
    pub fn refresh(&mut self) -> Status {
        if let Some(exit) = *self.exit.borrow() {
            self.status = self.status.stopped(exit);
        }
        self.status
    }
}

/// SIGKILL to `pid` through a pidfd, if it is still there (cleanup: errors are moot).
pub fn kill(pid: i32) {
    if let Some(pidfd) = pidfd_open(pid) {
        let _ = send_signal(&pidfd, libc::SIGKILL);
    }
}

/// A pidfd for `pid`, so signals never reach a recycled pid. `None` if it is already gone.
pub fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a non-negative return is a new fd that we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Sends `signal` through a pidfd. Signalling a process that has exited is not an error.
pub fn send_signal(pidfd: &OwnedFd, signal: i32) -> Result<()> {
    // SAFETY: pidfd_send_signal with a valid fd, a signal number, no siginfo and no flags.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::ESRCH) => Ok(()),
        Some(libc::EINVAL) => Err(Error::InvalidArgument(format!("invalid signal {signal}"))),
        _ => Err(Error::Io {
            context: format!("send signal {signal}"),
            source: err,
        }),
    }
}

/// Detaches whatever is mounted on `rootfs` (and, with it, everything below it). Cheaper than
/// walking the mount table: the shim mounted the rootfs itself, at one known path.
pub async fn unmount_rootfs(rootfs: &Path) -> Result<()> {
    let target = rootfs.to_path_buf();
    tokio::task::spawn_blocking(move || {
        loop {
            match nix::mount::umount2(&target, nix::mount::MntFlags::MNT_DETACH) {
                Ok(()) => continue,
                // Not (or no longer) a mount point, or already gone.
                Err(nix::errno::Errno::EINVAL | nix::errno::Errno::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .map_err(|e| Error::Internal(format!("unmount task failed: {e}")))?
    .map_err(|e| Error::Internal(format!("unmount {}: {e}", rootfs.display())))
}

/// Kills a leftover guest found through the bundle's pid file (the `delete` action, after the
/// shim died). The pid is only signalled if it still is one of our guest processes.
pub fn kill_leftover_guest(bundle: &Path) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(bundle.join(PID_FILE))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let pidfd = pidfd_open(pid)?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let ours = cmdline
        .split(|b| *b == 0)
        .any(|arg| arg == crate::guest::GUEST_ARG.as_bytes());
    if ours {
        let _ = send_signal(&pidfd, libc::SIGKILL);
    }
    Some(pid)
}
