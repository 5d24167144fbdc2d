//! Compile once per node: compiled artifacts on disk, loaded by mmap.
//!
//! An entry is named `<sha256 of the Wasm bytes>-<engine compatibility hash>.cwasm`, so a new
//! wasmtime version or engine setting never loads an old artifact. Entries are written to a
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

/// Where compiled artifacts live. `None` compiles in memory every time.
#[derive(Debug, Clone, Default)]
pub struct CompileCache {
    dir: Option<PathBuf>,
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

impl CompileCache {
    /// A cache in `dir`, created (mode 0700) on first store.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        CompileCache {
            dir: Some(dir.into()),
        }
    }

    /// No cache: every start compiles.
    pub fn disabled() -> Self {
        CompileCache { dir: None }
    }

    /// The entry path for `bytes` under `engine`, if caching is enabled.
    pub fn entry_path(&self, engine_key: &str, bytes: &[u8]) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let digest = Sha256::digest(bytes);
        let mut name = String::with_capacity(64 + 18 + 6);
        for b in digest {
            let _ = write!(name, "{b:02x}");
        }
        let _ = write!(name, "-{engine_key}.cwasm");
        Some(dir.join(name))
    }

    /// Loads the compiled form of `bytes`, compiling and storing it on a miss.
    pub(crate) fn load(
        &self,
        engine: &Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<(Compiled, CacheOutcome), Error> {
        let Some(entry) = self.entry_path(&engine_key(engine), bytes) else {
            return Ok((
                compile_in_memory(engine, kind, bytes, path)?,
                CacheOutcome::Uncached,
            ));
        };
        if entry.exists() {
            match deserialize(engine, kind, &entry) {
                Ok(compiled) => return Ok((compiled, CacheOutcome::Hit)),
                Err(err) => {
                    tracing::warn!(entry = %entry.display(), "dropping unusable compile cache entry: {err:#}");
                    let _ = fs::remove_file(&entry);
                }
            }
        }
        let artifact = precompile(engine, kind, bytes, path)?;
        if let Err(err) = store(&entry, &artifact) {
            tracing::warn!(entry = %entry.display(), "compile cache not written: {}", err.chain());
            return Ok((from_bytes(engine, kind, &artifact)?, CacheOutcome::Uncached));
        }
        match deserialize(engine, kind, &entry) {
            Ok(compiled) => Ok((compiled, CacheOutcome::Compiled)),
            // Replaced or removed by someone else in between: use our own copy.
            Err(_) => Ok((from_bytes(engine, kind, &artifact)?, CacheOutcome::Uncached)),
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
