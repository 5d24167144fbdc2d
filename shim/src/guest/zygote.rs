//! The zygote: a warm, single-threaded process that forks guest processes.
//!
//! Exec'ing this 40 MB binary and building wasmtime's engine and WASI linkers costs a few
//! milliseconds per guest. The zygote pays that once per shim: the shim's spawner thread execs
//! `/proc/self/exe --wasmtime-zygote <label>`, the zygote builds the [`Host`] and then, for each
//! request, forks a guest that already holds it (copy-on-write, so guests also share those pages).
//!
//! A request is one `SOCK_SEQPACKET` message: a byte choosing the guest's pid namespace (`s` the
//! shim's, `n` a new one, `j` the one whose fd is attached second), a byte choosing its cgroup
//! (`-` the zygote's, `c` the cgroup v2 directory whose fd is attached last: the guest is born
//! in it, `clone3` with `CLONE_INTO_CGROUP`) and the guest's label (the container id), with the
//! guest's control socket attached first (`SCM_RIGHTS`). The answer is the guest's pid, or a
//! negative errno, as 4 native-endian bytes (`-ENOSYS` when the kernel cannot clone into a
//! cgroup: nothing was forked). Guests are forked with `CLONE_PARENT`, so they are the shim's
//! children like an exec'd process would be: the shim reaps them and reads their status.
//!
//! The zygote never starts a thread (fork copies only the calling thread), blocks the signals
//! that end a guest (guests inherit the mask, see [`super::child`]), and dies with the shim's
//! spawner thread (`PR_SET_PDEATHSIG`). If it dies anyway, the spawner starts another one.

use super::fork::{Placement, clone};
use super::{PARENT_ENV, child};
use crate::confine::PidNamespace;
use crate::error::{Error, Result};
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Stdio};
use wasmtime_shim_runtime::{Host, exit};

/// The argument that makes this binary the zygote.
pub const ZYGOTE_ARG: &str = "--wasmtime-zygote";
/// Spaces appended to the zygote's command line, so each guest has room to rewrite it with its
/// own label.
const CMDLINE_ROOM: usize = 192;
/// A label longer than this is cut.
const MAX_LABEL: usize = 160;
/// Process name (`comm`) of the zygote and of guests.
const ZYGOTE_NAME: &std::ffi::CStr = c"wasm-zygote";
const GUEST_NAME: &std::ffi::CStr = c"wasm-guest";

/// The shim's end of a running zygote.
pub struct Zygote {
    control: OwnedFd,
    pid: i32,
}

impl Zygote {
    /// Execs a zygote. Call it from a thread that lives as long as the shim:
    /// `PR_SET_PDEATHSIG` fires when the thread that created the child exits.
    pub fn start(label: &str) -> Result<Zygote> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::io("create the zygote's control socket")(e.into()))?;
        let child = Command::new("/proc/self/exe")
            .arg0("containerd-shim-wasmtime-v1")
            .args([ZYGOTE_ARG, label, &" ".repeat(CMDLINE_ROOM)])
            .env_clear()
            .env(PARENT_ENV, std::process::id().to_string())
            .current_dir("/")
            .stdin(Stdio::from(theirs))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(Error::io("start the zygote process"))?;
        // The shim crate's reaper waits for every child; dropping `Child` leaves it be.
        let pid = child.id() as i32;
        drop(child);
        Ok(Zygote { control: ours, pid })
    }

    /// The zygote's pid.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Forks a guest labelled `label` in pid namespace `pid_ns`, born in the cgroup v2
    /// directory `cgroup` if one is given; returns its pid and the shim's end of its control
    /// channel. An error means the zygote is unusable (gone, or refused to fork), except
    /// `ENOSYS`: the kernel cannot clone into a cgroup, and nothing was forked.
    pub fn fork(
        &self,
        label: &str,
        pid_ns: &PidNamespace,
        cgroup: Option<BorrowedFd<'_>>,
    ) -> std::io::Result<(i32, UnixStream)> {
        let (ours, theirs) = UnixStream::pair()?;
        let label = cut(label);
        let mut fds = vec![theirs.as_raw_fd()];
        let join;
        let mode: &[u8] = match pid_ns {
            PidNamespace::Shim => b"s",
            PidNamespace::New => b"n",
            PidNamespace::Join(path) => {
                join = std::fs::File::open(path)?;
                fds.push(join.as_raw_fd());
                b"j"
            }
        };
        let place: &[u8] = match cgroup {
            Some(fd) => {
                fds.push(fd.as_raw_fd());
                b"c"
            }
            None => b"-",
        };
        let rights = [ControlMessage::ScmRights(&fds)];
        let iov = [
            std::io::IoSlice::new(mode),
            std::io::IoSlice::new(place),
            std::io::IoSlice::new(label.as_bytes()),
        ];
        retry(|| {
            sendmsg::<()>(
                self.control.as_raw_fd(),
                &iov,
                &rights,
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
        })?;
        drop(theirs);
        let mut answer = [0u8; 4];
        let n = retry(|| nix::unistd::read(&self.control, &mut answer))?;
        if n != answer.len() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the zygote process is gone",
            ));
        }
        match i32::from_ne_bytes(answer) {
            pid if pid > 0 => Ok((pid, ours)),
            errno => Err(std::io::Error::from_raw_os_error(-errno)),
        }
    }
}

