//! WASIp3 commands: components exporting `wasi:cli/run@0.3.x` (wasi 0.3, component-model
//! async). They are linked against WASI 0.2 and 0.3 together (a component built from Rust std
//! for `wasm32-wasip2` imports both: std through 0.2, the `wasip3` bindings through 0.3) and
//! run once, like a WASIp2 command: `run` is an async export, called inside the store's
//! concurrent event loop on a single-threaded tokio runtime of the guest process.
//!
//! wasmtime 48 provides WASI 0.3.0; a component importing a later 0.3.x links against it by
//! semver (the interfaces are the same), and one importing a pre-release (`0.3.0-rc-…`) fails
//! to link with the interface named.

use wasmtime::Store;
use wasmtime::component::{InstancePre, Linker};
use wasmtime_wasi::WasiView;

/// The export that makes a component a WASIp3 command.
pub(crate) const RUN: &str = "wasi:cli/run@0.3";

/// A linker with WASI 0.2 (its async host functions, which the concurrent event loop can
/// await) and WASI 0.3.
pub(crate) fn linker<T: WasiView + Send + 'static>(
    engine: &wasmtime::Engine,
) -> wasmtime::Result<Linker<T>> {
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    wasmtime_wasi::p3::add_to_linker(&mut linker)?;
    Ok(linker)
}

/// Instantiates the command and calls its `run`. `Ok(Err(()))` from the guest is exit
/// status 1, as `wasmtime run` has it.
pub(crate) fn run<T: WasiView + Send + 'static>(
    store: &mut Store<T>,
    pre: &InstancePre<T>,
) -> wasmtime::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let instance = pre.instantiate_async(&mut *store).await?;
        let command = wasmtime_wasi::p3::bindings::Command::new(&mut *store, &instance)?;
        let ran = store
            .run_concurrent(async move |accessor| command.wasi_cli_run().call_run(accessor).await)
            .await??;
        match ran {
            Ok(()) => Ok(()),
            Err(()) => Err(wasmtime_wasi::I32Exit(crate::exit::FAILURE).into()),
        }
    })
}
