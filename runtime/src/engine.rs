//! The wasmtime engine (one per process) and telling modules from components.

use crate::Error;
use crate::error::wasmtime_source;
use wasmtime::{Config, Engine};

/// What kind of WebAssembly binary a file holds, read from its 8-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WasmKind {
    /// A core module (`\0asm` version 1).
    Module,
    /// A component (`\0asm` version `0x0d`, layer 1).
    Component,
}

impl WasmKind {
    /// Detects the kind from the binary header; `None` when `bytes` is not WebAssembly. An
    /// unknown version after the magic is reported as a module, so wasmtime's validator names it.
    pub fn detect(bytes: &[u8]) -> Option<WasmKind> {
        let header = bytes.get(..8)?;
        if &header[..4] != b"\0asm" {
            return None;
        }
        Some(match header[4..8] {
            [0x0d, 0x00, 0x01, 0x00] => WasmKind::Component,
            _ => WasmKind::Module,
        })
    }
}

/// The kind of `bytes`, or the error that says why they are not WebAssembly (`path` names them).
pub(crate) fn kind_of(bytes: &[u8], path: &str) -> Result<WasmKind, Error> {
    WasmKind::detect(bytes).ok_or_else(|| {
        let path = path.to_string();
        if bytes.starts_with(b"\x7fELF") {
            Error::NativeProgram { path }
        } else {
            Error::NotWasm { path }
        }
    })
}

/// The settings every engine of this crate compiles with. They are part of the compile cache key
/// (through wasmtime's compatibility hash), so changing them here only makes the cache miss once.
///
/// The configuration is wasmtime's default, which is also what `wasmtime run` uses (Cranelift at
/// `speed`, copy-on-write memory images from the mmapped artifact, the default set of WebAssembly
/// proposals, so a module behaves here as it does under the CLI), plus epoch interruption: an
/// HTTP server bounds each request's time with it, and it has to be compiled in for the server's
/// engine to use the code the command engine compiled and cached. Commands never advance the
/// epoch, so for them it is a counter check at function entries and loop heads.
fn config() -> Config {
    let mut config = Config::new();
    config.wasm_component_model(true);
    // WASIp3 components: async exports and imports, streams and futures.
    config.wasm_component_model_async(true);
    config.epoch_interruption(true);
    config
}

/// Builds the engine that loads and runs commands (the on-demand allocator: one instance).
pub(crate) fn new_engine() -> Result<Engine, Error> {
    Engine::new(&config()).map_err(|e| Error::Engine(wasmtime_source(e)))
}

/// The pool of an HTTP server's engine.
#[derive(Debug, Clone)]
pub(crate) struct Pool {
    /// Instances alive at once (component instances; each gets its memories and tables).
    pub instances: u32,
    pub memories_per_instance: u32,
    pub tables_per_instance: u32,
    /// Bytes of each linear memory reset in place (only the pages a request touched, where the
    /// kernel can say which) rather than handed back to the kernel.
    pub keep_resident: usize,
}

/// Builds an engine that compiles like [`new_engine`] (and so loads its cached code) but takes
/// instances from a pool: slots reserved once, reused from one request to the next without
/// `mmap`/`munmap`, with only the touched pages reset.
pub(crate) fn new_pooling_engine(pool: &Pool) -> Result<Engine, Error> {
    use wasmtime::{Enabled, InstanceAllocationStrategy, PoolingAllocationConfig};
    let mut p = PoolingAllocationConfig::new();
    let n = pool.instances;
    // A component holds a handful of core instances (the program, WASI adapters, shims).
    let core_per_component = 16;
    p.total_component_instances(n)
        .total_core_instances(n.saturating_mul(core_per_component))
        .max_core_instances_per_component(core_per_component)
        .total_memories(n.saturating_mul(pool.memories_per_instance))
        .max_memories_per_component(pool.memories_per_instance)
        .total_tables(n.saturating_mul(pool.tables_per_instance.max(1) + 2))
        .max_tables_per_component(pool.tables_per_instance.max(1) + 2)
        .total_stacks(n)
        .linear_memory_keep_resident(pool.keep_resident)
        .table_keep_resident(64 * 1024)
        .pagemap_scan(Enabled::Auto);
    let mut config = config();
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(p));
    Engine::new(&config).map_err(|e| Error::Engine(wasmtime_source(e)))
}

/// Validates a module or component as the shim will load it (same engine settings), so a
/// packaging tool refuses what the shim would refuse, with wasmtime's message. `path` names the
/// file in the error.
pub fn validate(path: &str, bytes: &[u8]) -> Result<WasmKind, Error> {
    let kind = WasmKind::detect(bytes).ok_or_else(|| Error::NotWasm { path: path.into() })?;
    let engine = new_engine()?;
    let checked = match kind {
        WasmKind::Module => wasmtime::Module::validate(&engine, bytes),
        // wasmtime 48 has no validate-only call for components: compiling validates them.
        WasmKind::Component => wasmtime::component::Component::new(&engine, bytes).map(drop),
    };
    checked.map_err(|e| Error::InvalidWasm {
        path: path.into(),
        source: wasmtime_source(e),
    })?;
    Ok(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_kinds() {
        let cases: &[(&[u8], Option<WasmKind>)] = &[
            (b"\0asm\x01\0\0\0", Some(WasmKind::Module)),
            (b"\0asm\x0d\0\x01\0rest", Some(WasmKind::Component)),
            (b"\0asm\x02\0\0\0", Some(WasmKind::Module)),
            (b"\x7fELF\x02\x01\x01\0", None),
            (b"\0asm", None),
            (b"", None),
        ];
        for (bytes, kind) in cases {
            assert_eq!(WasmKind::detect(bytes), *kind, "{bytes:?}");
        }
    }
}