fn retry<T>(mut f: impl FnMut() -> nix::Result<T>) -> std::io::Result<T> {
    loop {
        match f() {
            Err(nix::errno::Errno::EINTR) => continue,
            other => return other.map_err(Into::into),
        }
    }
}

/// `label`, cut to at most [`MAX_LABEL`] bytes on a character boundary.
fn cut(label: &str) -> &str {
    let mut end = label.len().min(MAX_LABEL);
    while !label.is_char_boundary(end) {
        end -= 1;
    }
    &label[..end]
}

/// The first zygote, forked by the shim's `main` while it still has one thread (no exec, and
/// the binary is already loaded and relocated). `label` is the shim's id. Returns `None` (and
/// the spawner execs a zygote later) if the fork fails.
pub fn fork_at_startup(label: &str) -> Option<Zygote> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .ok()?;
    let shim = std::process::id() as i32;
    // SAFETY: called first thing in `main`, before any other thread exists; the child only
    // rearranges its fds and enters `serve`, which never returns.
    match unsafe { libc::fork() } {
        0 => {
            drop(ours);
            // Keep the control channel on fd 3, close whatever else the shim inherited (its
            // listening socket among them), and put /dev/null on 0, 1 and 2.
            // SAFETY: plain fd juggling on fds this process owns.
            unsafe {
                if libc::dup2(theirs.as_raw_fd(), 3) < 0
                    || libc::close_range(4, libc::c_uint::MAX, 0) < 0
                {
                    libc::_exit(exit::FAILURE);
                }
                for fd in 0..3 {
                    libc::close(fd);
                }
                let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR);
                if null != 0 || libc::dup2(0, 1) < 0 || libc::dup2(0, 2) < 0 {
                    libc::_exit(exit::FAILURE);
                }
            }
            std::mem::forget(theirs);
            // SAFETY: fd 3 is the control channel, placed just above.
            let control = unsafe { OwnedFd::from_raw_fd(3) };
            serve(control, shim, label)
        }
        -1 => None,
        pid => Some(Zygote { control: ours, pid }),
    }
}

/// The `main` of an exec'd zygote. Never returns.
pub fn main() -> ! {
    let label = std::env::args().nth(2).unwrap_or_default();
    let control = take_fd0();
    serve(control, parent_pid(), &label)
}

