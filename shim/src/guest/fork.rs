//! How the zygote forks a guest: the request it reads ([`Placement`]) and the clone itself,
//! `clone3` with `CLONE_INTO_CGROUP` when the guest is to be born in its cgroup.

use std::os::fd::{AsRawFd, OwnedFd};

/// A fork request, as the zygote reads it.
pub(super) struct Placement {
    pub guest_control: OwnedFd,
    /// `None`: the zygote's pid namespace; `Some(None)`: a new one; `Some(Some(fd))`: join it.
    pub pid_ns: Option<Option<OwnedFd>>,
    /// The cgroup v2 directory to be born in.
    pub cgroup: Option<OwnedFd>,
    pub label: String,
}

impl Placement {
    /// Parses `message` (mode byte, cgroup byte, label) and its `fds` (control socket, pid
    /// namespace if `j`, cgroup if `c`, in that order). `None` if they do not match.
    pub fn parse(message: &[u8], mut fds: Vec<OwnedFd>) -> Option<Placement> {
        let (&mode, rest) = message.split_first()?;
        let (&place, label) = rest.split_first()?;
        let cgroup = match place {
            b'c' if fds.len() >= 2 => fds.pop(),
            b'-' => None,
            _ => return None,
        };
        let pid_ns = match (mode, fds.len()) {
            (b's', 1) => None,
            (b'n', 1) => Some(None),
            (b'j', 2) => Some(fds.pop()),
            _ => return None,
        };
        Some(Placement {
            guest_control: fds.pop()?,
            pid_ns,
            cgroup,
            label: String::from_utf8_lossy(label).into_owned(),
        })
    }
}

/// `clone3`'s argument (`struct clone_args`, the kernel's layout up to `cgroup`, Linux 5.7).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// Forks a guest with `flags` (which hold the exit signal in their low byte, as clone(2)'s do),
/// born in `cgroup` if given (`clone3` with `CLONE_INTO_CGROUP`). Returns the child's pid, 0 in
/// the child, or a negative errno: `-ENOSYS` when the kernel cannot clone into a cgroup.
pub(super) fn clone(flags: u64, cgroup: Option<&OwnedFd>) -> i64 {
    let Some(cgroup) = cgroup else {
        // SAFETY: a raw clone without CLONE_VM is fork(2) with the new process's parent set to
        // ours (the shim). This process has one thread and holds no lock while it forks, so
        // the child starts with consistent state; it never returns into this loop.
        let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0, 0, 0, 0) };
        return if pid < 0 { -last_errno() } else { pid };
    };
    // With CLONE_PARENT the child signals our parent as we would (clone3 refuses an explicit
    // exit signal with it).
    let exit_signal = if flags & libc::CLONE_PARENT as u64 != 0 {
        0
    } else {
        flags & 0xff
    };
    let args = CloneArgs {
        flags: (flags & !0xff) | CLONE_INTO_CGROUP,
        exit_signal,
        cgroup: cgroup.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: as the clone above; `args` is a valid clone_args of the size passed, with no
    // stack (the child runs on a copy of ours, as after fork) and no pointers.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        // E2BIG: a kernel before 5.7 (clone_args without `cgroup`); ENOSYS: before 5.3.
        -1 if matches!(last_errno() as i32, libc::E2BIG | libc::ENOSYS) => -(libc::ENOSYS as i64),
        -1 => -last_errno(),
        pid => pid,
    }
}

fn last_errno() -> i64 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_requests_parse_their_fds_in_order() {
        let fd = || OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let p = Placement::parse(b"s-guest", vec![fd()]).unwrap();
        assert!(p.pid_ns.is_none() && p.cgroup.is_none() && p.label == "guest");
        let p = Placement::parse(b"jcx", vec![fd(), fd(), fd()]).unwrap();
        assert!(matches!(p.pid_ns, Some(Some(_))) && p.cgroup.is_some() && p.label == "x");
        let p = Placement::parse(b"nc", vec![fd(), fd()]).unwrap();
        assert!(matches!(p.pid_ns, Some(None)) && p.cgroup.is_some());
        assert!(
            Placement::parse(b"jc", vec![fd(), fd()]).is_none(),
            "a missing fd"
        );
        assert!(
            Placement::parse(b"s", vec![fd()]).is_none(),
            "no cgroup byte"
        );
        assert!(
            Placement::parse(b"sx", vec![fd()]).is_none(),
            "a bad cgroup byte"
        );
    }

    /// A guest cloned as the zygote clones it (`CLONE_PARENT`) with a cgroup v2 directory is
    /// born in it. Uses the host's unified hierarchy (on a hybrid node, the controller-less one
    /// at /sys/fs/cgroup/unified). A forked child plays the zygote, so the guest is ours.
    #[test]
    fn a_guest_is_born_in_the_cgroup_it_is_given() {
        let root = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
            .into_iter()
            .find(|r| std::path::Path::new(r).join("cgroup.procs").exists())
            .expect("a cgroup v2 hierarchy");
        let name = format!("wasmtime-shim-test-{}", std::process::id());
        let dir = std::path::Path::new(root).join(&name);
        std::fs::create_dir(&dir).unwrap();
        let fd = OwnedFd::from(std::fs::File::open(&dir).unwrap());
        let (read, write) = nix::unistd::pipe().unwrap();
        // SAFETY: the child of this multithreaded test process makes async-signal-safe calls
        // only (clone3, write, pause, _exit).
        let zygote = unsafe { libc::fork() };
        if zygote == 0 {
            let pid = clone((libc::CLONE_PARENT | libc::SIGCHLD) as u64, Some(&fd));
            if pid == 0 {
                loop {
                    // SAFETY: pause(2) has no preconditions.
                    unsafe { libc::pause() };
                }
            }
            let bytes = pid.to_ne_bytes();
            // SAFETY: write(2) of a local buffer to the pipe, then _exit.
            unsafe {
                libc::write(write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
                libc::_exit(0);
            }
        }
        drop(write);
        let mut bytes = [0u8; 8];
        nix::unistd::read(&read, &mut bytes).unwrap();
        let pid = i64::from_ne_bytes(bytes);
        // SAFETY: waitpid on our own child, the stand-in zygote.
        unsafe { libc::waitpid(zygote, std::ptr::null_mut(), 0) };
        assert!(pid > 0, "clone3 failed: errno {}", -pid);
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        // SAFETY: the guest is our child (CLONE_PARENT): kill and reap it.
        let reaped = unsafe {
            libc::kill(pid as i32, libc::SIGKILL);
            libc::waitpid(pid as i32, std::ptr::null_mut(), 0)
        };
        std::fs::remove_dir(&dir).unwrap();
        assert_eq!(reaped, pid as i32, "the guest is the caller's child");
        assert!(
            cgroup.lines().any(|l| l == format!("0::/{name}")),
            "{cgroup}"
        );
        assert_eq!(procs.trim(), pid.to_string());
    }
}
