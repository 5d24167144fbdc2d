//! p3-http: a WASIp3 HTTP component. It exports `wasi:http/handler@0.3` (an async function,
//! so one instance can serve several requests at once) with the routes of http-hello:
//!
//! - `GET /` answers a greeting;
//! - `POST /echo` streams the request body back as it arrives;
//! - `GET /fetch?url=http://host:port/path` makes an outgoing request and answers with the
//!   upstream's body (and its status in `x-upstream-status`);
//! - `GET /log?msg=text` writes one line to stdout and one to stderr;
//! - `GET /sleep?ms=N` answers after N milliseconds (without blocking other requests);
//! - `GET /trap` traps; `GET /spin` never returns (the server's timeout ends it);
//! - `GET /alloc?mb=N` touches N MiB of fresh memory;
//! - `GET /count` answers how many requests this instance has served, this one included;
//! - `GET /concurrent` answers how many requests this instance is serving right now, this one
//!   included (a request counts until its response body is complete);
//! - `GET /partial?msg=text` writes text to stdout without a line end.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use wasip3::clocks::monotonic_clock;
use wasip3::exports::http::handler::Guest;
use wasip3::http::client;
use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Scheme};
use wasip3::wit_bindgen::{StreamReader, StreamResult, StreamWriter};
use wasip3::{wit_future, wit_stream};

struct P3Http;

wasip3::http::service::export!(P3Http);

/// Requests this instance has started serving.
static SERVED: AtomicU64 = AtomicU64::new(0);
/// Requests this instance is serving now.
static IN_FLIGHT: AtomicU64 = AtomicU64::new(0);

/// Counts a request in `IN_FLIGHT` while alive: from the start of `handle` until its response
/// body is written.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Guest for P3Http {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        // 1 on every request with a fresh instance per request; it climbs when the server
        // reuses instances.
        let served = SERVED.fetch_add(1, Ordering::Relaxed) + 1;
        let in_flight = InFlight::start();
        let path_with_query = request.get_path_with_query().unwrap_or_default();
        let (path, query) = path_with_query.split_once('?').unwrap_or((&path_with_query, ""));
        let param = |name: &str| {
            query.split('&').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == name).then(|| v.to_string())
            })
        };
        match (request.get_method(), path) {
            (Method::Get, "/") => text(in_flight, 200, "Hello from a WASIp3 HTTP component!\n"),
            (Method::Post, "/echo") => echo(request, in_flight),
            (Method::Get, "/fetch") => match param("url") {
                Some(url) => fetch(&url, in_flight).await,
                None => text(in_flight, 400, "missing ?url=\n"),
            },
            (Method::Get, "/log") => {
                let msg = param("msg").unwrap_or_else(|| "hello".into());
                println!("p3-http: log {msg}");
                eprintln!("p3-http: log {msg} (stderr)");
                text(in_flight, 200, "logged\n")
            }
            (Method::Get, "/sleep") => {
                let ms: u64 = param("ms").and_then(|v| v.parse().ok()).unwrap_or(1000);
                // Suspends this request only: the instance serves others meanwhile.
                monotonic_clock::wait_for(ms.saturating_mul(1_000_000)).await;
                text(in_flight, 200, format!("slept {ms} ms\n"))
            }
            (Method::Get, "/count") => text(in_flight, 200, format!("{served}\n")),
            (Method::Get, "/concurrent") => {
                let now = IN_FLIGHT.load(Ordering::Relaxed);
                text(in_flight, 200, format!("{now}\n"))
            }
            (Method::Get, "/partial") => {
                // Output without a line end: the server must not join it to another request's.
                let msg = param("msg").unwrap_or_else(|| "partial".into());
                print!("{msg}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
                text(in_flight, 200, "printed\n")
            }
            (Method::Get, "/trap") => core::arch::wasm32::unreachable(),
            (Method::Get, "/spin") => loop {
                std::hint::black_box(());
            },
            (Method::Get, "/alloc") => {
                let mb: usize = param("mb").and_then(|v| v.parse().ok()).unwrap_or(1);
                let block = vec![1u8; mb << 20];
                let sum: usize = block.iter().step_by(4096).map(|&b| b as usize).sum();
                text(in_flight, 200, format!("touched {sum} pages\n"))
            }
            _ => text(in_flight, 404, "not found\n"),
        }
    }
}

