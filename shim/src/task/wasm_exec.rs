//! Exec into a Wasm container: a new guest that joins the container's namespaces (the mount
//! one once its program is loaded), is born in (or moved into) its cgroup, takes on its
//! confinement, and runs the Wasm module or command component the exec's `args[0]` names in the
//! container's root filesystem, with the exec's argv, env and cwd and its own stdio.

use super::TaskService;
use crate::cgroup::Cgroup;
use crate::confine::{Kind, Namespace, PidNamespace};
use crate::container::{ExecBase, StdioPaths};
use crate::error::{Error, Result};
use crate::guest::{GuestProcess, Launch, Ready};
use crate::state::Exit;
use crate::stdio;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The `/proc/<pid>/ns/` name of a namespace kind.
fn ns_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Mount => "mnt",
        Kind::Network => "net",
        Kind::Ipc => "ipc",
        Kind::Uts => "uts",
        Kind::Cgroup => "cgroup",
    }
}

/// The launch of an exec guest into the container whose first guest is `init`.
fn exec_launch(
    base: &ExecBase,
    init: i32,
    process: &oci_spec::runtime::Process,
    stdio: &StdioPaths,
    cache: (Option<std::path::PathBuf>, u64),
) -> Result<Launch> {
    let proc_dir = format!("/proc/{init}");
    let mut confinement = base.confinement.clone();
    // Joined, not created: every namespace the container has; nothing mounted, no hostname.
    let has_mount_ns = confinement
        .namespaces
        .iter()
        .any(|ns| ns.kind == Kind::Mount);
    confinement.namespaces = confinement
        .namespaces
        .iter()
        .filter(|ns| ns.kind != Kind::Mount)
        .map(|ns| Namespace {
            kind: ns.kind,
            path: Some(format!("{proc_dir}/ns/{}", ns_name(ns.kind)).into()),
        })
        .collect();
    confinement.mounts.clear();
    confinement.hostname = None;
    let mut spec = base.guest.clone();
    spec.args = process.args().clone().unwrap_or_default();
    spec.env = process.env().clone().unwrap_or_default();
    spec.cwd = process.cwd().to_string_lossy().into_owned();
    if has_mount_ns {
        // The container's root as the host sees it, with its volumes mounted.
        spec.rootfs = format!("{proc_dir}/root").into();
    }
    Ok(Launch {
        spec,
        cache_dir: cache.0,
        cache_limit: cache.1,
        image: None,
        stdin: stdio::stdin_path(&stdio.stdin)?,
        confinement,
        pause: false,
        join_mount_ns: has_mount_ns.then(|| format!("{proc_dir}/ns/mnt").into()),
    })
}

/// A started Wasm exec.
pub(super) struct WasmExec {
    pub pid: i32,
    pub exit: watch::Receiver<Option<Exit>>,
    pub guest: GuestProcess,
}

impl TaskService {
    /// Spawns, prepares and starts the exec guest.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn start_wasm_exec(
        &self,
        id: &str,
        exec_id: &str,
        init: i32,
        base: &ExecBase,
        cgroup: Option<Arc<Mutex<Cgroup>>>,
        process: &oci_spec::runtime::Process,
        stdio: &StdioPaths,
        bundle: &std::path::Path,
    ) -> Result<WasmExec> {
        if process.terminal().unwrap_or(false) {
            return Err(Error::Unimplemented(
                "a terminal for an exec into a Wasm container".into(),
            ));
        }
        let launch = exec_launch(
            base,
            init,
            process,
            stdio,
            super::lifecycle::exec_cache(bundle),
        )?;
        let stdout = stdio::open_output("stdout", &stdio.stdout)?;
        let stderr = stdio::open_output("stderr", &stdio.stderr)?;
        let cgroup_fd = match &cgroup {
            Some(cg) => {
                let cg = cg.clone();
                super::blocking("open the cgroup", move || {
                    Ok(super::resources::lock(&cg).dir_fd())
                })
                .await?
            }
            None => None,
        };
        let pid_ns = PidNamespace::Join(format!("/proc/{init}/ns/pid").into());
        let ticket = self.exits.begin_spawn();
        let label = format!("{id}:{exec_id}");
        let mut guest = GuestProcess::spawn(&label, pid_ns, cgroup_fd).await?;
        let exit = self.exits.watch(&ticket, guest.pid);
        drop(ticket);
        let pid = guest.pid;
        if let Some(cg) = cgroup.filter(|_| !guest.born_in_cgroup) {
            let adopt = move || super::resources::lock(&cg).adopt(pid);
            if let Err(err) = super::blocking("move the exec into the cgroup", adopt).await {
                crate::container::kill(pid);
                return Err(err);
            }
        }
        match guest.prepare(&launch, stdout, stderr).await {
            Ok(Ready::Prepared { .. }) => {}
            Ok(Ready::Failed { kind, message }) => {
                return Err(Error::Guest {
                    kind: kind.into(),
                    message: format!("exec {exec_id}: {message}"),
                });
            }
            Err(err) => {
                crate::container::kill(pid);
                return Err(err);
            }
        }
        guest.start().await?;
        Ok(WasmExec { pid, exit, guest })
    }
}
