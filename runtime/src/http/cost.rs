//! Where one request's time goes inside the server, apart from the network and HTTP: the
//! benchmark reports it next to its end-to-end figures, so that the share set by wasmtime's own
//! per-instance work (a floor for any server that gives each request a fresh instance) is
//! measured rather than guessed.

use super::Proxy;
use crate::Error;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use std::time::{Duration, Instant};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// Mean time per request of each step, over `requests` GET requests served one after another on
/// one thread (after as many again to warm up).
#[derive(Debug, Clone, Default)]
pub struct RequestCosts {
    pub requests: u32,
    /// A store with its WASI context and memory budget, and the request's resources in it.
    pub setup: Duration,
    /// A fresh instance from the pre-linked component (a pool slot, its imports, its start).
    pub instantiate: Duration,
    /// The guest's handler, until its response body is complete.
    pub handle: Duration,
    /// Dropping the store: the instance's pool slot is reset for the next request.
    pub reset: Duration,
}

impl RequestCosts {
    pub fn total(&self) -> Duration {
        self.setup + self.instantiate + self.handle + self.reset
    }
}

/// Serves `requests` requests for `path` to `proxy` in this thread, step by step.
pub(crate) fn request_costs(
    proxy: &Proxy,
    path: &str,
    requests: u32,
) -> Result<RequestCosts, Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("start a runtime"))?;
    let failed = |e: wasmtime::Error| Error::Io {
        context: format!("serve GET {path}"),
        source: std::io::Error::other(format!("{e:?}")),
    };
    let uri = format!("http://localhost{path}");
    runtime.block_on(async {
        let mut sum = [Duration::ZERO; 4];
        for round in 0..2 * requests {
            let began = Instant::now();
            let mut store = proxy.new_store()?;
            let request = hyper::Request::get(uri.as_str())
                .body(
                    Empty::<Bytes>::new()
                        .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
                )
                .map_err(|e| Error::InvalidSpec(format!("request for {path}: {e}")))?;
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let http = &mut store.data_mut().http();
            let request = http
                .new_incoming_request(Scheme::Http, request)
                .map_err(failed)?;
            let out = http.new_response_outparam(sender).map_err(failed)?;
            let set_up = Instant::now();
            let instance = proxy
                .pre
                .instantiate_async(&mut store)
                .await
                .map_err(failed)?;
            let instantiated = Instant::now();
            instance
                .wasi_http_incoming_handler()
                .call_handle(&mut store, request, out)
                .await
                .map_err(failed)?;
            let response = receiver
                .await
                .map_err(|_| failed(wasmtime::format_err!("the handler sent no response")))?
                .map_err(|code| failed(wasmtime::format_err!("the handler failed: {code:?}")))?;
            response
                .into_body()
                .collect()
                .await
                .map_err(|e| failed(wasmtime::format_err!("the response body: {e}")))?;
            let handled = Instant::now();
            drop(store);
            let reset = Instant::now();
            if round >= requests {
                let steps = [began, set_up, instantiated, handled, reset];
                for (i, pair) in steps.windows(2).enumerate() {
                    sum[i] += pair[1] - pair[0];
                }
            }
        }
        let mean = |d: Duration| d / requests.max(1);
        Ok(RequestCosts {
            requests,
            setup: mean(sum[0]),
            instantiate: mean(sum[1]),
            handle: mean(sum[2]),
            reset: mean(sum[3]),
        })
    })
}