/// A response with `status` and `headers` whose body `write` produces after `handle` has
/// returned the response, in a task that keeps `in_flight` until the body is complete.
fn respond<F, Fut>(
    in_flight: InFlight,
    status: u16,
    headers: &[(&str, Vec<u8>)],
    write: F,
) -> Result<Response, ErrorCode>
where
    F: FnOnce(StreamWriter<u8>) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let headers: Vec<_> = headers.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
    let headers = Fields::from_list(&headers)
        .map_err(|e| ErrorCode::InternalError(Some(format!("response headers: {e}"))))?;
    let (body_tx, body_rx) = wit_stream::new();
    // No trailers: the writer sends its default, `Ok(None)`, when dropped after the body.
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
    response
        .set_status_code(status)
        .map_err(|()| ErrorCode::InternalError(Some(format!("status {status}"))))?;
    let body = write(body_tx);
    wasip3::spawn_local(async move {
        body.await;
        drop(trailers_tx);
        drop(in_flight);
    });
    Ok(response)
}

/// A complete plain-text response.
fn text(in_flight: InFlight, status: u16, body: impl Into<Vec<u8>>) -> Result<Response, ErrorCode> {
    let body = body.into();
    let headers = [
        ("content-type", b"text/plain".to_vec()),
        ("content-length", body.len().to_string().into_bytes()),
    ];
    respond(in_flight, status, &headers, |mut tx| async move {
        tx.write_all(body).await;
    })
}

/// Copies `from` to `to` a chunk at a time, as it arrives, until either end is closed.
async fn copy(mut from: StreamReader<u8>, mut to: StreamWriter<u8>) {
    loop {
        let (status, chunk) = from.read(Vec::with_capacity(64 * 1024)).await;
        if !chunk.is_empty() && !to.write_all(chunk).await.is_empty() {
            break; // the reader of `to` went away
        }
        if status == StreamResult::Dropped {
            break;
        }
    }
}

/// Streams the request body back as it arrives.
fn echo(request: Request, in_flight: InFlight) -> Result<Response, ErrorCode> {
    let mut headers = vec![("content-type", b"application/octet-stream".to_vec())];
    if let Some(length) = request.get_headers().get("content-length").into_iter().next() {
        headers.push(("content-length", length));
    }
    // `handled` tells the host how handling the body went: its default, `Ok(())`, once dropped.
    let (handled_tx, handled_rx) = wit_future::new(|| Ok(()));
    let (body, trailers) = Request::consume_body(request, handled_rx);
    respond(in_flight, 200, &headers, |tx| async move {
        copy(body, tx).await;
        drop((handled_tx, trailers));
    })
}

/// GETs `url` (http://authority/path) and answers with what came back.
async fn fetch(url: &str, in_flight: InFlight) -> Result<Response, ErrorCode> {
    let Some(rest) = url.strip_prefix("http://") else {
        return text(in_flight, 400, "only http:// URLs\n");
    };
    let (authority, path) = match rest.find('/') {
        Some(at) => rest.split_at(at),
        None => (rest, "/"),
    };
    // No body, no trailers (the writer, dropped at once, sends `Ok(None)`); the method is GET.
    let (_, no_trailers) = wit_future::new(|| Ok(None));
    let (request, _sent) = Request::new(Fields::new(), None, no_trailers, None);
    if request.set_scheme(Some(&Scheme::Http)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some(path)).is_err()
    {
        return text(in_flight, 400, "invalid URL\n");
    }
    let upstream = match client::send(request).await {
        Ok(upstream) => upstream,
        Err(code) => return text(in_flight, 502, format!("upstream: {code}\n")),
    };
    let status = upstream.get_status_code();
    let (handled_tx, handled_rx) = wit_future::new(|| Ok(()));
    let (body, trailers) = Response::consume_body(upstream, handled_rx);
    let headers = [("x-upstream-status", status.to_string().into_bytes())];
    respond(in_flight, 200, &headers, |tx| async move {
        copy(body, tx).await;
        drop((handled_tx, trailers));
    })
}
