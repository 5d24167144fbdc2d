//! WASIp3 HTTP components (`wasi:http/handler@0.3`): requests go to wasmtime-wasi-http's
//! [`ProxyHandler`], which keeps instances as workers that each take up to
//! `WASMTIME_HTTP_MAX_INSTANCE_CONCURRENT_REUSE_COUNT` requests at once (16 by default) and
//! `WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT` in all (128), as `wasmtime serve` does.
//!
//! What the server adds around it, as for WASIp2 components:
//! - every instance holds a permit of the pool's semaphore from before it is created until its
//!   store is gone, so the pool's bound and the memory budget cover them all; a request that
//!   needs a new instance while no slot is free is offered again (to an instance with room, or
//!   a new one) until its deadline, then answers 503;
//! - requests past `instances × concurrent + WASMTIME_HTTP_MAX_QUEUED` get 503 at once;
//! - a request has until its deadline to answer (504), and the guest the request timeout from
//!   when its instance took the request; an instance whose requests overran it, or that
//!   trapped, is dropped with its store — with every request it was serving at the time (each
//!   of those answers 500: a guest's requests share its instance);
//! - an idle instance is dropped after `WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT`, and at once when
//!   the server stops, so a drain ends when the last request does.

use super::body::{Gather, Limited, plain};
use super::log::{self, Output};
use super::serve::report;
use super::{Proxy, RequestState};
use crate::Error;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use wasmtime::StoreContextMut;
use wasmtime::component::GuestTaskId;
use wasmtime_wasi_http::handler::{
    ExpirationError, HandlerState, Instance, InstantiationError, ProxyHandler, ShouldAccept,
    TrapOrPanicError, WorkerExpiration, WorkerState, WorkerStatus,
};
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiBody, WasiHttpView};

/// The WASIp3 side of a server.
pub(super) struct P3 {
    handler: ProxyHandler<Handler>,
    /// Requests between arrival and their response's head.
    in_flight: AtomicUsize,
    /// Past this many, new requests get 503.
    capacity: usize,
}

impl P3 {
    pub(super) fn new(
        proxy: &Arc<Proxy>,
        pre: ServicePre<RequestState>,
        instances: &Arc<Semaphore>,
        stop: watch::Receiver<bool>,
    ) -> P3 {
        let config = &proxy.config;
        let capacity = (proxy.slots as usize)
            .saturating_mul(config.concurrent_reuse)
            .saturating_add(config.queue);
        P3 {
            handler: ProxyHandler::new(Handler {
                proxy: proxy.clone(),
                pre,
                instances: instances.clone(),
                stop,
            }),
            in_flight: AtomicUsize::new(0),
            capacity,
        }
    }

    /// Answers `req`: the guest's response, or the server's own when it cannot.
    pub(super) async fn handle(
        &self,
        req: Request<Incoming>,
        deadline: Instant,
        label: &str,
    ) -> Response<WasiBody> {
        let _in_flight = match InFlight::enter(&self.in_flight, self.capacity) {
            Some(entered) => entered,
            None => return at_capacity(),
        };
        let config = &self.handler.state().proxy.config;
        let max_body = config.max_body;
        let mut req = req.map(|body| Limited::new(body, max_body).boxed_unsync());
        let response = loop {
            let handled = tokio::time::timeout_at(deadline, self.handler.handle((), req)).await;
            let err = match handled {
                Ok(Ok(response)) => break response,
                Ok(Err(err)) => err,
                Err(_) => {
                    report(label, "timed out");
                    return timed_out(config.timeout);
                }
            };
            // No slot for a new instance: offer the request again, while it has time.
            req = match err.downcast::<InstantiationError<()>>() {
                Ok(refused) if refused.error.downcast_ref::<NoSlot>().is_some() => {
                    if Instant::now() + RETRY >= deadline {
                        report(label, "no instance slot became free in time");
                        return at_capacity();
                    }
                    tokio::time::sleep(RETRY).await;
                    refused
                        .request
                        .into_inner()
                        .unwrap_or_else(|e| e.into_inner())
                }
                Ok(refused) => {
                    report(label, &format!("{:?}", refused.error));
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into());
                }
                Err(err) => return failed(label, &err, config.timeout),
            };
        };
        let (parts, mut body) = response.into_parts();
        let gathering = Gather::new(&mut body, |_| {});
        let Ok((gather, gathered)) = tokio::time::timeout_at(deadline, gathering).await else {
            report(label, "timed out before its body began");
            return timed_out(config.timeout);
        };
        gather.respond(parts, body, gathered)
    }
}

/// How long a request that found no free slot waits before it is offered again.
const RETRY: Duration = Duration::from_millis(5);

/// The server's answer to a request the dispatcher gave up on.
fn failed(label: &str, err: &wasmtime::Error, timeout: Duration) -> Response<WasiBody> {
    if err.downcast_ref::<ExpirationError>().is_some() {
        report(label, "timed out");
        return timed_out(timeout);
    }
    if err.downcast_ref::<TrapOrPanicError>().is_some() {
        // The instance's own failure is written when it is dropped (`Worker::drop`).
        report(label, "its instance failed");
        return plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the handler failed\n".into(),
        );
    }
    // The guest's error code, or a host error: the details go to the log only.
    report(label, &format!("{err:?}"));
    plain(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the handler failed\n".into(),
    )
}

