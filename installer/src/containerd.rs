//! The node's containerd: which version it is, restarting it, and waiting until it answers
//! with the handler loaded.

use crate::Error;
use crate::config::Schema;
use crate::files::Host;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Where containerd is usually installed, searched in this order.
const BIN_CANDIDATES: [&str; 5] = [
    "/usr/local/bin/containerd",
    "/usr/bin/containerd",
    "/usr/local/sbin/containerd",
    "/usr/sbin/containerd",
    "/opt/bin/containerd",
];

/// A containerd release line the installer knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub major: u32,
    pub minor: u32,
}

impl Release {
    /// Parses `containerd --version` output, e.g.
    /// `containerd github.com/containerd/containerd 1.6.20~ds1 …` or `… v2.1.9 …`.
    pub fn parse(output: &str) -> Option<Release> {
        output.split_whitespace().skip(1).find_map(|word| {
            let v = word.strip_prefix('v').unwrap_or(word);
            let mut parts = v.split(['.', '~', '-', '+']);
            let major = parts.next()?.parse().ok()?;
            let minor = parts.next()?.parse().ok()?;
            Some(Release { major, minor })
        })
    }

    /// The configuration schemas this release reads. `None`: a release the installer was not
    /// written for (refused, so nothing is changed on a guess).
    pub fn schemas(self) -> Option<&'static [Schema]> {
        match (self.major, self.minor) {
            (1, 6) | (1, 7) => Some(&[Schema::V2]),
            // containerd 2 migrates version 2 files when it loads them.
            (2, 0..=2) => Some(&[Schema::V3, Schema::V2]),
            _ => None,
        }
    }

    /// The schema a new configuration file gets.
    pub fn default_schema(self) -> Schema {
        if self.major >= 2 {
            Schema::V3
        } else {
            Schema::V2
        }
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// A host program run on the host. When the host root is not ours (the DaemonSet), the program
/// runs in the mount namespace of PID 1 if that is the host's init (the pod has `hostPID`), so
/// that `systemctl` does not see a chroot and refuse; otherwise chrooted into the host root.
pub fn host_command(host: &Host, program: &Path) -> Command {
    if host.is_own_root() {
        return Command::new(program);
    }
    if init_root_is(host.root())
        && let Ok(ns) = std::fs::File::open("/proc/1/ns/mnt")
    {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        // SAFETY: between fork and exec only setns(2) and chdir(2) run, both async-signal-safe;
        // the forked child is single-threaded, as setns into a mount namespace requires.
        unsafe {
            c.pre_exec(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
                nix::unistd::chdir("/")?;
                Ok(())
            });
        }
        return c;
    }
    use std::os::unix::process::CommandExt;
    let root = host.root().to_path_buf();
    let mut c = Command::new(program);
    // SAFETY: between fork and exec only chroot(2) and chdir(2) run, both async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            nix::unistd::chroot(&root)?;
            nix::unistd::chdir("/")?;
            Ok(())
        });
    }
    c
}

/// Whether PID 1's root directory is `root` (same device and inode).
fn init_root_is(root: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata("/proc/1/root"), std::fs::metadata(root)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

/// The containerd binary: `explicit`, else the first of the usual places that exists.
pub fn find_binary(host: &Host, explicit: Option<&Path>) -> Result<PathBuf, Error> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    BIN_CANDIDATES
        .iter()
        .map(PathBuf::from)
        .find(|p| host.path(p).is_file())
        .ok_or_else(|| {
            Error::UnknownContainerd(format!(
                "no containerd binary in {}; pass --containerd-bin",
                BIN_CANDIDATES.join(", ")
            ))
        })
}

