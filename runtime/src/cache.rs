//! Compile once per node: compiled artifacts on disk, loaded by mmap.
//!
//! An entry is named `<sha256 of the Wasm bytes>-<engine compatibility hash>.cwasm`, so a new
//! wasmtime version or engine setting never loads an old artifact. A module taken from an image
//! layer is looked up by the layer's digest, which is that same sha256: its bytes are neither
//! read nor hashed on a hit, and a module shipped both ways shares one entry.
//!
//! The cache is bounded: after each store, the entries used least recently (a hit touches the
//! entry's mtime) are removed until the total is under the limit ([`DEFAULT_LIMIT`], or
//! `WASMTIME_SHIM_CACHE_MAX_BYTES` in the shim's environment). Removing an entry a running guest
//! has mapped is safe: the mapping keeps the file's pages. Entries are written to a
//! private temporary file, synced and renamed into place, so readers only ever see complete
//! entries and two guests compiling the same module at once both end with a valid entry (the last
//! rename wins; both are identical). An entry wasmtime refuses to load (truncated, overwritten,
//! from another engine) is removed and the module is compiled again.

use crate::error::wasmtime_source;
use crate::{Error, WasmKind};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{Hash, Hasher};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use wasmtime::Engine;
use wasmtime::Module;
use wasmtime::component::Component;

/// The cache's default size bound in bytes.
pub const DEFAULT_LIMIT: u64 = 1 << 30;

/// Where compiled artifacts live. `None` compiles in memory every time.
#[derive(Debug, Clone, Default)]
pub struct CompileCache {
    dir: Option<PathBuf>,
    limit: u64,
}

/// How the compiled code was obtained, for logs and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded from an existing entry: no compilation happened.
    Hit,
    /// Compiled now and stored for the next start.
    Compiled,
    /// Compiled now; there is no cache (or it could not be written).
    Uncached,
}

impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Compiled => "compiled",
            CacheOutcome::Uncached => "uncached",
        })
    }
}

/// Compiled code of either kind.
pub(crate) enum Compiled {
    Module(Module),
    Component(Component),
}

/// What a cache lookup gives: the code, how it was obtained, and the entry it is mapped from
/// (another engine that compiles alike can map the same file).
pub(crate) struct Fetched {
    pub code: Compiled,
    pub outcome: CacheOutcome,
    pub entry: Option<PathBuf>,
}

impl Fetched {
    fn new(code: Compiled, outcome: CacheOutcome, entry: Option<&Path>) -> Fetched {
        Fetched {
            code,
            outcome,
            entry: entry.map(Path::to_path_buf),
        }
    }
}

impl CompileCache {
    /// A cache in `dir`, created (mode 0700) on first store.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: Some(dir.into()),
            limit: DEFAULT_LIMIT,
        }
    }

    /// No cache: every start compiles.
    pub fn disabled() -> Self {
        CompileCache {
            dir: None,
            limit: 0,
        }
    }

    /// Bounds the cache to `bytes` (least recently used entries go first).
    pub fn with_limit(mut self, bytes: u64) -> Self {
        self.limit = bytes;
        self
    }

    /// The entry path for `bytes` under `engine`, if caching is enabled.
    pub fn entry_path(&self, engine_key: &str, bytes: &[u8]) -> Option<PathBuf> {
        let digest = Sha256::digest(bytes);
        let mut hex = String::with_capacity(64);
        for b in digest {
            let _ = write!(hex, "{b:02x}");
        }
        self.entry_for_digest(engine_key, &hex)
    }

    /// The entry path for the Wasm bytes whose sha256 is `hex`.
    fn entry_for_digest(&self, engine_key: &str, hex: &str) -> Option<PathBuf> {
        Some(self.dir.as_ref()?.join(format!("{hex}-{engine_key}.cwasm")))
    }

    /// Loads the compiled form of `bytes`, compiling and storing it on a miss.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<Fetched, Error> {
        let Some(entry) = self.entry_path(&engine_key(engine), bytes) else {
            let code = compile_in_memory(engine, kind, bytes, path)?;
            return Ok(Fetched::new(code, CacheOutcome::Uncached, None));
        };
        if let Some(hit) = self.lookup(engine, &entry) {
            return Ok(Fetched::new(hit, CacheOutcome::Hit, Some(&entry)));
        }
        self.compile_and_store(engine, kind, bytes, path, &entry)
    }

    /// Loads the compiled form of the Wasm bytes whose sha256 is `hex` (an image layer's
    /// digest): on a hit `fetch` is not called; on a miss it supplies the bytes (checked against
    /// the digest by the caller), which are compiled and stored.
    pub(crate) fn load_digest(
        &self,
        engine: &Engine,
        hex: &str,
        path: &str,
        fetch: impl FnOnce() -> Result<Vec<u8>, Error>,
    ) -> Result<Fetched, Error> {
        let entry = self.entry_for_digest(&engine_key(engine), hex);
        if let Some(entry) = &entry
            && let Some(hit) = self.lookup(engine, entry)
        {
            return Ok(Fetched::new(hit, CacheOutcome::Hit, Some(entry)));
        }
        let bytes = fetch()?;
        let kind = crate::engine::kind_of(&bytes, path)?;
        match entry {
            Some(entry) => self.compile_and_store(engine, kind, &bytes, path, &entry),
            None => {
                let code = compile_in_memory(engine, kind, &bytes, path)?;
                Ok(Fetched::new(code, CacheOutcome::Uncached, None))
            }
        }
    }

    /// The entry at `entry`, if there is a usable one (it is then marked as used now). An
    /// unusable entry is removed.
    fn lookup(&self, engine: &Engine, entry: &Path) -> Option<Compiled> {
        let kind = match Engine::detect_precompiled_file(entry) {
            Ok(Some(wasmtime::Precompiled::Module)) => WasmKind::Module,
            Ok(Some(wasmtime::Precompiled::Component)) => WasmKind::Component,
            Err(err)
                if err.downcast_ref::<std::io::Error>().map(|e| e.kind())
                    == Some(std::io::ErrorKind::NotFound) =>
            {
                return None;
            }
            Ok(None) | Err(_) => {
                tracing::warn!(entry = %entry.display(), "dropping unreadable compile cache entry");
                let _ = fs::remove_file(entry);
                return None;
            }
        };
        match deserialize(engine, kind, entry) {
            Ok(compiled) => {
                // The LRU order; a failure only makes the entry look older.
                if let Ok(file) = File::open(entry) {
                    let _ = file.set_modified(std::time::SystemTime::now());
                }
                Some(compiled)
            }
            Err(err) => {
                tracing::warn!(entry = %entry.display(), "dropping unusable compile cache entry: {err:#}");
                let _ = fs::remove_file(entry);
                None
            }
        }
    }

    fn compile_and_store(
        &self,
        engine: &Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
        entry: &Path,
    ) -> Result<Fetched, Error> {
        let artifact = precompile(engine, kind, bytes, path)?;
        let uncached = |artifact: &[u8]| {
            let code = from_bytes(engine, kind, artifact)?;
            Ok(Fetched::new(code, CacheOutcome::Uncached, None))
        };
        if let Err(err) = store(entry, &artifact) {
            tracing::warn!(entry = %entry.display(), "compile cache not written: {}", err.chain());
            return uncached(&artifact);
        }
        evict(entry, self.limit);
        match deserialize(engine, kind, entry) {
            Ok(code) => Ok(Fetched::new(code, CacheOutcome::Compiled, Some(entry))),
            // Replaced or removed by someone else in between: use our own copy.
            Err(_) => uncached(&artifact),
        }
    }
}

