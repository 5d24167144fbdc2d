//! tcp-echo: a wasm32-wasip2 component serving TCP with wasi-sockets. Listens on argv[1]
//! (default 127.0.0.1:8080), answers each line with `echo: <line>`, one client at a time;
//! blocks in accept between clients.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = match TcpListener::bind(&addr) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("bind {addr}: {e}");
            std::process::exit(1);
        }
    };
    println!("listening on {addr}");
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let mut reader = BufReader::new(&stream);
        let mut line = String::new();
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            let _ = (&stream).write_all(format!("echo: {line}").as_bytes());
            line.clear();
        }
    }
}
