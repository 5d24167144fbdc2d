//! runc, the node's OCI runtime, driven as containerd's own runc shim drives it: the binary with
//! `--root`, `--log <bundle>/log.json --log-format json` and `--systemd-cgroup` for a cgroups path
//! in systemd form, one command per operation. Every runc process (and every container process
//! that outlives it and reparents to this shim, a child subreaper) is reaped by the shim crate's
//! reaper; its status comes through [`Exits`], never through `wait`.

use crate::error::{Error, Result};
use crate::exits::{self, Exits};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// How to run runc for one container.
#[derive(Debug, Clone)]
pub struct Runc {
    binary: PathBuf,
    root: PathBuf,
    log: PathBuf,
    systemd_cgroup: bool,
}

/// Standard streams for a runc command; `None` is `/dev/null`.
#[derive(Default)]
pub struct Streams {
    pub stdin: Option<File>,
    pub stdout: Option<File>,
    pub stderr: Option<File>,
}

impl Runc {
    /// runc for the container whose bundle is `bundle`
    /// (`<state>/io.containerd.runtime.v2.task/<namespace>/<id>`): its state under
    /// `/run/containerd/runc/<namespace>`, where containerd's runc shim keeps it
    /// (`WASMTIME_SHIM_RUNC_ROOT` overrides the directory; runc puts a unix socket in it, so it
    /// must be short), the binary from `WASMTIME_SHIM_RUNC` or the `PATH`.
    pub fn new(bundle: &Path, systemd_cgroup: bool) -> Result<Runc> {
        Ok(Runc {
            binary: binary()?,
            root: root(bundle),
            log: bundle.join("log.json"),
            systemd_cgroup,
        })
    }

    /// Runs `runc <global flags> args...` with `streams` (stdout captured if `None` there and
    /// `capture` is set), waits for it through `exits`, and returns what it printed. A failure
    /// carries runc's last logged error.
    pub async fn run(
        &self,
        exits: &Exits,
        args: &[&str],
        streams: Streams,
        capture: bool,
    ) -> Result<Vec<u8>> {
        let what = args.first().copied().unwrap_or("runc");
        let mut command = Command::new(&self.binary);
        command
            .arg("--root")
            .arg(&self.root)
            .arg("--log")
            .arg(&self.log)
            .args(["--log-format", "json"]);
        if self.systemd_cgroup {
            command.arg("--systemd-cgroup");
        }
        command.args(args);
        // containerd run by systemd (Type=notify) has NOTIFY_SOCKET, which shims inherit: runc
        // would then proxy sd_notify and `runc start` wait for the container to say READY=1.
        command.env_remove("NOTIFY_SOCKET");
        command.stdin(streams.stdin.map_or_else(Stdio::null, Stdio::from));
        command.stdout(match streams.stdout {
            Some(file) => Stdio::from(file),
            None if capture => Stdio::piped(),
            None => Stdio::null(),
        });
        command.stderr(match streams.stderr {
            Some(file) => Stdio::from(file),
            None => Stdio::piped(),
        });
        let ticket = exits.begin_spawn();
        let mut child = command
            .spawn()
            .map_err(Error::io(format!("run {} {what}", self.binary.display())))?;
        let exit = exits.watch(&ticket, child.id() as i32);
        drop(ticket);
        let (stdout, stderr) = (child.stdout.take(), child.stderr.take());
        // The reaper collects runc's status: `child` is dropped, never waited for.
        drop(child);
        let (out, err) = tokio::task::spawn_blocking(move || (read_all(stdout), read_all(stderr)))
            .await
            .map_err(|e| Error::Internal(format!("runc {what}: {e}")))?;
        let status = exits::wait(exit)
            .await
            .ok_or_else(|| Error::Internal(format!("runc {what}: its exit status was lost")))?;
        if status.status == 0 {
            return Ok(out);
        }
        let message = last_error(&self.log)
            .or_else(|| {
                let text = String::from_utf8_lossy(&err).trim().to_string();
                (!text.is_empty()).then_some(text)
            })
            .unwrap_or_else(|| format!("exit status {}", status.status));
        Err(runc_error(what, message))
    }
}

