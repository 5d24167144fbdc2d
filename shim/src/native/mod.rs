//! Native containers: a container of a Wasm pod whose entrypoint is a native program (an ELF
//! binary or a `#!` script: a service-mesh proxy, a log agent, an init container, a
//! `kubectl debug` container) runs through runc with its bundle and spec unchanged, so it gets
//! exactly what its spec grants: the pod's namespaces, its cgroup, its capabilities, seccomp
//! and AppArmor profile, as under containerd's runc shim. Only the choice is this shim's
//! ([`choose`]); the container runtime is runc.

pub mod console;
pub mod runc;
mod stdin;
pub use stdin::Relay as StdinRelay;

use crate::bundle::Bundle;
use crate::error::{Error, Result};
use crate::exits::Exits;
use crate::state::Exit;
use runc::{Runc, Streams};
use std::fs::File;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;
use wasmtime_shim_runtime::Entrypoint;

/// Annotation that forces the executor of a container: `wasm`, `native` or `auto` (the
/// default). As a pod annotation it applies to every container of the pod;
/// `wasmtime.containerd.io/executor.<container name>` to one container.
pub const EXECUTOR: &str = "wasmtime.containerd.io/executor";
/// Annotation CRI sets to the container's name.
const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

/// What the choice of executor looks at, from the bundle.
pub struct Choice {
    pub annotations: std::collections::HashMap<String, String>,
    pub sandbox: bool,
    pub guest: wasmtime_shim_runtime::GuestSpec,
}

impl Choice {
    pub fn of(bundle: &Bundle) -> Choice {
        Choice {
            annotations: bundle.annotations.clone(),
            sandbox: bundle.sandbox,
            guest: bundle.guest.clone(),
        }
    }
}

/// Who runs a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    Wasm,
    Native,
}

/// Chooses the executor of the container in `bundle` (its rootfs mounted): the annotation if
/// set; a pod sandbox is always the built-in (Wasm) pause; otherwise native when the entrypoint
/// resolves (as for Wasm: absolute, relative to cwd, `PATH`, inside the rootfs and volumes) to
/// an ELF binary or a `#!` script, unless the container's `image` has Wasm layers (an index
/// whose native manifest was unpacked runs its Wasm one; an index whose Wasm manifest was not
/// pulled fails with what to pull), and Wasm in every other case (which then reports what is
/// wrong). Blocking: it may ask containerd about the image.
pub fn choose(bundle: &Choice, image: Option<&crate::image::ImageSource>) -> Result<Executor> {
    let name = bundle.annotations.get(CONTAINER_NAME);
    let forced = name
        .and_then(|n| bundle.annotations.get(&format!("{EXECUTOR}.{n}")))
        .or_else(|| bundle.annotations.get(EXECUTOR));
    match forced.map(String::as_str) {
        None | Some("auto") | Some("") => {}
        Some("wasm") => return Ok(Executor::Wasm),
        Some("native") if !bundle.sandbox => return Ok(Executor::Native),
        Some("native") => {
            return Err(Error::InvalidArgument(format!(
                "annotation {EXECUTOR}=native: a pod's sandbox always runs the built-in pause"
            )));
        }
        Some(other) => {
            return Err(Error::InvalidArgument(format!(
                "annotation {EXECUTOR}={other:?}: use wasm, native or auto"
            )));
        }
    }
    if bundle.sandbox {
        return Ok(Executor::Wasm);
    }
    match Entrypoint::probe(&bundle.guest) {
        Ok((_, kind)) if kind.is_native() => {}
        _ => return Ok(Executor::Wasm),
    }
    let Some(image) = image else {
        return Ok(Executor::Native);
    };
    match crate::image::find(image, &bundle.guest.args) {
        Ok(Some(_)) => Ok(Executor::Wasm),
        Ok(None) => Ok(Executor::Native),
        Err(err) => Err(Error::Guest {
            kind: err.kind(),
            message: err.to_string(),
        }),
    }
}

/// A started native exec.
pub struct NativeExec {
    pub pid: i32,
    pub exit: watch::Receiver<Option<Exit>>,
    /// The stdin relay, to drop at CloseIO.
    pub stdin_relay: Option<stdin::Relay>,
    /// The pty master, with a terminal (for ResizePty).
    pub console: Option<Arc<std::os::fd::OwnedFd>>,
}

