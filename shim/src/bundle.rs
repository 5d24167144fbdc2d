//! Reads a bundle's `config.json` once into what the shim needs.

use crate::confine::{Confinement, PidNamespace};
use crate::error::{Error, Result};
use oci_spec::runtime::{LinuxResources, Spec};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use wasmtime_shim_runtime::{GuestSpec, Preopen};

/// Annotation CRI sets on every container of a pod: containers that carry the same value share
/// one shim process.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// Annotation CRI sets to `sandbox` on a pod's sandbox (pause) container.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// The parts of an OCI runtime spec the shim uses.
#[derive(Debug)]
pub struct Bundle {
    pub path: PathBuf,
    pub rootfs: PathBuf,
    pub guest: GuestSpec,
    pub annotations: HashMap<String, String>,
    pub confinement: Confinement,
    pub pid_ns: PidNamespace,
    /// `linux.cgroupsPath`, if set.
    pub cgroups_path: Option<String>,
    pub resources: Option<LinuxResources>,
    /// A pod's sandbox container (`io.kubernetes.cri.container-type=sandbox`), which runs the
    /// built-in pause process.
    pub sandbox: bool,
    /// `process.terminal`.
    pub terminal: bool,
    /// Whether the spec asks for a new pid namespace (for a native container: whether its
    /// processes end with its init, as the kernel ends a pid namespace's).
    pub own_pid_ns: bool,
    /// Why the spec cannot run as a Wasm guest (a namespace or profile the guest cannot be
    /// given, a terminal), if it cannot: Create fails with it unless the container is native.
    pub wasm_refusal: Option<Error>,
}

impl Bundle {
    /// Reads `<path>/config.json`.
    pub fn load(path: &Path) -> Result<Bundle> {
        let config = path.join("config.json");
        let bytes = std::fs::read(&config)
            .map_err(Error::io(format!("read bundle spec {}", config.display())))?;
        let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| {
            Error::InvalidArgument(format!("invalid bundle spec {}: {e}", config.display()))
        })?;
        Bundle::from_spec(path, spec)
    }

    fn from_spec(path: &Path, spec: Spec) -> Result<Bundle> {
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| Error::InvalidArgument("bundle spec has no process".into()))?;
        let root = spec.root().as_ref();
        let rootfs_rel = root
            .map(|r| r.path().clone())
            .unwrap_or_else(|| PathBuf::from("rootfs"));
        let rootfs = if rootfs_rel.is_absolute() {
            rootfs_rel
        } else {
            path.join(rootfs_rel)
        };
        // What a guest cannot be given refuses a Wasm container only: a native one is runc's.
        let (confinement, pid_ns, wasm_refusal) = match Confinement::from_spec(&spec) {
            Ok((confinement, pid_ns)) => (confinement, pid_ns, None),
            Err(err) => (Confinement::default(), PidNamespace::default(), Some(err)),
        };
        let wasm_refusal = wasm_refusal.or_else(|| {
            process.terminal().unwrap_or(false).then(|| {
                Error::Unimplemented("a terminal (ctr run -t, tty: true) for a Wasm program".into())
            })
        });
        let linux = spec.linux().as_ref();
        let guest = GuestSpec {
            args: process.args().clone().unwrap_or_default(),
            env: process.env().clone().unwrap_or_default(),
            cwd: process.cwd().to_string_lossy().into_owned(),
            rootfs: rootfs.clone(),
            readonly_rootfs: root.and_then(|r| r.readonly()).unwrap_or(false),
            mounts: volumes(&spec),
            network: true,
            memory_limit: memory_budget(&spec),
        };
        let annotations = spec.annotations().clone().unwrap_or_default();
        let sandbox = annotations.get(CONTAINER_TYPE).map(String::as_str) == Some("sandbox");
        if guest.args.is_empty() && !sandbox {
            return Err(Error::InvalidArgument(
                "the container has no command: process.args is empty (set the image \
                 entrypoint or the container's command to the .wasm file)"
                    .into(),
            ));
        }
        Ok(Bundle {
            path: path.to_path_buf(),
            rootfs,
            guest,
            annotations,
            confinement,
            pid_ns,
            cgroups_path: checked_cgroups_path(
                linux
                    .and_then(|l| l.cgroups_path().as_ref())
                    .map(|p| p.to_string_lossy().into_owned())
                    .filter(|p| !p.is_empty()),
            )?,
            resources: linux.and_then(|l| l.resources().clone()),
            sandbox,
            terminal: process.terminal().unwrap_or(false),
            own_pid_ns: linux
                .and_then(|l| l.namespaces().as_ref())
                .is_some_and(|all| {
                    all.iter().any(|n| {
                        n.typ() == oci_spec::runtime::LinuxNamespaceType::Pid && n.path().is_none()
                    })
                }),
            wasm_refusal,
        })
    }

    /// The id that groups containers into one shim: the pod's sandbox id, else the container's.
    pub fn group_id(&self, container_id: &str) -> String {
        self.annotations
            .get(SANDBOX_ID)
            .cloned()
            .unwrap_or_else(|| container_id.to_string())
    }
}

