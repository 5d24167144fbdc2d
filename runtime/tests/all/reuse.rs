//! Instance reuse (`WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT`): the example component counts its
//! requests in a global (`/count`), so the count shows which instance served a request.

use super::http::Serving;
use std::time::Duration;

fn count(server: &Serving) -> u64 {
    let r = server.get("/count");
    assert_eq!(r.status, 200, "{}", r.text());
    r.text().trim().parse().unwrap()
}

fn counts(server: &Serving, n: usize) -> Vec<u64> {
    (0..n).map(|_| count(server)).collect()
}

#[test]
fn by_default_every_request_gets_a_fresh_instance() {
    let server = Serving::start(&[]);
    assert_eq!(counts(&server, 4), [1, 1, 1, 1]);
}

#[test]
fn a_reused_instance_counts_up_to_its_limit_then_a_fresh_one_starts() {
    let server = Serving::start(&[
        "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=3",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
    ]);
    assert_eq!(counts(&server, 7), [1, 2, 3, 1, 2, 3, 1]);
}

#[test]
fn a_trap_retires_its_instance() {
    let server = Serving::start(&[
        "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=100",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
    ]);
    assert_eq!(counts(&server, 2), [1, 2]);
    assert_eq!(server.get("/trap").status, 500);
    // The trapped request ran on the idle instance (its third); the next starts fresh.
    assert_eq!(counts(&server, 2), [1, 2]);
}

#[test]
fn an_instance_idle_past_the_timeout_is_dropped() {
    let server = Serving::start(&[
        "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=100",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=200ms",
    ]);
    assert_eq!(counts(&server, 2), [1, 2]);
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(counts(&server, 2), [1, 2]);
}

#[test]
fn the_memory_limit_bounds_reused_instances_too() {
    let server = Serving::start_with(
        &[
            "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=100",
            "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
        ],
        Some(64 << 20),
    );
    assert_eq!(count(&server), 1);
    // Growing past the limit fails that request alone (and retires its instance).
    let over = server.get("/alloc?mb=100");
    assert_eq!(over.status, 500, "{}", over.text());
    assert_eq!(counts(&server, 3), [1, 2, 3]);
    // An instance's memory stays with it across requests, and within the limit.
    for _ in 0..5 {
        let fits = server.get("/alloc?mb=16");
        assert_eq!(fits.status, 200, "{}", fits.text());
    }
    assert_eq!(count(&server), 9);
}

#[test]
fn concurrent_requests_each_get_their_own_instance() {
    let server = Serving::start(&[
        "WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT=1000",
        "WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT=30s",
    ]);
    let addr = server.addr();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                wasmtime_shim_tests::http::get(addr, "/sleep?ms=300")
                    .unwrap()
                    .status
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    // Eight instances were kept; sequential requests then reuse the most recent one.
    let seen = counts(&server, 3);
    assert!(seen[0] >= 2 && seen[1] == seen[0] + 1, "{seen:?}");
}
