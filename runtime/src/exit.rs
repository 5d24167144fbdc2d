//! A guest's exit is data, not an error. The table (also in the README):
//!
//! | guest outcome                                    | exit status |
//! |--------------------------------------------------|-------------|
//! | `proc_exit(n)` / `wasi:cli/exit.exit-with-code(n)` | `n`       |
//! | `_start` / `wasi:cli/run` returns normally       | `0`         |
//! | `wasi:cli/run` returns `err`, `wasi:cli/exit.exit(err)` | `1`  |
//! | trap (message written to the guest's stderr)     | `134`       |
//! | host error while running (message to stderr)     | `1`         |
//! | stopped by signal `s`                            | `128 + s`   |
//!
//! These are the statuses `wasmtime run` exits with for the same outcomes on Unix.

use wasmtime_wasi::I32Exit;

/// Status of a trapped guest: 128 + SIGABRT, as `wasmtime run` reports it.
pub const TRAP: i32 = 134;
/// Status of a guest whose `run` failed or that hit a host error.
pub const FAILURE: i32 = 1;

/// Status of a guest stopped by signal `signal`.
pub fn from_signal(signal: i32) -> i32 {
    128 + signal
}

/// What became of a run: its status and, for traps and host errors, the message to print.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    pub status: i32,
    pub message: Option<String>,
    /// The guest's output when it was captured ([`crate::Stdio::Capture`]).
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The guest trapped after the memory budget refused it more memory
    /// ([`crate::GuestSpec::memory_limit`]).
    pub out_of_memory: bool,
}

impl Outcome {
    pub(crate) fn from_result(result: wasmtime::Result<()>, path: &str) -> Outcome {
        let err = match result {
            Ok(()) => {
                return Outcome::default();
            }
            Err(err) => err,
        };
        if let Some(exit) = err.downcast_ref::<I32Exit>() {
            return Outcome {
                status: exit.0,
                ..Outcome::default()
            };
        }
        let status = if err.is::<wasmtime::Trap>() {
            TRAP
        } else {
            FAILURE
        };
        Outcome {
            status,
            message: Some(format!(
                "Error: failed to run {path}\n\nCaused by:\n    {err:?}\n"
            )),
            ..Outcome::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_table() {
        let ok = Outcome::from_result(Ok(()), "/a.wasm");
        assert_eq!((ok.status, ok.message), (0, None));
        let exit = Outcome::from_result(Err(I32Exit(7).into()), "/a.wasm");
        assert_eq!((exit.status, exit.message), (7, None));
        let trap = Outcome::from_result(
            Err(wasmtime::Trap::UnreachableCodeReached.into()),
            "/a.wasm",
        );
        assert_eq!(trap.status, TRAP);
        assert!(trap.message.unwrap().contains("unreachable"));
        let host = Outcome::from_result(Err(wasmtime::Error::msg("boom")), "/a.wasm");
        assert_eq!(host.status, FAILURE);
        assert!(host.message.unwrap().contains("boom"));
        assert_eq!(from_signal(15), 143);
        assert_eq!(from_signal(9), 137);
    }
}
