//! The shim's own logs go to the `log` FIFO containerd created in the bundle and copies into its
//! own log. Each line carries the RPC span (with the container id).

use std::fs::OpenOptions;
use std::sync::Mutex;
use tracing_subscriber::EnvFilter;

pub fn init(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    // containerd holds the read end open for the shim's lifetime; without it, log to stderr.
    let writer = OpenOptions::new().write(true).open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::new(level))
        .with_ansi(false)
        .with_target(false);
    let _ = match writer {
        Ok(fifo) => builder.with_writer(Mutex::new(fifo)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}
