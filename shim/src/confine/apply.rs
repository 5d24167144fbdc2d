//! The guest process confines itself. Each step runs while the process still has one thread,
//! because `setns`/`unshare` of a mount namespace refuse threaded callers and capabilities are
//! per thread: every thread started later inherits the final, reduced state. Loading the program
//! starts no thread (a compile-cache miss compiles in a child process, see [`super::compiler`]),
//! and the guest checks that it still has one thread before it drops its privileges.
//!
//! Order, as runc does it: enter namespaces → mount into the root filesystem → (the caller loads
//! the program from host paths) → `pivot_root` → hostname, rlimits → user, capabilities,
//! `no_new_privs`.

use super::{Confinement, Mount, Rlimit, User};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use rustix::fs::{Mode, OFlags, ResolveFlags};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;

/// A step that failed, as the guest reports it to the shim.
pub type Result<T> = std::result::Result<T, String>;

fn fail(what: impl std::fmt::Display, err: impl std::fmt::Display) -> String {
    format!("{what}: {err}")
}

/// Joins the namespaces given by path, then creates the new ones.
pub fn enter_namespaces(c: &Confinement) -> Result<()> {
    for ns in &c.namespaces {
        if let Some(path) = &ns.path {
            let fd = std::fs::File::open(path)
                .map_err(|e| fail(format!("open namespace {}", path.display()), e))?;
            let flags = nix::sched::CloneFlags::from_bits_truncate(ns.kind.clone_flag());
            nix::sched::setns(fd, flags)
                .map_err(|e| fail(format!("join namespace {}", path.display()), e))?;
        }
    }
    let new = c
        .namespaces
        .iter()
        .filter(|ns| ns.path.is_none())
        .fold(0, |flags, ns| flags | ns.kind.clone_flag());
    if new != 0 {
        nix::sched::unshare(nix::sched::CloneFlags::from_bits_truncate(new))
            .map_err(|e| fail("create namespaces", e))?;
    }
    if new & libc::CLONE_NEWNET != 0 {
        // As runc does for a new network namespace: loopback up, so the guest can talk to
        // itself (and to containers that join it).
        loopback_up().map_err(|e| fail("bring up the loopback interface", e))?;
    }
    if c.pivots() {
        // Nothing mounted from here on reaches the host's mount namespace.
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        )
        .map_err(|e| fail("make / a slave mount", e))?;
    }
    Ok(())
}

fn loopback_up() -> std::io::Result<()> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
        // 127.0.0.1 is not routable until `lo` is up; any datagram socket serves for ioctls.
        // SAFETY: socket(2) with constant arguments; the fd is owned right away.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a new socket we own.
        Ok(unsafe { <std::net::UdpSocket as std::os::fd::FromRawFd>::from_raw_fd(fd) })
    })?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Binds the root filesystem onto itself (a mount point `pivot_root` accepts) and mounts the
/// spec's mounts into it, each destination resolved inside the root filesystem.
pub fn mount_rootfs(c: &Confinement, rootfs: &Path) -> Result<()> {
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail(format!("bind {}", rootfs.display()), e))?;
    let root = open_dir(rootfs)?;
    forbid_devices(&root, rootfs.display(), true)?;
    for m in &c.mounts {
        match m {
            Mount::Bind {
                source,
                destination,
                readonly,
                recursive,
            } => {
                let is_dir = std::fs::metadata(source)
                    .map_err(|e| fail(format!("mount source {}", source.display()), e))?
                    .is_dir();
                let target = create_destination(&root, destination, is_dir)?;
                let mut flags = MsFlags::MS_BIND;
                if *recursive {
                    flags |= MsFlags::MS_REC;
                }
                mount(
                    Some(source.as_path()),
                    fd_path(&target).as_path(),
                    None::<&str>,
                    flags,
                    None::<&str>,
                )
                .map_err(|e| fail(format!("bind {} at {destination}", source.display()), e))?;
                // Reopen: the fd taken before mounting refers to what the mount now covers.
                let mounted = open_in_root(&root, destination, OFlags::PATH)
                    .map_err(|e| fail(format!("open {destination}"), e))?;
                forbid_devices(&mounted, destination, *recursive)?;
                if *readonly {
                    remount_readonly(&root, destination, MsFlags::MS_NODEV)?;
                }
            }
            Mount::Tmpfs {
                destination,
                readonly,
                flags,
                data,
            } => {
                let target = create_destination(&root, destination, true)?;
                let flags = MsFlags::from_bits_truncate(*flags);
                mount(
                    Some("tmpfs"),
                    fd_path(&target).as_path(),
                    Some("tmpfs"),
                    flags,
                    Some(data.as_str()),
                )
                .map_err(|e| fail(format!("mount tmpfs at {destination}"), e))?;
                if *readonly {
                    remount_readonly(&root, destination, flags)?;
                }
            }
        }
    }
    Ok(())
}

