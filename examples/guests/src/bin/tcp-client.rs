//! tcp-client: a wasm32-wasip2 component that connects to argv[1] (retrying for up to 5 s while
//! the connection is refused), sends argv[2] as one line and prints the line it gets back.
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn main() {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:8080".into());
    let message = std::env::args().nth(2).unwrap_or_else(|| "hello".into());
    let deadline = Instant::now() + Duration::from_secs(5);
    let stream = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e)
                if Instant::now() > deadline
                    || e.kind() != std::io::ErrorKind::ConnectionRefused =>
            {
                eprintln!("connect {addr}: {e}");
                std::process::exit(1);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    let _ = (&stream).write_all(format!("{message}\n").as_bytes());
    let mut reply = String::new();
    if BufReader::new(&stream).read_line(&mut reply).is_err() || reply.is_empty() {
        eprintln!("no reply from {addr}");
        std::process::exit(1);
    }
    print!("{reply}");
}
