//! The guest's compiler process and the one-thread rule.
//!
//! On a compile-cache miss the guest compiles its program in a child process forked for it
//! (`wasmtime_shim_runtime::Compiler::Child`), so that the guest itself never starts
//! wasmtime's compile threads: a thread that exists when the guest drops its capabilities and
//! loads seccomp keeps what those steps take away. The child handles untrusted Wasm, so it is
//! confined before it reads any: it is already in the guest's namespaces and cgroup, changes
//! root into the container's root filesystem, takes the spec's rlimits, becomes the
//! container's user with no capability at all (bounding set included), sets `no_new_privs`
//! and loads the spec's seccomp profile. It can reach nothing the guest could not.

use super::apply::{self, Result};
use super::{Confinement, seccomp};
use std::path::Path;

/// Confines the calling compiler child (single-threaded, just forked) as described above.
pub fn confine_compiler(c: &Confinement, rootfs: &Path) -> Result<()> {
    nix::unistd::chroot(rootfs)
        .and_then(|()| nix::unistd::chdir("/"))
        .map_err(|e| format!("change root to {}: {e}", rootfs.display()))?;
    apply::set_rlimits(&c.rlimits)?;
    let nothing = Confinement {
        user: c.user.clone(),
        capabilities: Vec::new(),
        no_new_privs: true,
        ..Confinement::default()
    };
    apply::drop_privileges(&nothing)?;
    match &c.seccomp {
        Some(profile) => seccomp::load(profile),
        None => Ok(()),
    }
}

/// Fails unless this process has exactly one thread: the guest checks it before it drops its
/// privileges, so that confinement holds for every thread it will ever have (threads inherit
/// the state of the thread that starts them).
pub fn ensure_one_thread() -> Result<()> {
    // /proc/self works in any pid namespace: before pivot_root through the host's /proc, after
    // it through the container's (if its spec mounts one).
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(status) => status,
        // No /proc to ask (a root filesystem without it): nothing to check against.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("read /proc/self/status: {e}")),
    };
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse::<u32>().ok());
    match threads {
        Some(1) | None => Ok(()),
        Some(n) => Err(format!(
            "the guest process has {n} threads before confinement; every thread must be \
             confined, so it must have one"
        )),
    }
}