/// Makes the root filesystem read-only (its own mount only: volumes keep their mode).
pub fn readonly_rootfs(rootfs: &Path) -> Result<()> {
    mount(
        None::<&str>,
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| fail("make the root filesystem read-only", e))
}

/// Makes the mount at `target` (and, if `recursive`, every mount below it) `nodev`: a device
/// node in the image or in a volume cannot be opened. This is the guest's device policy on
/// cgroup v1 and v2 alike: a Wasm program needs no device (WASI gives it stdio, clocks and
/// randomness), and v2 has no devices controller to refuse them.
fn forbid_devices(target: &OwnedFd, name: impl std::fmt::Display, recursive: bool) -> Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: mount_setattr reads the empty NUL-terminated path and `attr`, of the size passed;
    // `target` is an open fd.
    let done = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if done == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::ENOSYS) {
        return Err(fail(format!("make {name} nodev"), err));
    }
    // Before Linux 5.12: the mount itself (a fresh bind mount has no other flags yet).
    mount(
        None::<&str>,
        fd_path(target).as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_NODEV,
        None::<&str>,
    )
    .map_err(|e| fail(format!("make {name} nodev"), e))
}

/// Joins the mount namespace at `path` (a running container's): `/` and the working directory
/// become the namespace's root, the container's root filesystem.
pub fn join_mount_namespace(path: &Path) -> Result<()> {
    let fd = std::fs::File::open(path)
        .map_err(|e| fail(format!("open namespace {}", path.display()), e))?;
    nix::sched::setns(fd, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail(format!("join namespace {}", path.display()), e))?;
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))
}

/// Makes `rootfs` this process's `/` and detaches the host's filesystem.
pub fn pivot(rootfs: &Path) -> Result<()> {
    std::env::set_current_dir(rootfs).map_err(|e| fail("enter the root filesystem", e))?;
    nix::unistd::pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the host filesystem", e))?;
    std::env::set_current_dir("/").map_err(|e| fail("chdir /", e))
}

/// Sets the OOM killer's score adjustment the spec asks for (before privileges are dropped:
/// lowering it takes CAP_SYS_RESOURCE).
pub fn set_oom_score_adj(c: &Confinement) -> Result<()> {
    if let Some(adj) = c.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| fail(format!("set oom_score_adj {adj}"), e))?;
    }
    Ok(())
}

pub fn set_hostname(c: &Confinement) -> Result<()> {
    if let Some(name) = &c.hostname {
        nix::unistd::sethostname(name).map_err(|e| fail("set the hostname", e))?;
    }
    Ok(())
}

