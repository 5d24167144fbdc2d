//! `uninstall`: takes back what the install record says `install` did. While the
//! configuration still has the bytes the installer wrote, the backup goes back byte for byte;
//! a file edited since keeps the edits and loses only the installer's entries. Files changed by
//! someone else since (the drop-in, the shim binary) are left, with a note.

use crate::Error;
use crate::config::{self, Schema};
use crate::containerd::Restart;
use crate::files::{Host, sha256};
use crate::install::{Options, Outcome, Write, describe, restart_and_wait};
use crate::kube;
use crate::state::{self, State};

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