fn at_capacity() -> Response<WasiBody> {
    plain(
        StatusCode::SERVICE_UNAVAILABLE,
        "the server is at capacity, try again later\n".into(),
    )
}

fn timed_out(timeout: Duration) -> Response<WasiBody> {
    plain(
        StatusCode::GATEWAY_TIMEOUT,
        format!("the handler did not answer within {timeout:?}\n"),
    )
}

/// A request counted in [`P3::in_flight`] until dropped.
struct InFlight<'a>(&'a AtomicUsize);

impl<'a> InFlight<'a> {
    fn enter(count: &'a AtomicUsize, capacity: usize) -> Option<InFlight<'a>> {
        let before = count.fetch_add(1, Ordering::AcqRel);
        let entered = InFlight(count);
        (before < capacity).then_some(entered)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// No pool slot is free for a new instance.
#[derive(Debug)]
struct NoSlot;

impl std::fmt::Display for NoSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("no instance slot is free")
    }
}

impl std::error::Error for NoSlot {}

/// What the dispatcher creates instances from.
struct Handler {
    proxy: Arc<Proxy>,
    pre: ServicePre<RequestState>,
    instances: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl HandlerState for Handler {
    type StoreData = RequestState;
    type WorkerExpiration = Expiration;
    type WorkerState = Worker;

    async fn instantiate(&self) -> wasmtime::Result<Instance<RequestState, Expiration, Worker>> {
        let config = &self.proxy.config;
        // Not waited for: the request goes back to `P3::handle`, which offers it again, maybe
        // to an instance with room by then.
        let permit = self
            .instances
            .clone()
            .try_acquire_owned()
            .map_err(|_| NoSlot)?;
        let mut store = self
            .proxy
            .new_store()
            .map_err(|e: Error| wasmtime::Error::msg(e.chain()))?;
        // A start function that never ends must not keep the slot (nor hold a drain back).
        let service = tokio::time::timeout(config.timeout, self.pre.instantiate_async(&mut store))
            .await
            .map_err(|_| {
                wasmtime::Error::msg(format!("instantiation took more than {:?}", config.timeout))
            })??;
        let mut stop = self.stop.clone();
        Ok(Instance {
            store,
            proxy: wasmtime_wasi_http::handler::Proxy::P3(service),
            view: RequestState::http,
            expiration: Expiration {
                idle: config.idle_timeout,
                request: config.timeout,
                sleep: Box::pin(tokio::time::sleep(Duration::MAX)),
                stop: Mutex::new(Box::pin(async move {
                    let _ = stop.wait_for(|stop| *stop).await;
                })),
                stopped: false,
            },
            state: Worker {
                reuse: usize::try_from(config.reuse).unwrap_or(usize::MAX),
                concurrent: config.concurrent_reuse,
                timeout: config.timeout,
                _permit: permit,
            },
        })
    }
}

/// When an instance goes: idle for the idle timeout (at once once the server stops), or busy
/// past the request timeout since its latest request came (the dispatcher's second line of
/// defence, for a guest that holds its store).
struct Expiration {
    idle: Duration,
    request: Duration,
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Resolves when the server stops.
    stop: Mutex<Pin<Box<dyn Future<Output = ()> + Send>>>,
    stopped: bool,
}

impl WorkerExpiration for Expiration {
    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        status: WorkerStatus,
        start: std::time::Instant,
    ) -> Poll<()> {
        let me = self.get_mut();
        if !me.stopped {
            let stop = me.stop.get_mut().unwrap_or_else(|e| e.into_inner());
            me.stopped = stop.as_mut().poll(cx).is_ready();
        }
        let timeout = match status {
            WorkerStatus::Idle if me.stopped => return Poll::Ready(()),
            WorkerStatus::Idle => me.idle,
            WorkerStatus::Requests | WorkerStatus::PostReturn => me.request,
        };
        let Some(deadline) = start.checked_add(timeout) else {
            return Poll::Pending;
        };
        let deadline = Instant::from_std(deadline);
        if me.sleep.deadline() != deadline {
            me.sleep.as_mut().reset(deadline);
        }
        me.sleep.as_mut().poll(cx)
    }
}

/// One instance's bounds; holds its pool permit, released after its store is dropped.
struct Worker {
    reuse: usize,
    concurrent: usize,
    /// How long the guest has for a request, from when it takes it.
    timeout: Duration,
    _permit: OwnedSemaphorePermit,
}

impl WorkerState for Worker {
    type StoreData = RequestState;
    type RequestData = ();

    fn should_accept_request(&self, concurrent: usize, total: usize) -> ShouldAccept {
        if total >= self.reuse {
            ShouldAccept::Never
        } else if concurrent >= self.concurrent {
            ShouldAccept::No
        } else {
            ShouldAccept::Yes
        }
    }

    fn on_request_start(
        &self,
        store: StoreContextMut<'_, RequestState>,
        _: (),
        _task: GuestTaskId,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + Sync + 'static>> {
        // A new request on this instance: its output starts on a line of its own.
        store.data().requests.fetch_add(1, Ordering::AcqRel);
        Box::pin(tokio::time::sleep(self.timeout))
    }

    fn drop(&self, store: wasmtime::Store<RequestState>, result: wasmtime::Result<()>) {
        drop(store);
        if let Err(err) = result {
            let mut text = format!("an instance failed: {err:?}");
            if !text.ends_with('\n') {
                text.push('\n');
            }
            let _ = log::write_locked(Output::Stderr, text.as_bytes());
        }
    }
}
