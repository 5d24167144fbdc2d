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

/// Builds the engine. Its settings are part of the compile cache key (through wasmtime's
/// compatibility hash), so changing them here only makes the cache miss once.
///
/// The configuration is wasmtime's default, which is also what `wasmtime run` uses: Cranelift at
/// `speed`, copy-on-write memory images from the mmapped artifact, and the default set of
/// WebAssembly proposals, so a module behaves here as it does under the CLI.
pub(crate) fn new_engine() -> Result<Engine, Error> {
    let mut config = Config::new();
    config.wasm_component_model(true);
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
