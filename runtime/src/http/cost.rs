//! Where one request's time goes inside the server, apart from the network and HTTP: the
//! benchmark reports it next to its end-to-end figures, so that the share of wasmtime's
//! per-instance work (instantiation, the handler, the slot reset) is measured rather than
//! guessed.

use super::{Pre, Proxy};
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
    /// The guest's handler, until it has returned and its response body is complete.
    pub handle: Duration,
    /// Dropping the store: the instance's pool slot is reset for the next request.
    pub reset: Duration,
}

impl RequestCosts {
    pub fn total(&self) -> Duration {
        self.setup + self.instantiate + self.handle + self.reset
    }
}

/// Serves `requests` requests for `path` to `proxy` in this thread, step by step. Each request
/// is bounded by the server's request timeout; a request that fails, times out or answers
/// other than 2xx ends the measurement with an error. Must not be called from within a tokio
/// runtime (it runs its own).
pub(crate) fn request_costs(
    proxy: &Proxy,
    path: &str,
    requests: u32,
) -> Result<RequestCosts, Error> {
    let failed = |reason: String| Error::Io {
        context: format!("serve GET {path}"),
        source: std::io::Error::other(reason),
    };
    let Pre::P2(pre) = &proxy.pre else {
        return Err(Error::Unsupported(
            "measuring the request costs of a WASIp3 component".into(),
        ));
    };
    let request = || {
        hyper::Request::get(format!("http://localhost{path}"))
            .body(
                Empty::<Bytes>::new()
                    .map_err(|never| -> wasmtime_wasi_http::Error { match never {} }),
            )
            .map_err(|e| failed(format!("{e}")))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::io("start a runtime"))?;
    // A guest computing for long yields at each tick, so the timeout can end it.
    let _ticker = super::serve::Ticker::start(&proxy.engine)?;
    runtime.block_on(async {
        let mut sum = [Duration::ZERO; 4];
        for round in 0..requests.saturating_mul(2) {
            let began = Instant::now();
            let mut store = proxy.new_store()?;
            let (sender, receiver) = tokio::sync::oneshot::channel();
            let http = &mut store.data_mut().http();
            let incoming = http
                .new_incoming_request(Scheme::Http, request()?)
                .map_err(|e| failed(format!("{e:#}")))?;
            let out = http
                .new_response_outparam(sender)
                .map_err(|e| failed(format!("{e:#}")))?;
            let set_up = Instant::now();
            let served = tokio::time::timeout(proxy.config.timeout, async {
                let instance = pre
                    .instantiate_async(&mut store)
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                let instantiated = Instant::now();
                // The handler and the body together, as the server drives them: a body larger
                // than its channel only completes while it is read.
                let handling = async {
                    instance
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, out)
                        .await
                        .map_err(|e| format!("{e:#}"))
                };
                let reading = async {
                    let response = receiver
                        .await
                        .map_err(|_| "the handler sent no response".to_string())?
                        .map_err(|code| format!("the handler failed: {code:?}"))?;
                    let status = response.status();
                    response
                        .into_body()
                        .collect()
                        .await
                        .map_err(|e| format!("the response body: {e}"))?;
                    if !status.is_success() {
                        return Err(format!("the handler answered {status}"));
                    }
                    Ok(())
                };
                // A trap ends the wait for a response the guest will never send.
                tokio::try_join!(handling, reading)?;
                Ok::<_, String>(instantiated)
            })
            .await;
            let instantiated = match served {
                Ok(Ok(instantiated)) => instantiated,
                Ok(Err(reason)) => return Err(failed(reason)),
                Err(_) => {
                    return Err(failed(format!(
                        "no answer within {:?}",
                        proxy.config.timeout
                    )));
                }
            };
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
