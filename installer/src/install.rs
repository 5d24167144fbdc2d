//! `install` and `uninstall`: plan every change first (refusing before anything is written),
//! print it for `--dry-run`, then apply it in an order that a crash cannot turn into a broken
//! node: backups and the shim binary first, the drop-in before the `imports` line naming it,
//! the configuration last, and the state record with it.

use crate::Error;
use crate::config::{self, Registered, Runtime, Schema};
use crate::containerd::{self, Restart};
use crate::files::{Host, diff, sha256};
use crate::kube::{self, Cluster};
use crate::state::{self, ConfigRecord, FileRecord, ShimRecord, State};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The shim's binary name: containerd finds `io.containerd.wasmtime.v1` by it.
pub const SHIM_BINARY: &str = "containerd-shim-wasmtime-v1";

#[derive(Debug, Clone)]
pub struct Options {
    /// The host's root as this process sees it (`/host` in the DaemonSet).
    pub root: PathBuf,
    /// The rest are host paths.
    pub config: PathBuf,
    pub bin_dir: PathBuf,
    pub state_dir: PathBuf,
    /// The drop-in for version 3 configurations; default `<config dir>/conf.d/wasmtime-shim.toml`.
    pub dropin: Option<PathBuf>,
    pub containerd_bin: Option<PathBuf>,
    /// containerd's socket, to wait on after a restart; default the config's `grpc.address`.
    pub address: Option<PathBuf>,
    /// The shim binary to install (a path in this process's file system).
    pub shim: PathBuf,
    pub handler: String,
    /// `None`: follow the `runc` handler's `SystemdCgroup` (false when unset, containerd's default).
    pub systemd_cgroup: Option<bool>,
    pub restart: Restart,
    pub unit: String,
    pub ready_timeout: Duration,
    pub dry_run: bool,
    /// Label the node (when in a cluster).
    pub cluster: Option<Cluster>,
}

/// What a run did (or, with `--dry-run`, would do).
#[derive(Debug, Default)]
pub struct Outcome {
    /// One line per change, for people.
    pub changes: Vec<String>,
    /// Unified diffs of the text files.
    pub diff: String,
    /// Warnings: things left alone on purpose.
    pub warnings: Vec<String>,
    pub restarted: bool,
    /// containerd's version after the restart.
    pub ready: Option<String>,
}

impl Outcome {
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }
}

pub(crate) struct Write {
    pub path: PathBuf,
    pub before: Option<Vec<u8>>,
    pub after: Option<Vec<u8>>,
    pub mode: Option<u32>,
}

impl Write {
    pub(crate) fn describe(&self, out: &mut Outcome, text: bool) {
        let p = self.path.display();
        out.changes.push(match (&self.before, &self.after) {
            (None, Some(_)) => format!("create {p}"),
            (Some(_), None) => format!("remove {p}"),
            _ => format!("update {p}"),
        });
        if text {
            let s =
                |b: &Option<Vec<u8>>| b.as_ref().map(|b| String::from_utf8_lossy(b).into_owned());
            out.diff += &diff(
                &p.to_string(),
                s(&self.before).as_deref(),
                s(&self.after).as_deref(),
            );
        }
    }

    pub(crate) fn apply(&self, host: &Host) -> Result<(), Error> {
        match &self.after {
            Some(b) => host.write_atomic(&self.path, b, self.mode),
            None => host.remove(&self.path),
        }
    }
}

fn config_dir(path: &Path) -> String {
    path.parent()
        .map_or("/".into(), |p| p.display().to_string())
}

fn grpc_address(doc: &toml_edit::DocumentMut) -> PathBuf {
    doc.get("grpc")
        .and_then(|g| g.get("address"))
        .and_then(|a| a.as_str())
        .map_or_else(
            || PathBuf::from("/run/containerd/containerd.sock"),
            PathBuf::from,
        )
}

