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

struct Write {
    path: PathBuf,
    before: Option<Vec<u8>>,
    after: Option<Vec<u8>>,
    mode: Option<u32>,
}

impl Write {
    fn describe(&self, out: &mut Outcome, text: bool) {
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

    fn apply(&self, host: &Host) -> Result<(), Error> {
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
        (Schema::V2, r) | (Schema::V3, r @ Registered::DriverDiffers) => {
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
        path: shim_path,
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
    for w in &writes {
        let text = w.path
            != record
                .shim
                .as_ref()
                .map_or(PathBuf::new(), |s| s.path.clone());
        w.describe(&mut out, text);
    }
    let touches_containerd = writes.iter().any(|w| {
        w.path
            != record
                .shim
                .as_ref()
                .map_or(PathBuf::new(), |s| s.path.clone())
    });
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

fn describe(r: &Restart) -> String {
    match r {
        Restart::Systemd | Restart::Auto => "systemctl restart".into(),
        Restart::Command(c) => format!("`{c}`"),
        Restart::Never => "not restarted".into(),
    }
}

/// Restarts containerd and waits until it answers, and (after an install) until CRI knows the
/// handler.
fn restart_and_wait(
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

pub fn uninstall(o: &Options) -> Result<Outcome, Error> {
    let host = Host::new(&o.root);
    let mut out = Outcome::default();
    let Some(record) = State::load(&host, &o.state_dir)? else {
        out.warnings.push(format!(
            "nothing to uninstall: no installer state in {}",
            o.state_dir.display()
        ));
        return Ok(out);
    };
    let restart = o.restart.resolve(&host)?;
    let mut writes = Vec::new();
    let mut doc_for_address = None;
    if let Some(c) = &record.config {
        let current = host.read(&c.path)?;
        match current {
            None => out
                .warnings
                .push(format!("{} is gone; left as is", c.path.display())),
            Some(cur) if sha256(&cur) == c.installed_sha256 => {
                let after = if c.created {
                    None
                } else {
                    let backup = o.state_dir.join(state::CONFIG_BACKUP);
                    Some(host.read(&backup)?.ok_or_else(|| {
                        Error::State(
                            o.state_dir.clone(),
                            format!("{} is missing", backup.display()),
                        )
                    })?)
                };
                doc_for_address = config::parse(&String::from_utf8_lossy(&cur)).ok();
                writes.push(Write {
                    path: c.path.clone(),
                    before: Some(cur),
                    after,
                    mode: None,
                });
            }
            Some(cur) => {
                // Changed since the install: take out only the installer's entries.
                let text = String::from_utf8_lossy(&cur).into_owned();
                let schema = if c.schema == 3 {
                    Schema::V3
                } else {
                    Schema::V2
                };
                let mut new = text.clone();
                if c.runtime_added {
                    new = config::without_runtime(&new, schema, &record.handler)?.unwrap_or(new);
                }
                if c.default_runtime_added {
                    new = config::without_runtime(&new, schema, "runc")?.unwrap_or(new);
                }
                if let Some(entry) = &c.import_added {
                    new = config::without_import(&new, entry, c.imports_created)?.unwrap_or(new);
                }
                out.warnings.push(format!(
                    "{} changed after the install: removed only the installer's entries, so it is \
                     not byte-identical to the backup in {}",
                    c.path.display(),
                    o.state_dir.display()
                ));
                doc_for_address = config::parse(&new).ok();
                if new != text {
                    writes.push(Write {
                        path: c.path.clone(),
                        before: Some(cur),
                        after: Some(new.into_bytes()),
                        mode: None,
                    });
                }
            }
        }
    }
    if let Some(d) = &record.dropin {
        match host.read(&d.path)? {
            Some(cur) if sha256(&cur) == d.sha256 => {
                writes.push(Write {
                    path: d.path.clone(),
                    before: Some(cur),
                    after: None,
                    mode: None,
                });
            }
            Some(_) => out.warnings.push(format!(
                "{} was edited after the install; left as is",
                d.path.display()
            )),
            None => {}
        }
    }
    let containerd_writes = writes.len();
    if let Some(s) = &record.shim {
        match host.read(&s.path)? {
            Some(cur) if sha256(&cur) == s.sha256 => {
                let after = if s.previous {
                    host.read(&o.state_dir.join(state::SHIM_BACKUP))?
                } else {
                    None
                };
                writes.push(Write {
                    path: s.path.clone(),
                    before: Some(cur),
                    after,
                    mode: Some(0o755),
                });
            }
            Some(_) => out.warnings.push(format!(
                "{} was replaced after the install; left as is",
                s.path.display()
            )),
            None => {}
        }
    }
    for (i, w) in writes.iter().enumerate() {
        w.describe(&mut out, i < containerd_writes);
    }
    if o.dry_run {
        if containerd_writes > 0 && restart != Restart::Never {
            out.changes
                .push(format!("restart containerd ({})", describe(&restart)));
        }
        return Ok(out);
    }
    // The configuration before the drop-in it imports, the shim last.
    for w in &writes {
        w.apply(&host)?;
    }
    if containerd_writes > 0 {
        let doc = doc_for_address.unwrap_or_default();
        restart_and_wait(&host, o, &restart, &doc, None, &mut out)?;
    }
    if let (Some(cluster), Some(_)) = (&o.cluster, &record.node) {
        cluster.label(None)?;
        out.changes.push(format!(
            "removed label {} from node {}",
            kube::LABEL,
            cluster.node
        ));
    }
    if let Some(dir) = record.dropin.as_ref().and_then(|d| d.created_dir.as_ref()) {
        // Only when empty: anything else put there since is not ours to remove.
        let _ = std::fs::remove_dir(host.path(dir));
    }
    State::clear(&host, &o.state_dir)?;
    Ok(out)
}
