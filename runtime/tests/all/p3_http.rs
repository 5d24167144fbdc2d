//! Serving the example WASIp3 HTTP component (examples/p3-http, `wasi:http/handler@0.3`) in
//! this process: the routes of the WASIp2 example, instance reuse with `wasmtime serve`'s p3
//! defaults (128 requests per instance, 16 at once), and the server's own rules.

use super::http::{Serving, request};
use std::time::{Duration, Instant};
use wasmtime_shim_tests::http;

fn serve(env: &[&str]) -> Serving {
    Serving::component("p3_http", env, None)
}

fn number(server: &Serving, path: &str) -> u64 {
    let r = server.get(path);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.text().trim().parse().unwrap()
}

#[test]
fn hello_a_1mb_echo_and_a_clean_stop() {
    let server = serve(&[]);
    let hello = server.get("/");
    assert_eq!(hello.status, 200);
    assert_eq!(hello.text(), "Hello from a WASIp3 HTTP component!\n");
    let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let echoed = request(server.addr(), "POST", "/echo", &body);
    assert_eq!(echoed.status, 200);
    assert!(echoed.body == body, "echoed {} bytes", echoed.body.len());
    assert_eq!(server.get("/nowhere").status, 404);
    assert_eq!(server.stop().status, 0);
}

#[test]
fn the_handler_makes_outgoing_requests() {
    let upstream = http::Upstream::start("127.0.0.1:0", "upstream says hi").unwrap();
    let server = serve(&[]);
    let fetched = server.get(&format!("/fetch?url=http://{}/x", upstream.addr));
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    assert_eq!(fetched.text(), "upstream says hi");
    assert_eq!(fetched.header("x-upstream-status"), Some("200"));
    assert_eq!(upstream.served(), 1);
}

#[test]
fn by_default_an_instance_serves_request_after_request() {
    let server = serve(&[]);
    let counts: Vec<u64> = (0..5).map(|_| number(&server, "/count")).collect();
    assert_eq!(counts, [1, 2, 3, 4, 5]);
}

#[test]
fn the_reuse_count_retires_an_instance_and_a_trap_resets_it() {
    let server = serve(&[
        "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=3",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
    ]);
    let counts: Vec<u64> = (0..7).map(|_| number(&server, "/count")).collect();
    assert_eq!(counts, [1, 2, 3, 1, 2, 3, 1]);
    let trapped = server.get("/trap");
    assert_eq!(trapped.status, 500, "{}", trapped.text());
    // The trap ended its instance; the next request starts a fresh one.
    assert_eq!(number(&server, "/count"), 1);
}

#[test]
fn an_instance_idle_past_the_timeout_is_dropped() {
    let server = serve(&["WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=200ms"]);
    assert_eq!(number(&server, "/count"), 1);
    assert_eq!(number(&server, "/count"), 2);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(number(&server, "/count"), 1);
}

#[test]
fn one_instance_serves_16_slow_requests_at_once() {
    let server = serve(&["WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s"]);
    let addr = server.addr();
    let began = Instant::now();
    // Fifteen sleepers, a moment apart (so each finds the instance waiting for more), then
    // a sixteenth request that counts them from inside the same instance.
    let sleepers: Vec<_> = (0..15)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::thread::spawn(move || request(addr, "GET", "/sleep?ms=3000", b""))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(number(&server, "/concurrent"), 16);
    for sleeper in sleepers {
        let slept = sleeper.join().unwrap();
        assert_eq!(slept.text(), "slept 3000 ms\n");
    }
    // Sixteen requests of 3 s each, on one instance: together, not one after another.
    assert!(
        began.elapsed() < Duration::from_secs(8),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(number(&server, "/count"), 17);
}

#[test]
fn two_hundred_concurrent_requests_are_all_served() {
    let server = serve(&[]);
    let addr = server.addr();
    let clients: Vec<_> = (0..200)
        .map(|i| {
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    request(addr, "GET", "/sleep?ms=200", b"")
                } else {
                    request(addr, "GET", "/", b"")
                }
            })
        })
        .collect();
    for client in clients {
        let answered = client.join().unwrap();
        assert_eq!(answered.status, 200, "{}", answered.text());
    }
}

#[test]
fn a_spinning_handler_is_cut_at_the_timeout() {
    let server = serve(&["WASMTIME_HTTP_REQUEST_TIMEOUT=300ms"]);
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
fn a_request_growing_memory_past_the_limit_fails_alone() {
    let server = Serving::component(
        "p3_http",
        &["WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s"],
        Some(64 << 20),
    );
    assert_eq!(number(&server, "/count"), 1);
    let over = server.get("/alloc?mb=100");
    assert_eq!(over.status, 500, "{}", over.text());
    let fits = server.get("/alloc?mb=8");
    assert_eq!(fits.status, 200, "{}", fits.text());
}

#[test]
fn a_stop_lets_requests_finish_and_does_not_wait_for_idle_instances() {
    let server = serve(&["WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=60s"]);
    let addr = server.addr();
    assert_eq!(number(&server, "/count"), 1);
    let slow = std::thread::spawn(move || request(addr, "GET", "/sleep?ms=1000", b""));
    std::thread::sleep(Duration::from_millis(300));
    let began = Instant::now();
    let outcome = server.stop();
    assert_eq!(outcome.status, 0, "{:?}", outcome.message);
    let took = began.elapsed();
    assert!(took >= Duration::from_millis(500), "{took:?}");
    assert!(
        took < Duration::from_secs(10),
        "waited for idle instances: {took:?}"
    );
    let answered = slow.join().unwrap();
    assert_eq!(answered.status, 200);
    assert_eq!(answered.text(), "slept 1000 ms\n");
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "still listening"
    );
}

#[test]
fn a_request_finding_no_free_slot_waits_for_one_then_is_served() {
    // One slot, one request at a time on it: the second request finds the instance full and
    // no slot for another, and is offered again until the first is done.
    let server = serve(&[
        "WASMTIME_HTTP_MAX_CONCURRENCY=1",
        "WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT=1",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
    ]);
    let addr = server.addr();
    let began = Instant::now();
    let first = std::thread::spawn(move || request(addr, "GET", "/sleep?ms=500", b""));
    std::thread::sleep(Duration::from_millis(100));
    let second = request(addr, "GET", "/sleep?ms=500", b"");
    assert_eq!(second.status, 200, "{}", second.text());
    assert_eq!(first.join().unwrap().status, 200);
    assert!(
        began.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        began.elapsed()
    );
    // Both ran on the one instance.
    assert_eq!(number(&server, "/count"), 3);
}
