//! How a guest process is confined, read from the OCI spec: namespaces, mounts, the root
//! filesystem it pivots into, its user, capabilities, rlimits and `no_new_privs`.
//!
//! The shim reads a [`Confinement`] from the bundle and sends it to the guest process with the
//! launch request; the guest applies it to itself ([`apply`]) before it opens any WASI capability
//! and before it runs a single instruction of the guest program. The pid namespace is the
//! exception: it is chosen when the zygote forks the guest ([`PidNamespace`]).

pub mod apply;
pub mod compiler;
pub mod seccomp;

use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxNamespaceType, LinuxSeccomp, Spec};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Capabilities a WASI host can use on a guest's behalf: binding ports below 1024 and
/// overriding file permissions inside the container's filesystem. Every other capability a
/// spec grants is dropped, so an engine escape gains nothing from it.
pub const WASI_CAPABILITIES: [&str; 5] = [
    "CAP_NET_BIND_SERVICE",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
];

/// Namespaces other than pid and user, as the guest enters them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Mount,
    Network,
    Ipc,
    Uts,
    Cgroup,
}

impl Kind {
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            Kind::Mount => libc::CLONE_NEWNS,
            Kind::Network => libc::CLONE_NEWNET,
            Kind::Ipc => libc::CLONE_NEWIPC,
            Kind::Uts => libc::CLONE_NEWUTS,
            Kind::Cgroup => libc::CLONE_NEWCGROUP,
        }
    }
}

/// A namespace to create (`path: None`) or to join.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    pub kind: Kind,
    pub path: Option<PathBuf>,
}

/// The pid namespace of a guest, chosen when it is forked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum PidNamespace {
    /// The shim's (the spec asks for none).
    #[default]
    Shim,
    /// A new one: the guest is its pid 1.
    New,
    /// An existing one, e.g. the pod sandbox's (`/proc/<pid>/ns/pid`).
    Join(PathBuf),
}

/// A mount into the container's root filesystem.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mount {
    /// A host file or directory (a volume, `/etc/hosts`, a secret) at `destination`.
    Bind {
        source: PathBuf,
        destination: String,
        readonly: bool,
        recursive: bool,
    },
    /// A fresh tmpfs; `data` holds its options (`size=`, `mode=`).
    Tmpfs {
        destination: String,
        readonly: bool,
        flags: u64,
        data: String,
    },
}

/// The uid, gid and additional gids the guest runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// One `process.rlimits` entry (`resource` is the `RLIMIT_*` number).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rlimit {
    pub resource: i32,
    pub soft: u64,
    pub hard: u64,
}

/// Everything the guest applies to itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confinement {
    pub namespaces: Vec<Namespace>,
    /// Mounts and `pivot_root` happen only in a new mount namespace; without one the guest sees
    /// the root filesystem and its volumes through WASI preopens alone.
    pub mounts: Vec<Mount>,
    pub hostname: Option<String>,
    pub user: User,
    /// Capabilities kept (bounding, permitted and effective): the spec's grant intersected
    /// with [`WASI_CAPABILITIES`].
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    pub rlimits: Vec<Rlimit>,
    /// `linux.seccomp`, loaded last.
    pub seccomp: Option<LinuxSeccomp>,
    /// `process.oomScoreAdj` (kubelet's per-QoS value): what the kernel's OOM killer weighs.
    /// Without it the guest keeps the shim's, which containerd sets near -1000.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
}

impl Confinement {
    /// Whether the guest gets its own mount namespace, and so pivots into its root filesystem.
    pub fn pivots(&self) -> bool {
        self.namespaces
            .iter()
            .any(|ns| ns.kind == Kind::Mount && ns.path.is_none())
    }

    /// Whether the guest creates a cgroup namespace of its own.
    pub fn new_cgroup_namespace(&self) -> bool {
        self.namespaces
            .iter()
            .any(|ns| ns.kind == Kind::Cgroup && ns.path.is_none())
    }