pub fn set_rlimits(limits: &[Rlimit]) -> Result<()> {
    for l in limits {
        let value = libc::rlimit {
            rlim_cur: l.soft,
            rlim_max: l.hard,
        };
        // SAFETY: setrlimit reads one rlimit struct we own.
        if unsafe { libc::setrlimit(l.resource as _, &value) } != 0 {
            return Err(fail(
                format!("set rlimit {}", l.resource),
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

/// Becomes the spec's user, keeps only the granted WASI capabilities (bounding, permitted,
/// effective; nothing inheritable or ambient) and sets `no_new_privs` if asked.
pub fn drop_privileges(c: &Confinement) -> Result<()> {
    use caps::{CapSet, Capability, CapsHashSet};
    let keep: CapsHashSet = c
        .capabilities
        .iter()
        .filter_map(|name| name.parse::<Capability>().ok())
        .collect();
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    for cap in caps::all() {
        if !keep.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| fail(format!("drop {cap} from the bounding set"), e))?;
        }
    }
    set_user(&c.user)?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clear ambient capabilities", e))?;
    caps::clear(None, CapSet::Inheritable)
        .map_err(|e| fail("clear inheritable capabilities", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| fail("set effective capabilities", e))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(|e| fail("set permitted capabilities", e))?;
    caps::set(None, CapSet::Effective, &keep).map_err(|e| fail("set effective capabilities", e))?;
    if c.no_new_privs {
        // SAFETY: prctl with PR_SET_NO_NEW_PRIVS and constant arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(fail("set no_new_privs", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Sets groups, gid and uid, keeping the permitted capabilities across the uid change.
fn set_user(user: &User) -> Result<()> {
    use nix::unistd::{Gid, Uid};
    // SAFETY: prctl with PR_SET_KEEPCAPS and constant arguments.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = user
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("set additional groups", e))?;
    let gid = Gid::from_raw(user.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail(format!("set gid {}", user.gid), e))?;
    let uid = Uid::from_raw(user.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail(format!("set uid {}", user.uid), e))?;
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) };
    Ok(())
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail(format!("open {}", path.display()), e))
}

/// `/proc/self/fd/<fd>`: mounting there mounts on exactly the file `fd` refers to, whatever
/// symlinks its path held.
fn fd_path(fd: &OwnedFd) -> std::path::PathBuf {
    format!("/proc/self/fd/{}", fd.as_raw_fd()).into()
}

/// Opens `path` inside `root`, following symlinks as if `root` were `/` (neither they nor `..`
/// can leave it).
fn open_in_root(root: &OwnedFd, path: &str, flags: OFlags) -> rustix::io::Result<OwnedFd> {
    let path = match path.trim_start_matches('/') {
        "" => ".",
        relative => relative,
    };
    loop {
        match rustix::fs::openat2(
            root,
            path,
            flags | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        ) {
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            other => return other,
        }
    }
}

/// Creates the mount point `destination` inside `root` (a directory, or an empty file for a
/// file bind) with its missing parents, and opens it as an `O_PATH` fd.
fn create_destination(root: &OwnedFd, destination: &str, dir: bool) -> Result<OwnedFd> {
    let error = |e| fail(format!("create mount point {destination}"), e);
    let components: Vec<&str> = destination
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    let mut at = open_in_root(root, "/", OFlags::PATH | OFlags::DIRECTORY).map_err(error)?;
    for (i, name) in components.iter().enumerate() {
        let last = i + 1 == components.len();
        let prefix = components[..=i].join("/");
        let next = match open_in_root(root, &prefix, OFlags::PATH) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::NOENT) => {
                if last && !dir {
                    let file = rustix::fs::openat(
                        &at,
                        *name,
                        OFlags::CREATE | OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW,
                        Mode::from_raw_mode(0o644),
                    )
                    .map_err(error)?;
                    drop(file);
                } else {
                    match rustix::fs::mkdirat(&at, *name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(rustix::io::Errno::EXIST) => {}
                        Err(e) => return Err(error(e)),
                    }
                }
                open_in_root(root, &prefix, OFlags::PATH).map_err(error)?
            }
            Err(e) => return Err(error(e)),
        };
        at = next;
    }
    Ok(at)
}

/// Remounts the mount now at `destination` read-only, keeping `flags`.
fn remount_readonly(root: &OwnedFd, destination: &str, flags: MsFlags) -> Result<()> {
    // Reopen: the fd taken before mounting refers to what the mount now covers.
    let target = open_in_root(root, destination, OFlags::PATH)
        .map_err(|e| fail(format!("open {destination}"), e))?;
    mount(
        None::<&str>,
        fd_path(&target).as_path(),
        None::<&str>,
        flags | MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .map_err(|e| fail(format!("make {destination} read-only"), e))
}
