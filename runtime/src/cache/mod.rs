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
//! has mapped is safe: the mapping keeps the file's pages. Entries are written to an unnamed
//! file (`O_TMPFILE`), synced and linked into place only when complete (see [`files`]), so
//! readers only ever see complete entries, two guests compiling the same module at once (in any
//! pid namespace) both end with the one valid entry, and a writer killed mid-write leaves
//! nothing. An entry wasmtime refuses to load (truncated, overwritten, from another engine) is
//! removed and the module is compiled again.
//!
//! Where a miss compiles is the cache's [`Compiler`]: in this process by default, in a confined
//! child process for a guest that must not start compile threads before it confines itself.

mod files;

use crate::compile::Compiler;
use crate::error::wasmtime_source;
use crate::{Error, WasmKind};
use files::{evict, store};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
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
    compiler: Compiler,
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
            compiler: Compiler::InProcess,
        }
    }

    /// No cache: every start compiles.
    pub fn disabled() -> Self {
        CompileCache {
            dir: None,
            limit: 0,
            compiler: Compiler::InProcess,
        }
    }

    /// Compiles misses with `compiler` (in this process by default).
    pub fn compile_with(mut self, compiler: Compiler) -> Self {
        self.compiler = compiler;
        self
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
            let code = self.compile_in_memory(engine, kind, bytes, path)?;
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
                let code = self.compile_in_memory(engine, kind, &bytes, path)?;
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
        let artifact = self.compiler.precompile(engine, kind, bytes, path)?;
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

    fn compile_in_memory(
        &self,
        engine: &Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<Compiled, Error> {
        if let Compiler::Child(_) = self.compiler {
            let artifact = self.compiler.precompile(engine, kind, bytes, path)?;
            return from_bytes(engine, kind, &artifact);
        }
        let invalid = |e| Error::InvalidWasm {
            path: path.to_string(),
            source: wasmtime_source(e),
        };
        Ok(match kind {
            WasmKind::Module => Compiled::Module(Module::new(engine, bytes).map_err(invalid)?),
            WasmKind::Component => {
                Compiled::Component(Component::new(engine, bytes).map_err(invalid)?)
            }
        })
    }
}

/// wasmtime's compatibility hash of `engine` as a short hex string.
fn engine_key(engine: &Engine) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut hasher);
    format!("{:016x}", hasher.finish())
}

fn from_bytes(engine: &Engine, kind: WasmKind, artifact: &[u8]) -> Result<Compiled, Error> {
    // SAFETY: `artifact` was produced by the cache's compiler with this very engine just now.
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
    // SAFETY: entries are only written by `files::store`, in a directory only this node's shim
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