/// A native container's init process, created by runc.
pub struct Native {
    pub runc: Runc,
    id: String,
    bundle: std::path::PathBuf,
    /// The relay feeding the init's stdin from containerd's FIFO; CloseIO drops it.
    stdin_relay: Mutex<Option<stdin::Relay>>,
    /// No pid namespace of its own (the pod's or the host's): its other processes outlive
    /// its init unless killed.
    shares_pid_ns: bool,
}

impl std::fmt::Debug for Native {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Native").field("id", &self.id).finish()
    }
}

/// What `runc create` left: the container and its init's pid and exit watch.
pub struct Created {
    pub native: Native,
    pub pid: i32,
    pub exit: watch::Receiver<Option<Exit>>,
}

impl Native {
    /// `runc create` of container `id` from `bundle`, with stdio from containerd's FIFOs (or
    /// log files), the init's pid read from runc's pid file and its exit watched from before
    /// runc ran.
    pub async fn create(
        exits: &Exits,
        id: &str,
        bundle: &Bundle,
        stdio: &crate::container::StdioPaths,
    ) -> Result<Created> {
        let systemd = bundle
            .cgroups_path
            .as_deref()
            .is_some_and(cgroups_rs::manager::is_systemd_cgroup);
        let runc = Runc::new(&bundle.path, systemd)?;
        let (stdin, stdin_relay) = stdin::open(&stdio.stdin)?.unzip();
        let streams = Streams {
            stdin,
            stdout: Some(crate::stdio::open_output("stdout", &stdio.stdout)?),
            stderr: Some(crate::stdio::open_output("stderr", &stdio.stderr)?),
        };
        let pid_file = bundle.path.join(crate::container::PID_FILE);
        let bundle_dir = bundle.path.to_string_lossy().into_owned();
        let pid_arg = pid_file.to_string_lossy().into_owned();
        let args = [
            "create",
            "--bundle",
            &bundle_dir,
            "--pid-file",
            &pid_arg,
            id,
        ];
        // One ticket from before runc runs until the init is watched: an init that dies at once
        // is kept for it.
        let ticket = exits.begin_spawn();
        runc.run(exits, &args, streams, false).await?;
        let pid = read_pid(&pid_file)
            .ok_or_else(|| Error::Internal(format!("runc create left no pid in {pid_arg}")))?;
        let exit = exits.watch(&ticket, pid);
        drop(ticket);
        Ok(Created {
            native: Native {
                runc,
                id: id.to_string(),
                bundle: bundle.path.clone(),
                stdin_relay: Mutex::new(stdin_relay),
                shares_pid_ns: !bundle.own_pid_ns,
            },
            pid,
            exit,
        })
    }

    pub async fn start(&self, exits: &Exits) -> Result<()> {
        self.runc
            .run(exits, &["start", &self.id], Streams::default(), false)
            .await
            .map(drop)
    }

    /// `runc kill [--all]`: `all` signals every process of the container.
    pub async fn kill(&self, exits: &Exits, signal: u32, all: bool) -> Result<()> {
        let signal = signal.to_string();
        let mut args = vec!["kill"];
        if all {
            args.push("--all");
        }
        args.extend([self.id.as_str(), signal.as_str()]);
        self.runc
            .run(exits, &args, Streams::default(), false)
            .await
            .map(drop)
    }

    /// `runc delete` (a created container's init is killed by it); `--force` when it may still
    /// run. Removes the container's cgroup and runc's state.
    pub async fn delete(&self, exits: &Exits, force: bool) -> Result<()> {
        let mut args = vec!["delete"];
        if force {
            args.push("--force");
        }
        args.push(&self.id);
        match self.runc.run(exits, &args, Streams::default(), false).await {
            Ok(_) | Err(Error::NotFound(_)) => Ok(()),
            // A container runc cannot delete plainly (a failed start, a stuck process): force.
            Err(err) if !force => {
                tracing::warn!(id = self.id, "runc delete failed, forcing it: {err}");
                let args = ["delete", "--force", self.id.as_str()];
                match self.runc.run(exits, &args, Streams::default(), false).await {
                    Ok(_) | Err(Error::NotFound(_)) => Ok(()),
                    Err(err) => Err(err),
                }
            }
            Err(err) => Err(err),
        }
    }

    pub async fn pause(&self, exits: &Exits, pause: bool) -> Result<()> {
        let verb = if pause { "pause" } else { "resume" };
        self.runc
            .run(exits, &[verb, &self.id], Streams::default(), false)
            .await
            .map(drop)
    }