    /// Reads the confinement of `spec`. Refuses what cannot be honoured.
    pub fn from_spec(spec: &Spec) -> Result<(Confinement, PidNamespace)> {
        let mut confinement = Confinement::default();
        let mut pid = PidNamespace::Shim;
        let linux = spec.linux().as_ref();
        for ns in linux
            .and_then(|l| l.namespaces().as_ref())
            .into_iter()
            .flatten()
        {
            let path = ns.path().clone().filter(|p| !p.as_os_str().is_empty());
            let kind = match ns.typ() {
                LinuxNamespaceType::Pid => {
                    pid = path.map_or(PidNamespace::New, PidNamespace::Join);
                    continue;
                }
                LinuxNamespaceType::User => {
                    return Err(Error::Unimplemented(
                        "user namespaces (linux.namespaces of type user)".into(),
                    ));
                }
                LinuxNamespaceType::Time => {
                    return Err(Error::Unimplemented(
                        "time namespaces (linux.namespaces of type time)".into(),
                    ));
                }
                LinuxNamespaceType::Mount => Kind::Mount,
                LinuxNamespaceType::Network => Kind::Network,
                LinuxNamespaceType::Ipc => Kind::Ipc,
                LinuxNamespaceType::Uts => Kind::Uts,
                LinuxNamespaceType::Cgroup => Kind::Cgroup,
            };
            confinement.namespaces.push(Namespace { kind, path });
        }
        if confinement.pivots() {
            confinement.mounts = mounts(spec)?;
        }
        if let Some(profile) = linux.and_then(|l| l.seccomp().as_ref()) {
            seccomp::check(profile).map_err(Error::Unimplemented)?;
            confinement.seccomp = Some(profile.clone());
        }
        if confinement
            .namespaces
            .iter()
            .any(|ns| ns.kind == Kind::Uts && ns.path.is_none())
        {
            confinement.hostname = spec.hostname().clone().filter(|h| !h.is_empty());
        }
        if let Some(process) = spec.process() {
            let user = process.user();
            confinement.user = User {
                uid: user.uid(),
                gid: user.gid(),
                additional_gids: user.additional_gids().clone().unwrap_or_default(),
            };
            confinement.no_new_privs = process.no_new_privileges().unwrap_or(false);
            confinement.oom_score_adj = process.oom_score_adj();
            let granted: Vec<String> = process
                .capabilities()
                .as_ref()
                .and_then(|c| c.permitted().as_ref())
                .map(|set| {
                    set.iter()
                        .filter_map(|c| serde_json::to_value(c).ok()?.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            confinement.capabilities = WASI_CAPABILITIES
                .iter()
                .filter(|c| granted.iter().any(|g| g == *c))
                .map(|c| c.to_string())
                .collect();
            for limit in process.rlimits().iter().flatten() {
                confinement.rlimits.push(Rlimit {
                    resource: rlimit_resource(&limit.typ())?,
                    soft: limit.soft(),
                    hard: limit.hard(),
                });
            }
        }
        Ok((confinement, pid))
    }
}

/// The `RLIMIT_*` number of an rlimit type, by its name in the spec.
fn rlimit_resource(typ: &oci_spec::runtime::PosixRlimitType) -> Result<i32> {
    let name = serde_json::to_value(typ)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let resource = match name.as_str() {
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        _ => {
            return Err(Error::InvalidArgument(format!(
                "unknown rlimit {name:?} in process.rlimits"
            )));
        }
    };
    Ok(resource as i32)
}

/// Destinations that hold kernel or device filesystems: a Wasm guest reaches none of them
/// (WASI has no `/proc`, `/sys` or device files), so their mounts are left out.
fn kernel_destination(destination: &str) -> bool {
    ["/proc", "/sys", "/dev"].iter().any(|prefix| {
        destination == *prefix
            || destination
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// The spec's mounts that make sense for a Wasm guest: binds (volumes, `/etc/hosts`,
/// `/etc/resolv.conf`, secrets, tokens) and tmpfs, outside `/proc`, `/sys` and `/dev`.
fn mounts(spec: &Spec) -> Result<Vec<Mount>> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let destination = m.destination().to_string_lossy().into_owned();
        if !destination.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "mount destination {destination:?} is not an absolute path"
            )));
        }
        if kernel_destination(&destination) {
            continue;
        }
        let options = m.options().clone().unwrap_or_default();
        let has = |o: &str| options.iter().any(|x| x == o);
        let readonly = has("ro");
        let bind = has("bind") || has("rbind") || m.typ().as_deref() == Some("bind");
        if bind {
            let Some(source) = m.source().clone() else {
                return Err(Error::InvalidArgument(format!(
                    "bind mount at {destination} has no source"
                )));
            };
            out.push(Mount::Bind {
                source,
                destination,
                readonly,
                recursive: has("rbind"),
            });
        } else if m.typ().as_deref() == Some("tmpfs") {
            let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
            let mut data = Vec::new();
            for o in &options {
                match o.as_str() {
                    "ro" | "rw" | "nosuid" | "nodev" => {}
                    "noexec" => flags |= libc::MS_NOEXEC,
                    "strictatime" => flags |= libc::MS_STRICTATIME,
                    o if o.starts_with("size=")
                        || o.starts_with("mode=")
                        || o.starts_with("nr_inodes=") =>
                    {
                        data.push(o.to_string())
                    }
                    _ => {}
                }
            }
            out.push(Mount::Tmpfs {
                destination,
                readonly,
                flags,
                data: data.join(","),
            });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
