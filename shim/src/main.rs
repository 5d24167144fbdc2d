//! `containerd-shim-wasmtime-v1`: containerd's shim v2 for WebAssembly workloads.

mod bundle;
mod container;
mod error;
mod events;
mod exits;
mod guest;
mod logging;
mod service;
mod state;
mod stats;
mod stdio;
mod task;

/// The runtime name containerd uses for this shim.
pub const RUNTIME_ID: &str = "io.containerd.wasmtime.v1";

/// When this process entered `main`, for the shim's own timing in its exit log line.
static STARTED: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

fn main() {
    STARTED.get_or_init(std::time::Instant::now);
    // The zygote (and so every guest it forks) never starts the shim's async runtime.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == guest::zygote::ZYGOTE_ARG)
    {
        guest::zygote::main();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    match runtime {
        Ok(runtime) => runtime.block_on(containerd_shim::asynchronous::run::<service::Service>(
            RUNTIME_ID,
            Some(service::config()),
        )),
        Err(err) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {err}");
            std::process::exit(1);
        }
    }
}
