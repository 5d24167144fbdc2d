//! The cache directory's files: writing an entry atomically, evicting old entries, sweeping the
//! temporaries of writers that died.
//!
//! An entry is written to an unnamed file in the cache directory (`O_TMPFILE`), synced, and
//! linked under its name only when complete. Guests run in pid namespaces of their own (many
//! of them are pid 1), so nothing here is named from a pid: an unnamed file has no name to
//! collide on, and a writer killed mid-write leaves nothing behind (the kernel frees the
//! unlinked inode). On a filesystem without `O_TMPFILE` the entry is written to a randomly
//! named `.tmp-` file and renamed into place; such a file left by a killed writer is removed by
//! the next eviction pass once it is older than [`STALE_TEMPORARY`].

use crate::Error;
use rustix::fs::{AtFlags, Mode, OFlags};
use std::fs::{self, DirBuilder, File};
use std::io::Write as _;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

/// Prefix of named temporary files (the fallback without `O_TMPFILE`).
const TEMPORARY: &str = ".tmp-";
/// A named temporary untouched for this long belongs to a writer that died.
pub(super) const STALE_TEMPORARY: Duration = Duration::from_secs(10 * 60);

/// Writes `artifact` as `entry`, completely or not at all. If another writer linked the same
/// entry first, theirs stays (it holds the same code).
pub(super) fn store(entry: &Path, artifact: &[u8]) -> Result<(), Error> {
    let dir = entry.parent().unwrap_or(Path::new("."));
    let cache_err = |message: String| Error::Cache {
        dir: dir.to_path_buf(),
        message,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| cache_err(format!("cannot create directory: {e}")))?;
    let name = entry
        .file_name()
        .ok_or_else(|| cache_err(format!("{} names no file", entry.display())))?;
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| cache_err(format!("cannot open directory: {e}")))?;
    match rustix::fs::openat(
        &dir_fd,
        ".",
        OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(file) => {
            write_synced(file.try_clone().map(File::from), artifact)
                .map_err(|e| cache_err(format!("cannot write {}: {e}", entry.display())))?;
            link_unnamed(&file, &dir_fd, name)
                .map_err(|e| cache_err(format!("cannot link {}: {e}", entry.display())))
        }
        // No O_TMPFILE on this filesystem.
        Err(rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL) => {
            store_named(dir, entry, artifact).map_err(cache_err)
        }
        Err(e) => Err(cache_err(format!("cannot create a temporary file: {e}"))),
    }
}

fn write_synced(file: std::io::Result<File>, artifact: &[u8]) -> std::io::Result<()> {
    let mut file = file?;
    file.write_all(artifact)?;
    file.sync_all()
}

/// Gives the unnamed `file` the name `name` in `dir`. `EEXIST`: another writer was first.
fn link_unnamed(file: &OwnedFd, dir: &OwnedFd, name: &std::ffi::OsStr) -> rustix::io::Result<()> {
    // Through /proc, which needs no capability; `AT_EMPTY_PATH` on the fd itself needs
    // CAP_DAC_READ_SEARCH, the fallback when /proc is not mounted.
    let proc_path = format!("/proc/self/fd/{}", file.as_raw_fd());
    let linked = match rustix::fs::linkat(
        rustix::fs::CWD,
        proc_path.as_str(),
        dir,
        name,
        AtFlags::SYMLINK_FOLLOW,
    ) {
        Err(rustix::io::Errno::NOENT) => {
            rustix::fs::linkat(file.as_fd(), "", dir, name, AtFlags::EMPTY_PATH)
        }
        other => other,
    };
    match linked {
        Ok(()) | Err(rustix::io::Errno::EXIST) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The fallback: a randomly named temporary, renamed into place (the last rename wins; every
/// writer's artifact is the same).
fn store_named(dir: &Path, entry: &Path, artifact: &[u8]) -> Result<(), String> {
    let mut random = [0u8; 8];
    rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())
        .map_err(|e| format!("cannot name a temporary file: {e}"))?;
    let tmp = dir.join(format!("{TEMPORARY}{:016x}", u64::from_ne_bytes(random)));
    let file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()));
    let written = file.and_then(|file| {
        write_synced(Ok(file), artifact)
            .and_then(|()| fs::rename(&tmp, entry))
            .map_err(|e| format!("cannot write {}: {e}", entry.display()))
    });
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Removes the least recently used entries of `entry`'s directory, never `entry` itself, until
/// the entries total at most `limit` bytes, and the temporaries of writers that died.
pub(super) fn evict(entry: &Path, limit: u64) {
    let Some(dir) = entry.parent() else { return };
    let Ok(read) = fs::read_dir(dir) else { return };
    let now = SystemTime::now();
    let mut entries: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
    for e in read.flatten() {
        let path = e.path();
        let Ok(meta) = e.metadata() else { continue };
        let Ok(modified) = meta.modified() else {
            continue;
        };
        if e.file_name().to_string_lossy().starts_with(TEMPORARY) {
            let age = now.duration_since(modified).unwrap_or_default();
            if age >= STALE_TEMPORARY && fs::remove_file(&path).is_ok() {
                tracing::debug!(file = %path.display(), "compile cache: removed a stale temporary");
            }
            continue;
        }
        if path.extension().is_some_and(|x| x == "cwasm") {
            entries.push((modified, meta.len(), path));
        }
    }
    let mut total: u64 = entries.iter().map(|(_, len, _)| len).sum();
    if total <= limit {
        return;
    }
    entries.sort();
    for (_, len, path) in entries {
        if total <= limit {
            break;
        }
        if path == entry {
            continue;
        }
        if fs::remove_file(&path).is_ok() {
            tracing::debug!(entry = %path.display(), size = len, "compile cache: evicted");
            total -= len;
        }
    }
}
