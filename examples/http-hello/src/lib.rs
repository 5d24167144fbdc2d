//! http-hello: a `wasi:http/proxy` component with a few routes, to show and test serving.
//!
//! - `GET /` answers a greeting;
//! - `POST /echo` streams the request body back;
//! - `GET /fetch?url=http://host:port/path` makes an outgoing request and answers with the
//!   upstream's body (and its status in `x-upstream-status`);
//! - `GET /log?msg=text` writes one line to stdout and one to stderr;
//! - `GET /sleep?ms=N` answers after N milliseconds;
//! - `GET /trap` traps; `GET /spin` never returns (the server's timeout ends it);
//! - `GET /alloc?mb=N` touches N MiB of fresh memory;
//! - `GET /count` answers how many requests this instance has served (a global: 1 with a
//!   fresh instance per request);
//! - `GET /partial?msg=text` writes text to stdout without a line end.

use std::sync::atomic::{AtomicU64, Ordering};
use wasip2::clocks::monotonic_clock;
use wasip2::exports::http::incoming_handler::Guest;
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse,
    ResponseOutparam, Scheme,
};
use wasip2::io::streams::StreamError;

struct HttpHello;

static SERVED: AtomicU64 = AtomicU64::new(0);

wasip2::http::proxy::export!(HttpHello);

impl Guest for HttpHello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        // Requests this instance has served, this one included: 1 on every request with a
        // fresh instance per request; it climbs when the server reuses instances.
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let path_with_query = request.path_with_query().unwrap_or_default();
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (path_with_query.clone(), String::new()),
        };
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        match (request.method(), path.as_str()) {
            (Method::Get, "/") => respond(out, 200, b"Hello from a wasi:http component!\n"),
            (Method::Post, "/echo") => echo(request, out),
            (Method::Get, "/fetch") => match param("url") {
                Some(url) => fetch(&url, out),
                None => respond(out, 400, b"missing ?url=\n"),
            },
            (Method::Get, "/log") => {
                let msg = param("msg").unwrap_or_else(|| "hello".into());
                println!("http-hello: log {msg}");
                eprintln!("http-hello: log {msg} (stderr)");
                respond(out, 200, b"logged\n");
            }
            (Method::Get, "/sleep") => {
                let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                monotonic_clock::subscribe_duration(ms * 1_000_000).block();
                respond(out, 200, format!("slept {ms} ms\n").as_bytes());
            }
            (Method::Get, "/count") => respond(out, 200, format!("{served}\n").as_bytes()),
            (Method::Get, "/partial") => {
                // Output without a line end: the server must not join it to another request's.
                let msg = param("msg").unwrap_or_else(|| "partial".into());
                print!("{msg}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
                respond(out, 200, b"printed\n");
            }
            (Method::Get, "/trap") => core::arch::wasm32::unreachable(),
            (Method::Get, "/spin") => loop {
                std::hint::black_box(());
            },
            (Method::Get, "/alloc") => {
                let mb: usize = param("mb").and_then(|v| v.parse().ok()).unwrap_or(1);
                let block = vec![1u8; mb << 20];
                let sum: usize = block.iter().step_by(4096).map(|&b| b as usize).sum();
                respond(out, 200, format!("touched {sum} pages\n").as_bytes());
            }
            _ => respond(out, 404, b"not found\n"),
        }
    }
}

/// Sends a complete response with `body`.
fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    write_all(&outgoing, body);
    OutgoingBody::finish(outgoing, None).expect("body complete");
}

/// Writes `bytes` to `body` in the chunks a blocking write accepts.
fn write_all(body: &OutgoingBody, bytes: &[u8]) {
    let stream = body.write().expect("stream taken once");
    for chunk in bytes.chunks(4096) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
}

/// Streams the request body back as it arrives.
fn echo(request: IncomingRequest, out: ResponseOutparam) {
    let mut headers = vec![("content-type".to_string(), b"application/octet-stream".to_vec())];
    if let Some(length) = request.headers().get("content-length").into_iter().next() {
        headers.push(("content-length".to_string(), length));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid headers"));
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    let incoming = request.consume().expect("body consumed once");
    let input = incoming.stream().expect("stream taken once");
    let output = outgoing.write().expect("stream taken once");
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(bytes) => {
                for chunk in bytes.chunks(4096) {
                    output.blocking_write_and_flush(chunk).expect("write body");
                }
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                panic!("reading the request body: {}", e.to_debug_string())
            }
        }
    }
    drop(output);
    drop(input);
    OutgoingBody::finish(outgoing, None).expect("body complete");
}

/// GETs `url` (http://authority/path) and answers with what came back.
fn fetch(url: &str, out: ResponseOutparam) {
    let Some(rest) = url.strip_prefix("http://") else {
        return respond(out, 400, b"only http:// URLs\n");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    request.set_method(&Method::Get).expect("valid method");
    request.set_scheme(Some(&Scheme::Http)).expect("valid scheme");
    request.set_authority(Some(authority)).expect("valid authority");
    request.set_path_with_query(Some(path)).expect("valid path");
    let response = match outgoing_handler::handle(request, None) {
        Ok(future) => {
            future.subscribe().block();
            future.get().expect("ready").expect("taken once")
        }
        Err(code) => Err(code),
    };
    let upstream = match response {
        Ok(response) => response,
        Err(code) => return respond(out, 502, format!("upstream: {code:?}\n").as_bytes()),
    };
    let status = upstream.status();
    let body = upstream.consume().expect("body consumed once");
    let input = body.stream().expect("stream taken once");
    let mut bytes = Vec::new();
    loop {
        match input.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                return respond(out, 502, format!("upstream body: {}\n", e.to_debug_string()).as_bytes());
            }
        }
    }
    let headers = Fields::from_list(&[
        ("x-upstream-status".to_string(), status.to_string().into_bytes()),
        ("content-length".to_string(), bytes.len().to_string().into_bytes()),
    ])
    .expect("valid headers");
    let response = OutgoingResponse::new(headers);
    let outgoing = response.body().expect("body taken once");
    ResponseOutparam::set(out, Ok(response));
    write_all(&outgoing, &bytes);
    OutgoingBody::finish(outgoing, None).expect("body complete");
}
