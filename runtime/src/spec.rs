//! What a guest is asked to run: the WASI-relevant part of an OCI process spec.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The program to run and the capabilities it gets.
///
/// Defaults are deny-by-default, as in WASI itself: no arguments, no environment, no network
/// unless `network` is set. The root filesystem is always preopened as `/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestSpec {
    /// `process.args`: `args[0]` names the Wasm file (optionally `file.wasm#export`), the whole
    /// list is the guest's argv, exactly as given.
    pub args: Vec<String>,
    /// `process.env` as `KEY=value` strings; the guest sees these and nothing else.
    pub env: Vec<String>,
    /// `process.cwd`, a path inside the root filesystem. Relative entrypoints resolve against it
    /// and components see it as `wasi:cli/environment.initial-cwd`.
    pub cwd: String,
    /// Host path of the container's root filesystem, preopened to the guest as `/`.
    pub rootfs: PathBuf,
    /// `root.readonly`: the guest may read but not change its root filesystem.
    pub readonly_rootfs: bool,
    /// Host directories bind-mounted into the container (volumes), preopened at their
    /// destination. Later entries shadow earlier ones, as mounts do.
    pub mounts: Vec<Preopen>,
    /// Grant wasi-sockets (TCP, UDP, name lookup) in the current network namespace.
    pub network: bool,
    /// Bytes that the guest's linear memories and tables may use together; a `memory.grow`
    /// beyond it fails inside the guest. `None`: only the modules' own limits.
    #[serde(default)]
    pub memory_limit: Option<u64>,
}

/// A host directory the guest sees at `guest`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preopen {
    pub host: PathBuf,
    pub guest: String,
    pub readonly: bool,
}

impl GuestSpec {
    /// The value of `name` in the guest's environment, if set.
    pub fn env_var(&self, name: &str) -> Option<&str> {
        self.env.iter().find_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            (k == name).then_some(v)
        })
    }

    /// The guest's environment as pairs; an entry without `=` is a variable with an empty value.
    pub fn env_pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.env
            .iter()
            .map(|kv| kv.split_once('=').unwrap_or((kv.as_str(), "")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_lookup_takes_the_first_match_and_splits_at_the_first_equals() {
        let spec = GuestSpec {
            env: vec!["A=1=2".into(), "B".into(), "A=3".into()],
            ..Default::default()
        };
        assert_eq!(spec.env_var("A"), Some("1=2"));
        assert_eq!(spec.env_var("B"), None);
        assert_eq!(
            spec.env_pairs().collect::<Vec<_>>(),
            vec![("A", "1=2"), ("B", ""), ("A", "3")]
        );
    }
}
