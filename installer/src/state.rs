//! What an install changed, kept on the host so `uninstall` can take back exactly that: the
//! original configuration (a byte-for-byte backup), what was added to it, the drop-in, and the
//! shim binary (with the one it replaced, if any).

use crate::Error;
use crate::files::Host;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct State {
    pub handler: String,
    /// The configuration file, when the installer changed (or created) it.
    pub config: Option<ConfigRecord>,
    pub dropin: Option<FileRecord>,
    pub shim: Option<ShimRecord>,
    /// The node labelled in-cluster.
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigRecord {
    pub path: PathBuf,
    /// No file existed: the installer wrote containerd's default one; uninstall removes it.
    pub created: bool,
    /// The digest of what the installer wrote: while the file still has it, uninstall puts
    /// the backup back byte for byte.
    pub installed_sha256: String,
    pub schema: i64,
    /// The handler table the installer added in place (version 2).
    pub runtime_added: bool,
    /// The `runc` entry written with it (see `config::missing_default_runtime`).
    #[serde(default)]
    pub default_runtime_added: bool,
    /// The `imports` entry the installer added (version 3), and whether it created `imports`.
    pub import_added: Option<String>,
    pub imports_created: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileRecord {
    pub path: PathBuf,
    pub sha256: String,
    /// The directory the installer created for it (removed with it when left empty).
    #[serde(default)]
    pub created_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimRecord {
    pub path: PathBuf,
    pub sha256: String,
    /// A different binary was at `path` before: kept as `shim.previous`, restored by uninstall.
    pub previous: bool,
}

pub const STATE: &str = "state.json";
pub const CONFIG_BACKUP: &str = "config.toml.orig";
pub const SHIM_BACKUP: &str = "shim.previous";

impl State {
    pub fn load(host: &Host, dir: &Path) -> Result<Option<State>, Error> {
        let Some(bytes) = host.read(&dir.join(STATE))? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::State(dir.to_path_buf(), e.to_string()))
    }

    pub fn save(&self, host: &Host, dir: &Path) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::State(dir.to_path_buf(), e.to_string()))?;
        host.write_atomic(&dir.join(STATE), &json, Some(0o600))
    }

    /// Removes the state and its backups, and the directory when that leaves it empty.
    pub fn clear(host: &Host, dir: &Path) -> Result<(), Error> {
        for f in [STATE, CONFIG_BACKUP, SHIM_BACKUP] {
            host.remove(&dir.join(f))?;
        }
        let _ = std::fs::remove_dir(host.path(dir));
        Ok(())
    }
}
