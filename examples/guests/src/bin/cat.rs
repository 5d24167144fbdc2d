//! cat: copies stdin to stdout until EOF (blocks in a stdin read while nothing arrives).
use std::io::{Read, Write};
fn main() {
    let mut input = Vec::new();
    let mut stdin = std::io::stdin();
    let mut buf = [0u8; 4096];
    loop {
        match stdin.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                input.extend_from_slice(&buf[..n]);
                std::io::stdout().write_all(&buf[..n]).unwrap();
                std::io::stdout().flush().unwrap();
            }
            Err(e) => {
                eprintln!("read error: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!("cat: {} bytes", input.len());
}