pub fn install(o: &Options) -> Result<Outcome, Error> {
    let host = Host::new(&o.root);
    let bin = containerd::find_binary(&host, o.containerd_bin.as_deref())?;
    let release = containerd::release(&host, &bin)?;
    let schemas = release
        .schemas()
        .ok_or_else(|| Error::UnknownContainerd(format!("containerd {release}")))?;
    let previous = State::load(&host, &o.state_dir)?;

    let original = host.read(&o.config)?;
    let (text, created) = match &original {
        Some(b) => (
            String::from_utf8(b.clone()).map_err(|_| {
                Error::InvalidConfig(format!("{} is not UTF-8", o.config.display()))
            })?,
            false,
        ),
        None => (containerd::default_config(&host, &bin)?, true),
    };
    let doc = config::parse(&text)?;
    let schema = config::schema(&doc)?;
    if !schemas.contains(&schema) {
        return Err(Error::SchemaMismatch {
            release: release.to_string(),
            schema: schema.number(),
        });
    }
    let rt = Runtime {
        handler: o.handler.clone(),
        systemd_cgroup: o
            .systemd_cgroup
            .unwrap_or_else(|| config::runc_systemd_cgroup(&doc, schema).unwrap_or(false)),
    };
    // Settled before anything is written: a node we cannot restart is refused untouched.
    let restart = o.restart.resolve(&host)?;

    let mut record = previous.clone().unwrap_or_default();
    record.handler = o.handler.clone();
    let mut writes = Vec::new();
    let mut new_config: Option<String> = None;
    let mut config_record = ConfigRecord {
        path: o.config.clone(),
        created,
        installed_sha256: String::new(),
        schema: schema.number(),
        runtime_added: false,
        default_runtime_added: false,
        import_added: None,
        imports_created: false,
    };
    let mut out = Outcome::default();
    let registered = config::registered(&doc, schema, &rt);
    match (schema, registered) {
        (_, Registered::Other(t)) => return Err(Error::HandlerTaken(o.handler.clone(), t)),
        (_, Registered::Same) => {}
        (Schema::V2, r) | (Schema::V3, r @ Registered::Differs) => {
            config_record.runtime_added = r == Registered::No;
            config_record.default_runtime_added =
                r == Registered::No && config::missing_default_runtime(&doc, schema);
            if config_record.default_runtime_added {
                out.warnings.push(
                    "also wrote containerd's built-in `runc` runtime entry: containerd 1.x drops \
                     it when the runtimes table names only other runtimes"
                        .into(),
                );
            }
            new_config = config::with_runtime(&text, schema, &rt)?;
        }
        (Schema::V3, Registered::No) => {
            let path = o.dropin.clone().unwrap_or_else(|| {
                Path::new(&config_dir(&o.config)).join("conf.d/wasmtime-shim.toml")
            });
            let content = config::dropin(&rt)?.into_bytes();
            let before = host.read(&path)?;
            if before.as_deref() != Some(&content[..]) {
                writes.push(Write {
                    path: path.clone(),
                    before,
                    after: Some(content.clone()),
                    mode: Some(0o644),
                });
            }
            let dir = path.parent().map(Path::to_path_buf);
            let created_dir = match (&record.dropin, dir) {
                (Some(r), _) if r.path == path => r.created_dir.clone(),
                (_, Some(d)) if !host.path(&d).exists() => Some(d),
                _ => None,
            };
            record.dropin = Some(FileRecord {
                path: path.clone(),
                sha256: sha256(&content),
                created_dir,
            });
            let entry = path.display().to_string();
            if !config::imported(&doc, &config_dir(&o.config), &entry) {
                config_record.imports_created = doc.get("imports").is_none();
                config_record.import_added = Some(entry.clone());
                new_config = Some(config::with_import(&text, &entry)?);
            }
        }
    }
    if created && new_config.is_none() {
        new_config = Some(text.clone());
    }

    // The shim binary, replaced only when its content differs.
    let shim =
        std::fs::read(&o.shim).map_err(|e| Error::io(format!("read {}", o.shim.display()), e))?;
    let shim_path = o.bin_dir.join(SHIM_BINARY);
    let current = host.read(&shim_path)?;
    let mut save_previous = None;
    if current.as_deref() != Some(&shim[..]) {
        let ours = |b: &[u8]| record.shim.as_ref().is_some_and(|s| s.sha256 == sha256(b));
        let keeps_previous = record.shim.as_ref().is_some_and(|s| s.previous);
        if let Some(cur) = current.as_ref().filter(|c| !ours(c) && !keeps_previous) {
            save_previous = Some(cur.clone());
            out.warnings.push(format!(
                "{} held another binary; kept to be restored by uninstall",
                shim_path.display()
            ));
        }
        writes.insert(
            0,
            Write {
                path: shim_path.clone(),
                before: current,
                after: Some(shim.clone()),
                mode: Some(0o755),
            },
        );
    }
    record.shim = Some(ShimRecord {
        path: shim_path.clone(),
        sha256: sha256(&shim),
        previous: save_previous.is_some() || record.shim.as_ref().is_some_and(|s| s.previous),
    });

    let config_changed = new_config.is_some();
    if let Some(new) = &new_config {
        config_record.installed_sha256 = sha256(new.as_bytes());
        record.config = Some(config_record);
        writes.push(Write {
            path: o.config.clone(),
            before: original.clone(),
            after: Some(new.clone().into_bytes()),
            mode: None,
        });
    }
    // Every write but the shim's is containerd's configuration: it needs a restart.
    let touches_containerd = writes.iter().any(|w| w.path != shim_path);
    for w in &writes {
        w.describe(&mut out, w.path != shim_path);
    }
    if o.dry_run {
        if touches_containerd && restart != Restart::Never {
            out.changes
                .push(format!("restart containerd ({})", describe(&restart)));
        }
        return Ok(out);
    }

    if let Some(prev) = save_previous {
        host.write_atomic(&o.state_dir.join(state::SHIM_BACKUP), &prev, Some(0o755))?;
    }
    if config_changed && let Some(orig) = &original {
        host.write_atomic(&o.state_dir.join(state::CONFIG_BACKUP), orig, Some(0o600))?;
    }
    for w in &writes {
        w.apply(&host)?;
        if w.path == shim_path
            && let Err(e) = check_shim_runs(&host, w)
        {
            if previous.is_none() {
                State::clear(&host, &o.state_dir)?;
            }
            return Err(e);
        }
    }
    if Some(&record) != previous.as_ref() {
        record.save(&host, &o.state_dir)?;
    }
    if touches_containerd {
        restart_and_wait(&host, o, &restart, &doc, Some(&o.handler), &mut out)?;
    }
    if let Some(cluster) = &o.cluster {
        cluster.label(Some("true"))?;
        if record.node.as_deref() != Some(&cluster.node) {
            record.node = Some(cluster.node.clone());
            record.save(&host, &o.state_dir)?;
        }
        out.warnings.push(format!(
            "node {} labelled {}=true",
            cluster.node,
            kube::LABEL
        ));
    }
    Ok(out)
}

