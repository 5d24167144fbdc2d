//! p3-command: a WASIp3 command. It exports `wasi:cli/run@0.3` (an async function) and uses
//! the WASI 0.3 interfaces for its arguments, environment, stdin, stdout and clock:
//!
//! - no arguments (or unknown ones): prints its arguments and environment, one per line;
//! - `exit N`: exits with status N (`wasi:cli/exit.exit-with-code`); `fail`: `run` returns an
//!   error (status 1);
//! - `trap`: executes `unreachable`;
//! - `cat`: copies stdin to stdout until EOF;
//! - `sleep N`: says so, then waits N seconds on the monotonic clock.

wasip3::cli::command::export!(P3Command);

struct P3Command;

impl wasip3::exports::cli::run::Guest for P3Command {
    async fn run() -> Result<(), ()> {
        let args = wasip3::cli::environment::get_arguments();
        let number = |i: usize| args.get(i).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        match args.get(1).map(String::as_str) {
            Some("exit") => {
                wasip3::cli::exit::exit_with_code(number(2).min(255) as u8);
                Ok(())
            }
            Some("fail") => Err(()),
            Some("trap") => core::arch::wasm32::unreachable(),
            Some("cat") => {
                let (input, _status) = wasip3::cli::stdin::read_via_stream();
                write_stdout(input.collect().await).await;
                Ok(())
            }
            Some("sleep") => {
                write_stdout(format!("sleeping for {}s\n", number(2)).into_bytes()).await;
                wasip3::clocks::monotonic_clock::wait_for(number(2) * 1_000_000_000).await;
                Ok(())
            }
            _ => {
                let mut text = String::new();
                for arg in &args {
                    text.push_str(&format!("arg {arg}\n"));
                }
                for (key, value) in wasip3::cli::environment::get_environment() {
                    text.push_str(&format!("env {key}={value}\n"));
                }
                write_stdout(text.into_bytes()).await;
                Ok(())
            }
        }
    }
}

/// Writes `bytes` to stdout through a WASI 0.3 stream.
async fn write_stdout(bytes: Vec<u8>) {
    let (mut tx, rx) = wasip3::wit_stream::new();
    futures::join!(
        async {
            let _ = wasip3::cli::stdout::write_via_stream(rx).await;
        },
        async {
            tx.write_all(bytes).await;
            drop(tx);
        }
    );
}
