//! Installs the wasmtime shim on a Kubernetes node: the binary next to containerd, the
//! `wasmtime` runtime handler in containerd's configuration, a containerd restart when (and
//! only when) the configuration changed, and the node label RuntimeClass.yaml selects on.
//! `uninstall` takes back exactly what `install` did.

pub mod config;
pub mod containerd;
pub mod files;
mod install;
pub mod kube;
mod state;
mod uninstall;

pub use install::{Options, Outcome, install};
pub use uninstall::uninstall;

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("containerd's configuration is not valid TOML, nothing changed: {0}")]
    InvalidConfig(String),
    #[error("containerd configuration version {0} is not supported, nothing changed")]
    UnsupportedConfigVersion(String),
    #[error("unknown containerd ({0}): supported are 1.6, 1.7 and 2.0-2.2; nothing changed")]
    UnknownContainerd(String),
    #[error("containerd {release} cannot read a version {schema} configuration; nothing changed")]
    SchemaMismatch { release: String, schema: i64 },
    #[error(
        "runtime handler {0:?} is already registered with runtime_type {1:?}; refusing to take \
         it over (choose another --handler or remove it), nothing changed"
    )]
    HandlerTaken(String, String),
    #[error(
        "the host does not run systemd, so the installer cannot restart containerd by itself; \
         pass --restart-command '<command>' or --restart=never (and restart it yourself); \
         nothing changed"
    )]
    NoRestartMethod,
    #[error("the shim does not run on this host ({0}: {1}); nothing changed")]
    ShimDoesNotRun(String, String),
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} failed: {1}")]
    Command(String, String),
    #[error("containerd did not answer on {0} after the restart: {1}")]
    NotReady(String, String),
    #[error("kubernetes: {0}")]
    Kubernetes(String),
    #[error("invalid path {0}")]
    InvalidPath(String),
    #[error("the installer's state in {0} is unreadable: {1}")]
    State(PathBuf, String),
}

impl Error {
    pub(crate) fn io(what: String, source: std::io::Error) -> Error {
        Error::Io { what, source }
    }
}