/// All of `pipe` (empty if there is none or it fails).
fn read_all(pipe: Option<impl Read>) -> Vec<u8> {
    let mut out = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut out);
    }
    out
}

/// runc's state directory for the containers of `bundle`'s namespace.
fn root(bundle: &Path) -> PathBuf {
    if let Some(root) = std::env::var_os("WASMTIME_SHIM_RUNC_ROOT") {
        return PathBuf::from(root);
    }
    let namespace = bundle
        .parent()
        .and_then(Path::file_name)
        .map_or_else(|| "default".into(), |n| n.to_string_lossy().into_owned());
    Path::new("/run/containerd/runc").join(namespace)
}

/// For the `delete` action after a shim died: `runc delete --force` of the native container of
/// `bundle` (named by its last component), if runc has one, which kills its processes and removes
/// its cgroup; then whatever runc left of its state. This process has no reaper: runc is waited
/// for directly.
pub fn remove_leftover(bundle: &Path) {
    let Some(id) = bundle.file_name() else {
        return;
    };
    let root = root(bundle);
    let dir = root.join(id);
    if !dir.exists() {
        return;
    }
    if let Ok(binary) = binary() {
        let deleted = Command::new(binary)
            .arg("--root")
            .arg(&root)
            .args(["delete", "--force"])
            .arg(id)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Err(e) = deleted {
            eprintln!("delete: runc delete --force: {e}");
        }
    }
    if dir.exists() {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// runc's message as an error of the kind containerd expects for it.
fn runc_error(what: &str, message: String) -> Error {
    let gone = [
        "not running",
        "does not exist",
        "process already finished",
        "no such process",
    ];
    if gone.iter().any(|g| message.contains(g)) {
        Error::NotFound(format!("runc {what}: {message}"))
    } else if what == "create" || what == "exec" {
        Error::FailedPrecondition(format!("OCI runtime {what} failed: {message}"))
    } else {
        Error::Internal(format!("runc {what}: {message}"))
    }
}

/// The message of the last `"level":"error"` line of runc's JSON log.
fn last_error(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines().rev().find_map(|line| {
        let entry: serde_json::Value = serde_json::from_str(line).ok()?;
        (entry.get("level")?.as_str()? == "error")
            .then(|| entry.get("msg")?.as_str().map(str::to_string))?
    })
}

/// The runc binary: `WASMTIME_SHIM_RUNC`, else `runc` on the `PATH`, as an absolute path (so
/// spawning it never has to search).
fn binary() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WASMTIME_SHIM_RUNC") {
        return Ok(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("runc"))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| {
            Error::FailedPrecondition(
                "native containers run with runc, which is not on the shim's PATH (install \
                 runc, or set WASMTIME_SHIM_RUNC)"
                    .into(),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_logged_error_is_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        std::fs::write(
            &log,
            "{\"level\":\"error\",\"msg\":\"first\"}\nnot json\n\
             {\"level\":\"error\",\"msg\":\"exec: \\\"/bin/nope\\\": no such file\"}\n\
             {\"level\":\"warning\",\"msg\":\"later warning\"}\n",
        )
        .unwrap();
        assert_eq!(
            last_error(&log).as_deref(),
            Some("exec: \"/bin/nope\": no such file")
        );
        assert_eq!(last_error(&dir.path().join("missing")), None);
    }

    #[test]
    fn gone_containers_are_not_found() {
        assert!(matches!(
            runc_error("kill", "container not running".into()),
            Error::NotFound(_)
        ));
        assert!(matches!(
            runc_error("create", "bad mount".into()),
            Error::FailedPrecondition(_)
        ));
    }
}