/// `linux.cgroupsPath`, refused if it could leave the cgroup hierarchy: a `..` component would be
/// joined to each hierarchy's root by the cgroup manager and reach the host's filesystem.
fn checked_cgroups_path(path: Option<String>) -> Result<Option<String>> {
    if let Some(p) = &path
        && p.split(['/', ':']).any(|part| part == "..")
    {
        return Err(Error::InvalidArgument(format!(
            "linux.cgroupsPath {p:?} has a \"..\" component: it must name a cgroup inside the \
             hierarchy"
        )));
    }
    Ok(path)
}

/// Bind mounts of host directories (volumes, secrets, config maps), as WASI preopens. Mounts
/// of single files (`/etc/hosts`) and kernel filesystems have no WASI equivalent yet.
fn volumes(spec: &Spec) -> Vec<Preopen> {
    let mut out = Vec::new();
    for m in spec.mounts().iter().flatten() {
        let options = m.options().clone().unwrap_or_default();
        let is_bind = m.typ().as_deref() == Some("bind")
            || options.iter().any(|o| o == "bind" || o == "rbind");
        let Some(source) = m.source() else { continue };
        if !is_bind || !source.is_dir() {
            continue;
        }
        out.push(Preopen {
            host: source.clone(),
            guest: m.destination().to_string_lossy().into_owned(),
            readonly: options.iter().any(|o| o == "ro"),
        });
    }
    out
}

/// Memory the guest process needs besides its Wasm memories and tables: the engine, the
/// compiled code, WASI's buffers and threads. Kept out of the Wasm budget so that `memory.grow`
/// fails inside the guest before the kernel's OOM killer acts.
pub const PROCESS_OVERHEAD: u64 = 16 << 20;

fn memory_budget(spec: &Spec) -> Option<u64> {
    wasm_budget(spec.linux().as_ref()?.resources().as_ref()?)
}

/// The guest's Wasm memory budget from `memory.limit`: the limit less the process overhead (at
/// most half the limit for tiny limits). `None` without a limit (or with -1, unlimited).
pub fn wasm_budget(resources: &LinuxResources) -> Option<u64> {
    let limit = resources.memory().as_ref()?.limit()?;
    let limit = u64::try_from(limit).ok().filter(|l| *l > 0)?;
    Some(limit - PROCESS_OVERHEAD.min(limit / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, json: &str) {
        std::fs::write(dir.join("config.json"), json).unwrap();
    }

    const BASE: &str = r#"{"ociVersion":"1.0.2","root":{"path":"rootfs","readonly":true},
        "process":{"user":{"uid":0,"gid":0},"cwd":"/app","args":["hello.wasm","x"],"env":["A=1"]},
        "annotations":{"io.kubernetes.cri.sandbox-id":"pod1"}}"#;

    #[test]
    fn reads_what_the_guest_needs() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), BASE);
        let b = Bundle::load(dir.path()).unwrap();
        assert_eq!(b.rootfs, dir.path().join("rootfs"));
        assert_eq!(b.guest.args, ["hello.wasm", "x"]);
        assert_eq!(b.guest.env, ["A=1"]);
        assert_eq!(b.guest.cwd, "/app");
        assert!(b.guest.readonly_rootfs);
        assert_eq!(b.group_id("c1"), "pod1");
    }

    #[test]
    fn refuses_bad_specs_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("{not json", "invalid bundle spec"),
            (
                r#"{"ociVersion":"1.0.2","root":{"path":"rootfs"}}"#,
                "bundle spec has no process",
            ),
            (
                r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"cwd":"/","args":[]}}"#,
                "process.args is empty",
            ),
        ];
        for (json, message) in cases {
            write(dir.path(), json);
            let err = Bundle::load(dir.path()).unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
        }
        // A terminal is refused for a Wasm program only: a native one may have it.
        write(
            dir.path(),
            r#"{"ociVersion":"1.0.2","process":{"user":{"uid":0,"gid":0},"terminal":true,"cwd":"/","args":["a"]}}"#,
        );
        let b = Bundle::load(dir.path()).unwrap();
        assert!(b.terminal);
        let refusal = b.wasm_refusal.unwrap().to_string();
        assert!(
            refusal.contains("a terminal (ctr run -t, tty: true) for a Wasm program"),
            "{refusal}"
        );
        std::fs::remove_file(dir.path().join("config.json")).unwrap();
        assert!(Bundle::load(dir.path()).is_err());
    }

    #[test]
    fn cgroups_paths_that_climb_out_are_refused() {
        for bad in [
            "/../../tmp/x",
            "../../tmp/x",
            "/default/../../x",
            "default/../../../x/y",
            "system.slice:cri:..",
        ] {
            let err = super::checked_cgroups_path(Some(bad.into())).unwrap_err();
            assert!(err.to_string().contains("cgroupsPath"), "{bad}: {err}");
        }
        for good in [
            "/default/a..b",
            "kubepods-pod1.slice:cri-containerd:abc",
            "/a/b",
        ] {
            assert!(
                super::checked_cgroups_path(Some(good.into())).is_ok(),
                "{good}"
            );
        }
    }
}
