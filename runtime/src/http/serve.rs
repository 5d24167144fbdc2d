//! The server: hyper's HTTP/1.1 over a tokio runtime, one fresh instance per request (or a
//! reused one, see [`super::reuse`]).

use super::body::{Gather, Gathered, Limited, plain};
use super::log::{self, Output};
use super::p3::P3;
use super::reuse::{Idle, Instance};
use super::{Pre, Proxy, RequestState};
use crate::Error;
use hyper::body::{Body, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioTimer;
use hyper_util::server::graceful::GracefulShutdown;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::Instant;
use wasmtime_wasi_http::WasiBody;
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;

/// How often the engine's epoch advances: a guest running Wasm code yields to the server at
/// least this often, so timeouts and other requests on its thread are not held up by it.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// How long a client may take to send a request's headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// Tells a running server to stop accepting connections and to return once the requests in
/// flight are done. Cheap to clone; usable from any thread, before or while serving.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown(Arc::new(watch::Sender::new(false)))
    }
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Starts the graceful stop. Calling it again does nothing more.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

struct Server {
    proxy: Arc<Proxy>,
    /// Where requests go.
    dispatch: Dispatch,
    /// One permit per pool slot: a request holds one from before its instance is created
    /// until its store is gone.
    instances: Arc<Semaphore>,
    /// Requests waiting for a permit.
    waiting: AtomicUsize,
    /// Instances kept for reuse.
    idle: Idle,
}

enum Dispatch {
    /// A WASIp2 component: each request runs on its connection's task (see [`Server::handle`]).
    P2(ProxyPre<RequestState>),
    /// A WASIp3 component: requests go to wasmtime-wasi-http's dispatcher.
    P3(P3),
}

/// Serves `proxy` until `shutdown` is triggered and the requests in flight are done.
///
/// On tokio's multi-threaded runtime, one worker per CPU (or `WASMTIME_HTTP_WORKERS`). A guest
/// runs inside its connection's task (see [`Server::handle`]); one that computes for long
/// yields at every epoch tick, so the other tasks of its worker keep being served or stolen.
/// (One single-threaded runtime per CPU, each with its own `SO_REUSEPORT` socket, measured no
/// better here and balances worse.)
pub(crate) fn serve(proxy: Proxy, shutdown: &Shutdown) -> Result<(), Error> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = proxy.config.workers {
        builder.worker_threads(workers);
    }
    let runtime = builder
        .enable_all()
        .thread_name("http")
        .build()
        .map_err(Error::io("start the HTTP server's runtime"))?;
    let ticker = Ticker::start(&proxy.engine)?;
    let slots = proxy.slots as usize;
    let instances = Arc::new(Semaphore::new(slots));
    let proxy = Arc::new(proxy);
    let (dispatch, reuse) = match &proxy.pre {
        Pre::P2(pre) => (Dispatch::P2(pre.clone()), proxy.config.reuse),
        // The dispatcher keeps its own instances.
        Pre::P3(pre) => {
            let p3 = P3::new(&proxy, pre.clone(), &instances, shutdown.0.subscribe());
            (Dispatch::P3(p3), 1)
        }
    };
    let idle = Idle::new(reuse, proxy.config.idle_timeout);
    let server = Arc::new(Server {
        proxy,
        dispatch,
        instances,
        waiting: AtomicUsize::new(0),
        idle,
    });
    let result = runtime.block_on(run(server, shutdown.0.subscribe()));
    drop(ticker);
    // Nothing of the guests is left; do not wait for idle blocking threads.
    runtime.shutdown_background();
    result
}

