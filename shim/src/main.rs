//! `containerd-shim-wasmtime-v1`: containerd's shim v2 for WebAssembly workloads.

mod arenas;
mod bundle;
mod cgroup;
mod confine;
mod container;
mod error;
mod events;
mod exits;
mod guest;
mod image;
mod logging;
mod native;
mod options;
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
    if matches!(std::env::args().nth(1).as_deref(), Some("-v" | "--version")) {
        // Also what the node installer runs to check that the binary works on the host.
        println!(
            "containerd-shim-wasmtime-v1 {} ({RUNTIME_ID})",
            env!("CARGO_PKG_VERSION")
        );
        return;
    }
    // One malloc arena per process, set before any thread exists (see `arenas`).
    arenas::limit_to_one();
    // The zygote (and so every guest it forks) never starts the shim's async runtime.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == guest::zygote::ZYGOTE_ARG)
    {
        guest::zygote::main();
    }
    // The shim proper (not an action): fork the zygote now, while this process has one thread.
    if let Some(id) = daemon_id() {
        guest::fork_zygote_at_startup(&id);
    }
    // One thread runs the shim's async work, for the actions and the server alike: the server
    // waits on containerd, the guests and the kernel, and its few blocking steps (cgroup
    // writes) go to tokio's blocking pool. Each idle worker thread would cost every container
    // on the node its stack and per-thread state.
    let runtime = tokio::runtime::Builder::new_current_thread()
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

/// The container id if this process is the shim server (which containerd's `start` action
/// runs with `-socket`), `None` for the `start` and `delete` actions.
fn daemon_id() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    if !args.iter().any(|a| a == "-socket") {
        return None;
    }
    let id = args.iter().position(|a| a == "-id")?;
    args.get(id + 1).cloned()
}
