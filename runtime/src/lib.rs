//! Runs one WASI program, taken from a container's root filesystem, with wasmtime.
//!
//! This crate knows nothing about containerd: its input is a [`GuestSpec`] (argv, environment,
//! working directory, root filesystem) and its output is an exit status. The flow is
//!
//! 0. [`Host::new`] builds the engine and the WASI linkers, once per process;
//! 1. [`Program::prepare`] resolves the entrypoint inside the root filesystem, tells a core module
//!    from a component by its header, loads the compiled code from the node's [`CompileCache`] (or
//!    compiles it once and stores it), and links it against WASI;
//! 2. [`Program::run`] instantiates it in a fresh store and runs it to completion, returning the
//!    exit status as data ([`exit`] holds the table).
//!
//! A component that exports `wasi:http/incoming-handler` instead of `wasi:cli/run` is a server:
//! [`Program::run`] serves HTTP until [`Program::shutdown`] is triggered, with a fresh instance
//! per request (see the `http` module).
//!
//! Preparation is everything that can fail because of bad input, so a caller can report such
//! failures before the program is started.

mod cache;
mod compile;
mod engine;
mod error;
pub mod exit;
mod http;
mod limits;
mod p3;
mod program;
mod resolve;
mod spec;

pub use cache::{CacheOutcome, CompileCache, DEFAULT_LIMIT};
pub use compile::{Compiler, Confine};
pub use engine::{WasmKind, validate};
pub use error::{Error, ErrorKind, error_chain};
pub use http::{HttpConfig, RequestCosts, Shutdown};
pub use limits::MemoryLimit;
pub use program::{Blob, Host, Loaded, Program, Stdio};
pub use resolve::{Entrypoint, ProgramKind};
pub use spec::{GuestSpec, Preopen};