/// Removes the least recently used entries of `entry`'s directory, never `entry` itself, until
/// the entries total at most `limit` bytes. Temporary files of writers in progress are left alone.
fn evict(entry: &Path, limit: u64) {
    let Some(dir) = entry.parent() else { return };
    let Ok(read) = fs::read_dir(dir) else { return };
    let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = read
        .filter_map(|e| {
            let e = e.ok()?;
            let path = e.path();
            if path.extension()? != "cwasm" || e.file_name().to_string_lossy().starts_with('.') {
                return None;
            }
            let meta = e.metadata().ok()?;
            Some((meta.modified().ok()?, meta.len(), path))
        })
        .collect();
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

/// wasmtime's compatibility hash of `engine` as a short hex string.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn precompile(engine: &Engine, kind: WasmKind, bytes: &[u8], path: &str) -> Result<Vec<u8>, Error> {
    let _span = tracing::debug_span!("compile", path, size = bytes.len()).entered();
    match kind {
        WasmKind::Module => engine.precompile_module(bytes),
        WasmKind::Component => engine.precompile_component(bytes),
    }
    .map_err(|e| Error::InvalidWasm {
        path: path.to_string(),
        source: wasmtime_source(e),
    })
}

fn compile_in_memory(
    engine: &Engine,
    kind: WasmKind,
    bytes: &[u8],
    path: &str,
) -> Result<Compiled, Error> {
    let invalid = |e| Error::InvalidWasm {
        path: path.to_string(),
        source: wasmtime_source(e),
    };
    Ok(match kind {
        WasmKind::Module => Compiled::Module(Module::new(engine, bytes).map_err(invalid)?),
        WasmKind::Component => Compiled::Component(Component::new(engine, bytes).map_err(invalid)?),
    })
}

fn from_bytes(engine: &Engine, kind: WasmKind, artifact: &[u8]) -> Result<Compiled, Error> {
    // SAFETY: `artifact` was produced by `precompile` with this very engine just now.
    let compiled = unsafe {
        match kind {
            WasmKind::Module => Module::deserialize(engine, artifact).map(Compiled::Module),
            WasmKind::Component => {
                Component::deserialize(engine, artifact).map(Compiled::Component)
            }
        }
    };
    compiled.map_err(|e| Error::Engine(wasmtime_source(e)))
}

fn deserialize(engine: &Engine, kind: WasmKind, entry: &Path) -> wasmtime::Result<Compiled> {
    // SAFETY: entries are only written by `store` below, in a directory only this node's shim
    // writes to, and are never modified in place (replacement is by rename), so the mapping
    // stays what wasmtime produced. wasmtime checks the header, version and engine settings, and
    // refuses truncated or foreign files.
    unsafe {
        match kind {
            WasmKind::Module => Module::deserialize_file(engine, entry).map(Compiled::Module),
            WasmKind::Component => {
                Component::deserialize_file(engine, entry).map(Compiled::Component)
            }
        }
    }
}

fn store(entry: &Path, artifact: &[u8]) -> Result<(), Error> {
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
    // Unique per process and call, so concurrent writers never share a temporary file.
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = entry
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("entry");
    let tmp = dir.join(format!(
        ".tmp-{}-{}-{name}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file: File = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| cache_err(format!("cannot create {}: {e}", tmp.display())))?;
    let written = file
        .write_all(artifact)
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&tmp, entry));
    written.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        cache_err(format!("cannot write {}: {e}", entry.display()))
    })
}