    /// `runc update --resources -` with `resources` as JSON on stdin.
    pub async fn update(
        &self,
        exits: &Exits,
        resources: &oci_spec::runtime::LinuxResources,
    ) -> Result<()> {
        let json = serde_json::to_vec(resources)
            .map_err(|e| Error::Internal(format!("encode resources: {e}")))?;
        let stdin = pipe_with(&json)?;
        let streams = Streams {
            stdin: Some(stdin),
            ..Streams::default()
        };
        self.runc
            .run(
                exits,
                &["update", "--resources", "-", &self.id],
                streams,
                false,
            )
            .await
            .map(drop)
    }

    /// `runc exec --detach` of `process` (exec `exec_id`) in the container, with its own stdio;
    /// returns its pid, its exit watch (taken from before runc ran) and the stdin writer to hold
    /// until CloseIO.
    pub async fn exec(
        &self,
        exits: &Exits,
        exec_id: &str,
        process: &oci_spec::runtime::Process,
        stdio: &crate::container::StdioPaths,
    ) -> Result<NativeExec> {
        let console = match process.terminal().unwrap_or(false) {
            true => Some(console::ConsoleSocket::new()?),
            false => None,
        };
        let spec_file = self.bundle.join(format!("exec-{exec_id}.json"));
        let pid_file = self.bundle.join(format!("exec-{exec_id}.pid"));
        let json = serde_json::to_vec(process)
            .map_err(|e| Error::Internal(format!("encode the exec's process: {e}")))?;
        std::fs::write(&spec_file, json)
            .map_err(Error::io(format!("write {}", spec_file.display())))?;
        let (stdin, stdin_relay) = stdin::open(&stdio.stdin)?.unzip();
        let stdout = crate::stdio::open_output("stdout", &stdio.stdout)?;
        let (spec_arg, pid_arg) = (
            spec_file.to_string_lossy().into_owned(),
            pid_file.to_string_lossy().into_owned(),
        );
        let mut args = vec![
            "exec",
            "--process",
            &spec_arg,
            "--pid-file",
            &pid_arg,
            "--detach",
        ];
        let socket = console
            .as_ref()
            .map(|c| c.path().to_string_lossy().into_owned());
        // With a terminal, the process's stdio is the pty: the shim relays it to the FIFOs.
        let (streams, relay) = match &socket {
            Some(socket) => {
                args.extend(["--console-socket", socket.as_str()]);
                (Streams::default(), Some((stdout, stdin)))
            }
            None => {
                let stderr = crate::stdio::open_output("stderr", &stdio.stderr)?;
                let streams = Streams {
                    stdin,
                    stdout: Some(stdout),
                    stderr: Some(stderr),
                };
                (streams, None)
            }
        };
        args.push(&self.id);
        let receiving = console.map(|c| tokio::task::spawn_blocking(move || c.receive()));
        let ticket = exits.begin_spawn();
        let ran = self.runc.run(exits, &args, streams, false).await;
        let _ = std::fs::remove_file(&spec_file);
        let master = match receiving {
            Some(receiving) if ran.is_ok() => {
                Some(Arc::new(receiving.await.map_err(|e| {
                    Error::Internal(format!("receive the terminal: {e}"))
                })??))
            }
            Some(receiving) => {
                receiving.abort();
                None
            }
            None => None,
        };
        ran?;
        if let (Some(master), Some((stdout, stdin))) = (&master, relay) {
            console::relay(master.clone(), stdout, stdin)?;
        }
        let pid = read_pid(&pid_file);
        let _ = std::fs::remove_file(&pid_file);
        let pid =
            pid.ok_or_else(|| Error::Internal(format!("runc exec left no pid in {pid_arg}")))?;
        let exit = exits.watch(&ticket, pid);
        drop(ticket);
        Ok(NativeExec {
            pid,
            exit,
            stdin_relay,
            console: master,
        })
    }

    /// Whether the container has no pid namespace of its own.
    pub fn shares_pid_namespace(&self) -> bool {
        self.shares_pid_ns
    }

    /// Ends the init's stdin: it reads EOF.
    pub fn close_stdin(&self) {
        self.stdin_relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }
}

/// The pid runc wrote in `pid_file`.
fn read_pid(pid_file: &std::path::Path) -> Option<i32> {
    std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 0)
}

/// The read end of a pipe holding `bytes` (small: they fit the pipe's buffer).
fn pipe_with(bytes: &[u8]) -> Result<File> {
    let (read, write) = nix::unistd::pipe().map_err(|e| Error::io("create a pipe")(e.into()))?;
    let mut write = File::from(write);
    std::io::Write::write_all(&mut write, bytes).map_err(Error::io("fill a pipe"))?;
    Ok(File::from(read))
}
