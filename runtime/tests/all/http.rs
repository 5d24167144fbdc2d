//! Serving the example wasi:http component (examples/http-hello) in this process: the server's
//! own rules (timeouts, limits, capacity, shutdown) without containerd. End-to-end serving
//! through the shim is in the e2e tests.

use super::{Rootfs, example_guest};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};
use wasmtime_shim_runtime::exit::Outcome;
use wasmtime_shim_runtime::{CompileCache, Host, Program, Shutdown, Stdio};
use wasmtime_shim_tests::http::{self, Response, free_addr};

/// A server running on a thread; stops (gracefully) when dropped unless stopped already.
pub(crate) struct Serving {
    addr: SocketAddr,
    shutdown: Shutdown,
    thread: Option<std::thread::JoinHandle<Outcome>>,
    _rootfs: Rootfs,
}

impl Serving {
    pub(crate) fn start(env: &[&str]) -> Serving {
        Serving::start_with(env, None)
    }

    pub(crate) fn start_with(env: &[&str], memory_limit: Option<u64>) -> Serving {
        Serving::component("http_hello", env, memory_limit)
    }

    /// Serves the example guest `name` (built for wasm32-wasip2).
    pub(crate) fn component(name: &str, env: &[&str], memory_limit: Option<u64>) -> Serving {
        let rootfs = Rootfs::new();
        rootfs.put("/http.wasm", example_guest("wasm32-wasip2", name));
        let addr = free_addr();
        let mut spec = rootfs.spec(&["/http.wasm"]);
        spec.env = env.iter().map(|s| s.to_string()).collect();
        spec.env
            .push(format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}"));
        spec.memory_limit = memory_limit;
        static HOST: std::sync::OnceLock<Host> = std::sync::OnceLock::new();
        let host = HOST.get_or_init(|| Host::new().unwrap());
        let program =
            Program::prepare(host, &spec, &CompileCache::disabled(), Stdio::Inherit).unwrap();
        assert!(program.http().is_some(), "served, not run as a command");
        let shutdown = program.shutdown();
        let thread = std::thread::spawn(move || program.run());
        let began = Instant::now();
        while TcpStream::connect(addr).is_err() {
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "server never listened"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Serving {
            addr,
            shutdown,
            thread: Some(thread),
            _rootfs: rootfs,
        }
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(crate) fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, b"")
    }

    /// Triggers the graceful stop and returns how `run` ended.
    pub(crate) fn stop(mut self) -> Outcome {
        self.shutdown.trigger();
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.shutdown.trigger();
            let _ = thread.join();
        }
    }
}

pub(crate) fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> Response {
    http::request(addr, method, path, body).unwrap()
}

#[test]
fn hello_and_a_1mb_echo() {
    let server = Serving::start(&[]);
    let hello = server.get("/");
    assert_eq!(hello.status, 200);
    assert_eq!(hello.text(), "Hello from a wasi:http component!\n");
    let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let echoed = request(server.addr, "POST", "/echo", &body);
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "echoed {} bytes", echoed.body.len());
    assert_eq!(server.get("/nowhere").status, 404);
    assert_eq!(server.stop().status, 0);
}

#[test]
fn the_handler_makes_outgoing_requests() {
    let upstream = http::Upstream::start("127.0.0.1:0", "upstream says hi").unwrap();
    let server = Serving::start(&[]);
    let fetched = server.get(&format!("/fetch?url=http://{}/x", upstream.addr));
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.text(), "upstream says hi");
    assert_eq!(fetched.header("x-upstream-status"), Some("200"));
    assert_eq!(upstream.served(), 1);
    // Nothing listens there: the guest sees the error and answers 502 itself.
    let refused = server.get(&format!("/fetch?url=http://{}/x", http::free_addr()));
    assert_eq!(refused.status, 502, "{}", refused.text());
}

