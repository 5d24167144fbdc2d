//! Files on the host: paths seen through the host root (`/host` in the DaemonSet), atomic
//! writes, digests, and the diff `--dry-run` prints.

use crate::Error;
use sha2::{Digest, Sha256};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The host's file system as this process sees it.
#[derive(Debug, Clone)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    pub fn new(root: impl Into<PathBuf>) -> Host {
        Host { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether the host is this process's own root (no chroot needed to run its programs).
    pub fn is_own_root(&self) -> bool {
        self.root == Path::new("/")
    }

    /// Where the host path `p` (absolute, as the host names it) is seen here.
    pub fn path(&self, p: &Path) -> PathBuf {
        match p.strip_prefix("/") {
            Ok(rel) => self.root.join(rel),
            Err(_) => self.root.join(p),
        }
    }

    /// The content of a host file, `None` when it does not exist.
    pub fn read(&self, p: &Path) -> Result<Option<Vec<u8>>, Error> {
        match std::fs::read(self.path(p)) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
        }
    }

    /// Writes a host file atomically: a temp file in the same directory, synced, renamed over
    /// the target, then the directory synced. Readers see the old or the new content, never a
    /// part. `mode` defaults to the replaced file's mode, else 0644.
    pub fn write_atomic(&self, p: &Path, content: &[u8], mode: Option<u32>) -> Result<(), Error> {
        let target = self.path(p);
        let dir = target
            .parent()
            .ok_or_else(|| Error::InvalidPath(p.display().to_string()))?;
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let mode = match mode {
            Some(m) => m,
            None => std::fs::metadata(&target).map_or(0o644, |m| m.permissions().mode() & 0o7777),
        };
        let name = target
            .file_name()
            .ok_or_else(|| Error::InvalidPath(p.display().to_string()))?;
        let tmp = dir.join(format!(
            ".{}.wasmtime-shim-installer.{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
        let result = (|| {
            let mut f = std::fs::File::create(&tmp).map_err(|e| io("create", e))?;
            f.write_all(content).map_err(|e| io("write", e))?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))
                .map_err(|e| io("chmod", e))?;
            f.sync_all().map_err(|e| io("sync", e))?;
            std::fs::rename(&tmp, &target)
                .map_err(|e| Error::io(format!("rename to {}", target.display()), e))?;
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }

    /// Removes a host file; a missing file is not an error.
    pub fn remove(&self, p: &Path) -> Result<(), Error> {
        match std::fs::remove_file(self.path(p)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(format!("remove {}", p.display()), e)),
        }
    }
}

pub fn sha256(b: &[u8]) -> String {
    format!("{:x}", Sha256::digest(b))
}

/// A unified diff of two texts with one hunk spanning every changed line (the installer's
/// edits are one or two nearby blocks), three lines of context.
pub fn diff(name: &str, old: Option<&str>, new: Option<&str>) -> String {
    let a: Vec<&str> = old.map_or(Vec::new(), |t| t.lines().collect());
    let b: Vec<&str> = new.map_or(Vec::new(), |t| t.lines().collect());
    let prefix = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let max_suffix = a.len().min(b.len()) - prefix;
    let suffix = a
        .iter()
        .rev()
        .zip(b.iter().rev())
        .take(max_suffix)
        .take_while(|(x, y)| x == y)
        .count();
    if prefix == a.len() && prefix == b.len() {
        return String::new();
    }
    let start = prefix.saturating_sub(3);
    let (a_end, b_end) = (a.len() - suffix, b.len() - suffix);
    let (a_ctx, b_ctx) = ((a_end + 3).min(a.len()), (b_end + 3).min(b.len()));
    let from = if old.is_some() {
        format!("a{name}")
    } else {
        "/dev/null".into()
    };
    let to = if new.is_some() {
        format!("b{name}")
    } else {
        "/dev/null".into()
    };
    let mut out = format!(
        "--- {from}\n+++ {to}\n@@ -{},{} +{},{} @@\n",
        start + 1,
        a_ctx - start,
        start + 1,
        b_ctx - start
    );
    for l in &a[start..prefix] {
        out.push_str(&format!(" {l}\n"));
    }
    for l in &a[prefix..a_end] {
        out.push_str(&format!("-{l}\n"));
    }
    for l in &b[prefix..b_end] {
        out.push_str(&format!("+{l}\n"));
    }
    for l in &a[a_end..a_ctx] {
        out.push_str(&format!(" {l}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_paths_are_under_the_root() {
        let h = Host::new("/host");
        assert_eq!(
            h.path(Path::new("/etc/containerd/config.toml")),
            Path::new("/host/etc/containerd/config.toml")
        );
        assert!(!h.is_own_root());
        assert_eq!(
            Host::new("/").path(Path::new("/usr/local/bin")),
            Path::new("/usr/local/bin")
        );
    }

    #[test]
    fn atomic_write_keeps_the_mode_and_leaves_no_temp_file() {
        let d = tempfile::tempdir().unwrap();
        let h = Host::new(d.path());
        let p = Path::new("/a/b.toml");
        h.write_atomic(p, b"one", Some(0o600)).unwrap();
        h.write_atomic(p, b"two", None).unwrap();
        assert_eq!(h.read(p).unwrap().unwrap(), b"two");
        let m = std::fs::metadata(h.path(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(m, 0o600);
        assert_eq!(std::fs::read_dir(d.path().join("a")).unwrap().count(), 1);
        h.remove(p).unwrap();
        h.remove(p).unwrap();
        assert_eq!(h.read(p).unwrap(), None);
    }

    #[test]
    fn diff_shows_the_changed_block_with_context() {
        let old = "a\nb\nc\nd\ne\nf\n";
        let new = "a\nb\nc\nd\nX\nY\ne\nf\n";
        assert_eq!(
            diff("/c.toml", Some(old), Some(new)),
            "--- a/c.toml\n+++ b/c.toml\n@@ -2,5 +2,7 @@\n b\n c\n d\n+X\n+Y\n e\n f\n"
        );
        assert_eq!(diff("/c.toml", Some(old), Some(old)), "");
        assert!(
            diff("/d.toml", None, Some("x\n"))
                .starts_with("--- /dev/null\n+++ b/d.toml\n@@ -1,0 +1,1 @@\n+x\n")
        );
    }
}