/// Runs the shim just copied on the host (`-v`): a binary whose libraries the host lacks (for
/// example libseccomp, or an older glibc) is taken back out, with nothing registered.
fn check_shim_runs(host: &Host, w: &Write) -> Result<(), Error> {
    let out = containerd::host_command(host, &w.path).arg("-v").output();
    let failure = match out {
        Ok(o) if o.status.success() => return Ok(()),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    let undo = Write {
        path: w.path.clone(),
        before: None,
        after: w.before.clone(),
        mode: Some(0o755),
    };
    undo.apply(host)?;
    Err(Error::ShimDoesNotRun(w.path.display().to_string(), failure))
}

pub(crate) fn describe(r: &Restart) -> String {
    match r {
        Restart::Systemd | Restart::Auto => "systemctl restart".into(),
        Restart::Command(c) => format!("`{c}`"),
        Restart::Never => "not restarted".into(),
    }
}

/// Restarts containerd and waits until it answers, and (after an install) until CRI knows the
/// handler.
pub(crate) fn restart_and_wait(
    host: &Host,
    o: &Options,
    restart: &Restart,
    doc: &toml_edit::DocumentMut,
    handler: Option<&str>,
    out: &mut Outcome,
) -> Result<(), Error> {
    if *restart == Restart::Never {
        out.warnings
            .push("containerd's configuration changed: restart containerd to apply it".into());
        return Ok(());
    }
    restart.run(host, &o.unit)?;
    out.restarted = true;
    out.changes
        .push(format!("restarted containerd ({})", describe(restart)));
    let socket = host.path(&o.address.clone().unwrap_or_else(|| grpc_address(doc)));
    out.ready = Some(containerd::wait_ready(&socket, handler, o.ready_timeout)?);
    Ok(())
}