#[test]
fn a_trap_is_a_500_and_the_next_request_is_served() {
    let server = Serving::start(&[]);
    let trapped = server.get("/trap");
    assert_eq!(trapped.status, 500, "{}", trapped.text());
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn a_spinning_handler_is_cut_at_the_timeout() {
    let server = Serving::start(&["WASMTIME_HTTP_REQUEST_TIMEOUT=300ms"]);
    let began = Instant::now();
    let spun = server.get("/spin");
    assert_eq!(spun.status, 504, "{}", spun.text());
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn bodies_over_the_limit_are_refused() {
    let server = Serving::start(&["WASMTIME_HTTP_MAX_BODY_BYTES=1000"]);
    let refused = request(server.addr, "POST", "/echo", &[7u8; 1001]);
    assert_eq!(refused.status, 413, "{}", refused.text());
    let fits = request(server.addr, "POST", "/echo", &[7u8; 1000]);
    assert_eq!(fits.status, 200);
    assert_eq!(fits.body.len(), 1000);
}

#[test]
fn a_streamed_body_over_the_limit_is_cut() {
    use std::io::{Read, Write};
    let server = Serving::start(&["WASMTIME_HTTP_MAX_BODY_BYTES=1000"]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let chunk = "x".repeat(800);
    let sent = format!(
        "POST /echo HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\
         Transfer-Encoding: chunked\r\n\r\n320\r\n{chunk}\r\n320\r\n{chunk}\r\n0\r\n\r\n"
    );
    stream.write_all(sent.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let echoed = raw.iter().filter(|&&b| b == b'x').count();
    assert!(echoed <= 1000, "{echoed} bytes of the body came back");
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn beyond_capacity_and_queue_requests_get_503() {
    let server = Serving::start(&[
        "WASMTIME_HTTP_MAX_CONCURRENCY=1",
        "WASMTIME_HTTP_MAX_QUEUED=0",
    ]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/sleep?ms=3000", b""));
    // Once the slow request holds the only instance, the next one is turned away.
    let began = Instant::now();
    let busy = loop {
        std::thread::sleep(Duration::from_millis(50));
        let answer = server.get("/");
        if answer.status != 200 || began.elapsed() > Duration::from_millis(2500) {
            break answer;
        }
    };
    assert_eq!(busy.status, 503, "{}", busy.text());
    assert_eq!(slow.join().unwrap().status, 200);
    assert_eq!(server.get("/").status, 200);
}

#[test]
fn queued_requests_wait_for_an_instance() {
    let server = Serving::start(&["WASMTIME_HTTP_MAX_CONCURRENCY=2"]);
    let addr = server.addr;
    let began = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || request(addr, "GET", "/sleep?ms=200", b"")))
        .collect();
    for client in clients {
        assert_eq!(client.join().unwrap().status, 200);
    }
    // Two at a time: three rounds of 200 ms.
    assert!(
        began.elapsed() >= Duration::from_millis(550),
        "{:?}",
        began.elapsed()
    );
}

#[test]
fn instances_share_the_memory_limit() {
    let server = Serving::start_with(&[], Some(64 << 20));
    let over = server.get("/alloc?mb=100");
    assert_eq!(over.status, 500, "{}", over.text());
    let fits = server.get("/alloc?mb=8");
    assert_eq!(fits.status, 200, "{}", fits.text());
}

#[test]
fn shutdown_lets_the_request_in_flight_finish() {
    let server = Serving::start(&[]);
    let addr = server.addr;
    let slow = std::thread::spawn(move || request(addr, "GET", "/sleep?ms=1000", b""));
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let outcome = server.stop();
    assert_eq!(outcome.status, 0, "{:?}", outcome.message);
    assert!(
        began.elapsed() >= Duration::from_millis(500),
        "{:?}",
        began.elapsed()
    );
    let answered = slow.join().unwrap();
    assert_eq!(answered.status, 200);
    assert_eq!(answered.text(), "slept 1000 ms\n");
    assert!(TcpStream::connect(addr).is_err(), "still listening");
}

#[test]
fn an_address_in_use_fails_the_run_with_a_clear_message() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let rootfs = Rootfs::new();
    rootfs.put("/http.wasm", example_guest("wasm32-wasip2", "http_hello"));
    let mut spec = rootfs.spec(&["/http.wasm"]);
    spec.env = vec![format!("WASMTIME_HTTP_PROXY_SOCKET_ADDR={addr}")];
    let host = Host::new().unwrap();
    let program =
        Program::prepare(&host, &spec, &CompileCache::disabled(), Stdio::Inherit).unwrap();
    let outcome = program.run();
    assert_eq!(outcome.status, 1);
    let message = outcome.message.unwrap_or_default();
    assert!(message.contains(&format!("listen on {addr}")), "{message}");
}

#[test]
fn a_bad_setting_is_refused_before_start() {
    let rootfs = Rootfs::new();
    rootfs.put("/http.wasm", example_guest("wasm32-wasip2", "http_hello"));
    let mut spec = rootfs.spec(&["/http.wasm"]);
    spec.env = vec!["WASMTIME_HTTP_REQUEST_TIMEOUT=forever".into()];
    let host = Host::new().unwrap();
    let err = Program::prepare(&host, &spec, &CompileCache::disabled(), Stdio::Inherit)
        .err()
        .unwrap();
    assert!(
        err.chain().contains("WASMTIME_HTTP_REQUEST_TIMEOUT"),
        "{}",
        err.chain()
    );
}

#[test]
fn request_costs_serve_real_requests_step_by_step() {
    let rootfs = Rootfs::new();
    rootfs.put("/http.wasm", example_guest("wasm32-wasip2", "http_hello"));
    let host = Host::new().unwrap();
    let spec = rootfs.spec(&["/http.wasm"]);
    let program =
        Program::prepare(&host, &spec, &CompileCache::disabled(), Stdio::Inherit).unwrap();
    let costs = program.request_costs("/", 50).unwrap();
    assert_eq!(costs.requests, 50);
    for step in [costs.setup, costs.instantiate, costs.handle, costs.reset] {
        assert!(step > Duration::ZERO, "{costs:?}");
    }
    // A failing handler, or one that answers an error, is an error, not a measurement.
    let err = program.request_costs("/trap", 1).unwrap_err();
    assert!(err.chain().contains("unreachable"), "{}", err.chain());
    let err = program.request_costs("/nowhere", 1).unwrap_err();
    assert!(err.chain().contains("404"), "{}", err.chain());
    // A handler that never answers ends at the request timeout.
    let mut spec = rootfs.spec(&["/http.wasm"]);
    spec.env = vec!["WASMTIME_HTTP_REQUEST_TIMEOUT=200ms".into()];
    let spinning =
        Program::prepare(&host, &spec, &CompileCache::disabled(), Stdio::Inherit).unwrap();
    let err = spinning.request_costs("/spin", 1).unwrap_err();
    assert!(err.chain().contains("no answer within"), "{}", err.chain());
    // A command has no requests to measure.
    rootfs.put(
        "/hello.wasm",
        example_guest("wasm32-wasip2", "hello-component"),
    );
    let command = Program::prepare(
        &host,
        &rootfs.spec(&["/hello.wasm"]),
        &CompileCache::disabled(),
        Stdio::Inherit,
    )
    .unwrap();
    let err = command.request_costs("/", 1).unwrap_err();
    assert!(err.chain().contains("is a command"), "{}", err.chain());
}

/// Sends a keep-alive GET for `/` on `stream`.
fn send_get(stream: &mut TcpStream) {
    use std::io::Write;
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
}

/// Reads from `stream` until the hello body has arrived; `false` if `wait` passes first.
fn hello_arrives(stream: &mut TcpStream, wait: Duration) -> bool {
    use std::io::Read;
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("Hello from a wasi:http component!") {
        match stream.read(&mut buf) {
            Ok(0) => panic!("connection closed: {}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false;
            }
            Err(e) => panic!("read: {e}"),
        }
    }
    true
}

#[test]
fn connections_past_the_bound_wait_for_one_to_close() {
    let server = Serving::start(&["WASMTIME_HTTP_MAX_CONNECTIONS=1"]);
    let mut first = TcpStream::connect(server.addr).unwrap();
    send_get(&mut first);
    assert!(hello_arrives(&mut first, Duration::from_secs(10)));
    // The first connection stays open (keep-alive): the second is not served meanwhile.
    let mut second = TcpStream::connect(server.addr).unwrap();
    send_get(&mut second);
    assert!(!hello_arrives(&mut second, Duration::from_millis(500)));
    // The first is still served, and once it closes, the second is.
    send_get(&mut first);
    assert!(hello_arrives(&mut first, Duration::from_secs(10)));
    drop(first);
    assert!(hello_arrives(&mut second, Duration::from_secs(10)));
    drop(second);
    assert_eq!(server.stop().status, 0);
}