/// Builds the host, then forks a guest for each request on `control`, until the shim closes it.
fn serve(control: OwnedFd, shim: i32, label: &str) -> ! {
    let mask = child::block_terminating_signals();
    let shim = child::die_with_parent(shim);
    // SAFETY: prctl with PR_SET_NAME and a NUL-terminated name of at most 16 bytes.
    unsafe { libc::prctl(libc::PR_SET_NAME, ZYGOTE_NAME.as_ptr(), 0, 0, 0) };
    set_cmdline(&[ZYGOTE_ARG, label]);

    // What every guest would otherwise build for itself.
    let host = Host::new();
    // Guests watch the shim through this, whatever pid namespace they end up in.
    let Some(shim_pidfd) = crate::container::pidfd_open(shim) else {
        std::process::exit(exit::FAILURE)
    };
    // To come back to after forking a guest into another pid namespace.
    let Ok(own_pid_ns) = std::fs::File::open("/proc/self/ns/pid") else {
        std::process::exit(exit::FAILURE)
    };

    let mut buf = [0u8; MAX_LABEL + 2];
    let mut space = nix::cmsg_space!([RawFd; 3]);
    loop {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            // The shim closed its end (or the channel broke): nothing more to fork.
            Err(_) => std::process::exit(0),
            Ok(msg) if msg.bytes == 0 => std::process::exit(0),
            Ok(msg) => msg,
        };
        let len = msg.bytes;
        let mut fds = Vec::new();
        if let Ok(cmsgs) = msg.cmsgs() {
            for cmsg in cmsgs {
                if let ControlMessageOwned::ScmRights(received) = cmsg {
                    // SAFETY: SCM_RIGHTS installed these fds in this process for us to own.
                    fds.extend(
                        received
                            .into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
        }
        let Some(request) = Placement::parse(&buf[..len], fds) else {
            answer(&control, -libc::EINVAL);
            continue;
        };
        let Placement {
            guest_control,
            pid_ns,
            cgroup,
            label,
        } = request;
        let mut flags = (libc::CLONE_PARENT | libc::SIGCHLD) as u64;
        match &pid_ns {
            Some(None) => flags |= libc::CLONE_NEWPID as u64,
            Some(Some(fd)) => {
                // Our children (not we) are born in the namespace joined here.
                if let Err(e) = nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWPID) {
                    answer(&control, -(e as i32));
                    continue;
                }
            }
            None => {}
        }
        let pid = clone(flags, cgroup.as_ref());
        drop(cgroup);
        if pid != 0
            && matches!(pid_ns, Some(Some(_)))
            && nix::sched::setns(&own_pid_ns, nix::sched::CloneFlags::CLONE_NEWPID).is_err()
        {
            // Every later guest would land in that namespace: better to be replaced.
            answer(&control, if pid > 0 { pid as i32 } else { -libc::EIO });
            std::process::exit(exit::FAILURE);
        }
        match pid {
            0 => {
                drop(control);
                drop(own_pid_ns);
                drop(pid_ns);
                // SAFETY: as ZYGOTE_NAME.
                unsafe { libc::prctl(libc::PR_SET_NAME, GUEST_NAME.as_ptr(), 0, 0, 0) };
                set_cmdline(&[super::GUEST_ARG, &label]);
                child::die_with_shim(&shim_pidfd);
                child::run(host, UnixStream::from(guest_control), mask, shim_pidfd)
            }
            pid if pid < 0 => answer(&control, pid as i32),
            pid => answer(&control, pid as i32),
        }
    }
}

/// The pid the shim put in our environment (0 if missing, which `die_with_parent` refuses).
fn parent_pid() -> i32 {
    std::env::var(PARENT_ENV)
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
}

fn answer(control: &OwnedFd, value: i32) {
    if retry(|| nix::unistd::write(control, &value.to_ne_bytes())).is_err() {
        std::process::exit(exit::FAILURE);
    }
}

/// Moves the control channel off fd 0 (to a close-on-exec fd) and puts `/dev/null` there.
fn take_fd0() -> OwnedFd {
    // SAFETY: fd 0 is the control socket the shim passed; we own it from here on.
    let fd0 = unsafe { std::os::fd::BorrowedFd::borrow_raw(0) };
    let control = fd0
        .try_clone_to_owned()
        .unwrap_or_else(|_| std::process::exit(exit::FAILURE));
    child::replace_fd0_with_null();
    control
}

/// Rewrites this process's command line (what `/proc/<pid>/cmdline` and `ps` show) in place,
/// as `containerd-shim-wasmtime-v1` followed by `args`, cut to the space the kernel gave the
/// original arguments, and NUL-padded.
fn set_cmdline(args: &[&str]) {
    let Some((start, end)) = argv_area() else {
        return;
    };
    let Some(len) = end.checked_sub(start).filter(|len| *len > 1) else {
        return;
    };
    let mut text = b"containerd-shim-wasmtime-v1".to_vec();
    for arg in args {
        text.push(0);
        text.extend_from_slice(arg.as_bytes());
    }
    // Always end with a NUL: the kernel then reports exactly this area.
    text.resize(len - 1, 0);
    text.push(0);
    // SAFETY: [arg_start, arg_end) is this process's argument area on its own stack, writable
    // and `len` bytes long. Whatever still points into it (std's saved argv) keeps pointing at
    // NUL-terminated bytes, because the area ends with a NUL.
    unsafe { std::ptr::copy_nonoverlapping(text.as_ptr(), start as *mut u8, len) };
}

/// `arg_start` and `arg_end` of this process (fields 48 and 49 of `/proc/self/stat`).
fn argv_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may hold anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_cut_on_character_boundaries() {
        assert_eq!(cut("abc"), "abc");
        let long = "é".repeat(MAX_LABEL);
        let cut = cut(&long);
        assert!(cut.len() <= MAX_LABEL && cut.len() >= MAX_LABEL - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }

    #[test]
    fn this_process_has_an_argument_area() {
        let (start, end) = argv_area().expect("arg_start and arg_end");
        let len: usize = std::env::args_os().map(|a| a.len() + 1).sum();
        assert_eq!(end - start, len);
    }
}