/// Advances an engine's epoch every [`EPOCH_TICK`] on its own thread, until dropped.
pub(super) struct Ticker {
    ticking: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    pub(super) fn start(engine: &wasmtime::Engine) -> Result<Ticker, Error> {
        let ticking = Arc::new(AtomicBool::new(true));
        let thread = {
            let engine = engine.clone();
            let ticking = ticking.clone();
            std::thread::Builder::new()
                .name("epoch".into())
                .spawn(move || {
                    while ticking.load(Ordering::Relaxed) {
                        std::thread::sleep(EPOCH_TICK);
                        engine.increment_epoch();
                    }
                })
                .map_err(Error::io("start the epoch thread"))?
        };
        Ok(Ticker {
            ticking,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.ticking.store(false, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn run(server: Arc<Server>, mut stop: watch::Receiver<bool>) -> Result<(), Error> {
    let addr = server.proxy.config.addr;
    let listener = bind(addr).map_err(Error::io(format!("listen on {addr}")))?;
    let local = listener.local_addr().unwrap_or(addr);
    let _ = log::write_locked(
        Output::Stderr,
        match &server.dispatch {
            Dispatch::P2(_) => format!(
                "serving HTTP on http://{local}/ (up to {} requests at once)\n",
                server.proxy.slots
            ),
            Dispatch::P3(_) => format!(
                "serving HTTP on http://{local}/ (WASIp3: up to {} instances, {} requests at \
                 once on each, {} in all on each)\n",
                server.proxy.slots, server.proxy.config.concurrent_reuse, server.proxy.config.reuse
            ),
        }
        .as_bytes(),
    );
    if server.idle.enabled() {
        let server = server.clone();
        let mut stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(server.idle.sweep_every());
            loop {
                tokio::select! {
                    _ = stop.wait_for(|stop| *stop) => break,
                    _ = every.tick() => server.idle.sweep(),
                }
            }
        });
    }
    let graceful = GracefulShutdown::new();
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .keep_alive(true)
        .header_read_timeout(HEADER_TIMEOUT);
    // Past the bound, new connections wait in the listen backlog until one closes.
    let connections = Arc::new(Semaphore::new(server.proxy.config.max_connections));
    loop {
        let permit = tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(_) => {
                        // Out of fds or memory for a moment: let connections finish.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let server = server.clone();
                let service = service_fn(move |req| {
                    let server = server.clone();
                    async move { Ok::<_, Infallible>(server.handle(req).await) }
                });
                let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
                tokio::spawn(async move {
                    let _ = conn.await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    graceful.shutdown().await;
    server.idle.close();
    // Instances whose client went away may still be running their handler.
    let _ = server.instances.acquire_many(server.proxy.slots).await;
    Ok(())
}

/// A request's handler: instantiation, the call, its timeout; holds the instance's permit.
type GuestRun = Pin<Box<dyn Future<Output = Result<(), Failure>> + Send>>;

/// Lets a guest that has answered run to its end on its own task (it holds its instance until
/// then); nothing to do if it has ended.
fn finish_later(guest: GuestRun, ended: bool) {
    if !ended {
        tokio::spawn(guest);
    }
}

/// What a request runs on.
enum Slot {
    /// An instance that served earlier requests.
    Idle(Instance),
    /// A permit for a fresh instance.
    Fresh(OwnedSemaphorePermit),
}

/// Why a request's handler did not complete.
enum Failure {
    Trap(wasmtime::Error),
    Timeout,
}

impl Server {
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<WasiBody> {
        let deadline = Instant::now() + self.proxy.config.timeout;
        let max_body = self.proxy.config.max_body;
        if let Some(length) = req.body().size_hint().exact()
            && length > max_body
        {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body of {length} bytes is over the limit of {max_body}\n"),
            );
        }
        let label = format!("{} {}", req.method(), req.uri().path());
        let pre = match &self.dispatch {
            Dispatch::P2(pre) => pre.clone(),
            Dispatch::P3(p3) => return p3.handle(req, deadline, &label).await,
        };
        let instance = match self.admit(deadline).await {
            Some(Slot::Idle(instance)) => instance,
            Some(Slot::Fresh(permit)) => match self.proxy.new_store() {
                Ok(store) => Instance {
                    store,
                    proxy: None,
                    served: 0,
                    permit,
                },
                Err(err) => {
                    report(&label, &err.chain());
                    return plain(StatusCode::INTERNAL_SERVER_ERROR, "internal error\n".into());
                }
            },
            None => {
                return plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the server is at capacity, try again later\n".into(),
                );
            }
        };
        let Instance {
            mut store,
            proxy: instantiated,
            served,
            permit,
        } = instance;
        // A new request on this instance: its output starts on a line of its own.
        store.data().requests.fetch_add(1, Ordering::AcqRel);
        let req = req.map(|body| Limited::new(body, max_body));
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let prepared = (|| {
            let req = store
                .data_mut()
                .http()
                .new_incoming_request(Scheme::Http, req)?;
            let out = store.data_mut().http().new_response_outparam(sender)?;
            Ok::<_, wasmtime::Error>((req, out))
        })();
        let (req, out) = match prepared {
            Ok(resources) => resources,
            Err(err) => {
                return plain(StatusCode::BAD_REQUEST, format!("bad request: {err}\n"));
            }
        };
        let server = self.clone();
        let mut guest: GuestRun = Box::pin(async move {
            let permit: OwnedSemaphorePermit = permit;
            let handled = async {
                let proxy = match instantiated {
                    Some(proxy) => proxy,
                    None => pre.instantiate_async(&mut store).await?,
                };
                proxy
                    .wasi_http_incoming_handler()
                    .call_handle(&mut store, req, out)
                    .await?;
                Ok::<_, wasmtime::Error>(proxy)
            };
            let outcome = tokio::time::timeout_at(deadline, handled).await;
            // Only an instance whose request completed serves again; a trap or timeout
            // retires it with its store.
            let result = match outcome {
                Ok(Ok(proxy)) => {
                    let instance = Instance {
                        store,
                        proxy: Some(proxy),
                        served: served + 1,
                        permit,
                    };
                    server.idle.keep(instance, &server.waiting);
                    Ok(())
                }
                Ok(Err(trap)) => Err(Failure::Trap(trap)),
                Err(_) => Err(Failure::Timeout),
            };
            match &result {
                Ok(()) => {}
                Err(Failure::Trap(trap)) => report(&label, &format!("{trap:?}")),
                Err(Failure::Timeout) => report(&label, "timed out"),
            }
            result
        });

        // The guest runs right here, in the connection's task, until it has answered.
        let mut receiver = receiver;
        let mut ended = None;
        let answer = std::future::poll_fn(|cx| {
            if let Poll::Ready(answer) = Pin::new(&mut receiver).poll(cx) {
                return Poll::Ready(answer.ok());
            }
            match guest.as_mut().poll(cx) {
                Poll::Ready(done) => {
                    ended = Some(done);
                    Poll::Ready(receiver.try_recv().ok())
                }
                Poll::Pending => Poll::Pending,
            }
        })
        .await;
        let response = match answer {
            Some(Ok(response)) => response,
            Some(Err(code)) => {
                finish_later(guest, ended.is_some());
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the handler failed: {code:?}\n"),
                );
            }
            None => {
                let done = match ended {
                    Some(done) => done,
                    None => guest.await,
                };
                return match done {
                    Err(Failure::Timeout) => plain(
                        StatusCode::GATEWAY_TIMEOUT,
                        format!(
                            "the handler did not answer within {:?}\n",
                            self.proxy.config.timeout
                        ),
                    ),
                    Err(Failure::Trap(_)) => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the handler failed\n".into(),
                    ),
                    Ok(()) => plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the handler returned without a response\n".into(),
                    ),
                };
            }
        };

        // Keep running the guest while its body comes, so that a small response leaves in one
        // write with a Content-Length; a large or slow one is streamed from what is there.
        let (parts, mut body) = response.into_parts();
        let mut finished = ended.is_some();
        let (gather, gathered) = Gather::new(&mut body, |cx| {
            if !finished && guest.as_mut().poll(cx).is_ready() {
                finished = true;
            }
        })
        .await;
        // With reuse, a complete response leaves once its handler has returned (at once, for
        // a handler that ends with its body), so the client's next request finds the instance
        // idle again.
        if !finished && self.idle.enabled() && matches!(gathered, Gathered::Complete) {
            let _ = guest.as_mut().await;
            finished = true;
        }
        finish_later(guest, finished);
        gather.respond(parts, body, gathered)
    }

    /// An idle instance, or a permit for a new one: at once if one is free, after waiting if
    /// fewer than the queue's bound wait already, `None` when the queue is full or `deadline`
    /// passes first.
    async fn admit(&self, deadline: Instant) -> Option<Slot> {
        if let Some(instance) = self.idle.take() {
            return Some(Slot::Idle(instance));
        }
        if let Ok(permit) = self.instances.clone().try_acquire_owned() {
            return Some(Slot::Fresh(permit));
        }
        let queue = self.proxy.config.queue;
        // Counted before the second look for an idle instance (see `Idle::keep`).
        let waiting = self.waiting.fetch_add(1, Ordering::SeqCst);
        let slot = if waiting >= queue {
            None
        } else if let Some(instance) = self.idle.take() {
            Some(Slot::Idle(instance))
        } else {
            tokio::time::timeout_at(deadline, self.instances.clone().acquire_owned())
                .await
                .ok()
                .and_then(Result::ok)
                .map(Slot::Fresh)
        };
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        slot
    }
}

/// Writes a failed request's reason to the container's stderr, as one block.
pub(super) fn report(label: &str, reason: &str) {
    let mut text = format!("request {label} failed: {reason}");
    if !text.ends_with('\n') {
        text.push('\n');
    }
    let _ = log::write_locked(Output::Stderr, text.as_bytes());
}