fn run(host: &Host, bin: &Path, args: &[&str]) -> Result<String, Error> {
    let out = host_command(host, bin)
        .args(args)
        .output()
        .map_err(|e| Error::io(format!("run {}", bin.display()), e))?;
    if !out.status.success() {
        return Err(Error::Command(
            format!("{} {}", bin.display(), args.join(" ")),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The release of the host's containerd binary.
pub fn release(host: &Host, bin: &Path) -> Result<Release, Error> {
    let out = run(host, bin, &["--version"])?;
    Release::parse(&out).ok_or_else(|| Error::UnknownContainerd(out.trim().to_string()))
}

/// containerd's default configuration, for a node that has no configuration file.
pub fn default_config(host: &Host, bin: &Path) -> Result<String, Error> {
    run(host, bin, &["config", "default"])
}

/// How containerd is restarted after its configuration changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Restart {
    /// systemd when the host booted with it, else refuse (before changing anything).
    Auto,
    Systemd,
    /// A shell command run in the host root, e.g. `rc-service containerd restart`.
    Command(String),
    /// Do not restart; print that a restart is needed.
    Never,
}

impl Restart {
    /// Settles `Auto` for this host, the way `sd_booted()` tells whether systemd runs it.
    pub fn resolve(&self, host: &Host) -> Result<Restart, Error> {
        match self {
            Restart::Auto if host.path(Path::new("/run/systemd/system")).is_dir() => {
                Ok(Restart::Systemd)
            }
            Restart::Auto => Err(Error::NoRestartMethod),
            other => Ok(other.clone()),
        }
    }

    pub fn run(&self, host: &Host, unit: &str) -> Result<(), Error> {
        match self {
            Restart::Systemd => run(host, Path::new("systemctl"), &["restart", unit]).map(drop),
            Restart::Command(cmd) => run(host, Path::new("/bin/sh"), &["-c", cmd]).map(drop),
            Restart::Never | Restart::Auto => Ok(()),
        }
    }
}

/// Waits until containerd answers on `socket` (its Version API), and, with `handler` and the CRI
/// plugin on, until CRI reports a configuration with that handler. Returns the daemon's version.
pub fn wait_ready(
    socket: &Path,
    handler: Option<&str>,
    timeout: Duration,
) -> Result<String, Error> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("start the async runtime".into(), e))?;
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        match rt.block_on(probe(socket, handler)) {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Err(Error::NotReady(socket.display().to_string(), last))
}

async fn probe(socket: &Path, handler: Option<&str>) -> Result<String, String> {
    use containerd_client::services::v1::version_client::VersionClient;
    use k8s_cri::v1::StatusRequest;
    use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;

    let channel = containerd_client::connect(socket)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let version = VersionClient::new(channel.clone())
        .version(())
        .await
        .map_err(|e| format!("Version: {}", e.message()))?
        .into_inner()
        .version;
    let Some(handler) = handler else {
        return Ok(version);
    };
    let status = RuntimeServiceClient::new(channel)
        .status(StatusRequest { verbose: true })
        .await;
    match status {
        // CRI plugin disabled on this node: nothing more to check.
        Err(e) if e.code() == tonic::Code::Unimplemented => Ok(version),
        Err(e) => Err(format!("CRI Status: {}", e.message())),
        Ok(s) => {
            let info = s.into_inner().info;
            let config = info.get("config").map(String::as_str).unwrap_or("");
            if cri_knows_handler(config, handler) {
                Ok(version)
            } else {
                Err(format!(
                    "CRI's configuration has no runtime handler {handler:?} yet"
                ))
            }
        }
    }
}

/// Whether CRI's verbose status configuration (JSON) lists `handler` among its runtimes.
pub fn cri_knows_handler(config_json: &str, handler: &str) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(config_json) else {
        return false;
    };
    v.pointer("/containerd/runtimes")
        .and_then(|r| r.get(handler))
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_from_version_output() {
        let cases = [
            (
                "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3",
                Some((1, 6)),
            ),
            (
                "containerd github.com/containerd/containerd/v2 2.1.9+unknown ",
                Some((2, 1)),
            ),
            ("containerd containerd.io v1.7.24 88bf19b2", Some((1, 7))),
            (
                "containerd github.com/containerd/containerd v2.0.0 207ad71",
                Some((2, 0)),
            ),
            ("something else", None),
        ];
        for (out, want) in cases {
            let got = Release::parse(out).map(|r| (r.major, r.minor));
            assert_eq!(got, want, "{out}");
        }
    }

    #[test]
    fn unknown_releases_have_no_schema() {
        let r = |major, minor| Release { major, minor };
        assert_eq!(r(1, 6).schemas(), Some(&[Schema::V2][..]));
        assert_eq!(r(2, 1).schemas(), Some(&[Schema::V3, Schema::V2][..]));
        assert_eq!(r(1, 5).schemas(), None);
        assert_eq!(r(3, 0).schemas(), None);
        assert_eq!(r(2, 1).default_schema(), Schema::V3);
    }

    #[test]
    fn handler_is_found_in_cri_status_config() {
        let cfg = r#"{"containerd":{"runtimes":{"runc":{},"wasmtime":{"runtimeType":"io.containerd.wasmtime.v1"}}}}"#;
        assert!(cri_knows_handler(cfg, "wasmtime"));
        assert!(!cri_knows_handler(cfg, "spin"));
        assert!(!cri_knows_handler("not json", "wasmtime"));
    }

    #[test]
    fn auto_restart_needs_systemd() {
        let d = tempfile::tempdir().unwrap();
        let host = Host::new(d.path());
        assert!(matches!(
            Restart::Auto.resolve(&host),
            Err(Error::NoRestartMethod)
        ));
        std::fs::create_dir_all(d.path().join("run/systemd/system")).unwrap();
        assert_eq!(Restart::Auto.resolve(&host).unwrap(), Restart::Systemd);
    }
}
