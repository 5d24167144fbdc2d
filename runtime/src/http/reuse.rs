//! Instance reuse, with `wasmtime serve`'s semantics: an instance whose request completed may
//! serve the next one (one at a time: a WASIp2 component handles one request per instance at
//! once) until it has served `WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT` requests, or has idled for
//! `WASMTIME_HTTP_IDLE_INSTANCE_TIMEOUT`. A trap or timeout retires it (its store is dropped).
//!
//! An idle instance keeps its pool slot and the permit that stands for it, so the pool's bound
//! and the memory budget still cover every instance, idle or busy. A request that must wait for
//! a permit never waits behind an idle instance: one kept while requests wait is dropped instead,
//! freeing its permit for them.

use super::RequestState;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::OwnedSemaphorePermit;
use wasmtime::Store;
use wasmtime_wasi_http::p2::bindings::Proxy;

/// An instance with its store, between or during requests. Fields drop in order: the store
/// (and its pool slot) before the permit that lets another request take the slot.
pub(super) struct Instance {
    pub(super) store: Store<RequestState>,
    /// `None` until instantiated (a fresh store).
    pub(super) proxy: Option<Proxy>,
    /// Requests it has completed.
    pub(super) served: u64,
    pub(super) permit: OwnedSemaphorePermit,
}

/// The idle instances, most recently used last.
pub(super) struct Idle {
    list: Mutex<IdleList>,
    max_served: u64,
    timeout: Duration,
}

struct IdleList {
    instances: Vec<(Instance, Instant)>,
    /// Set when the server stops: nothing more is kept.
    closed: bool,
}

impl Idle {
    pub(super) fn new(max_served: u64, timeout: Duration) -> Idle {
        Idle {
            list: Mutex::new(IdleList {
                instances: Vec::new(),
                closed: false,
            }),
            max_served,
            timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, IdleList> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether instances are reused at all.
    pub(super) fn enabled(&self) -> bool {
        self.max_served > 1
    }

    /// The most recently used idle instance (its memory is the warmest), if any.
    pub(super) fn take(&self) -> Option<Instance> {
        if !self.enabled() {
            return None;
        }
        let (instance, since) = self.lock().instances.pop()?;
        if since.elapsed() > self.timeout {
            drop(instance);
            return self.take();
        }
        Some(instance)
    }

    /// Keeps `instance` for a later request, unless it has served its count or the server is
    /// stopping. `waiting` counts requests waiting for a permit: if any do, an idle instance
    /// is dropped so its permit goes to one of them. (The keep comes before the look at
    /// `waiting`, and a waiter counts itself before it looks for an idle instance, so a waiter
    /// either finds the kept instance or gets a permit.)
    pub(super) fn keep(&self, instance: Instance, waiting: &AtomicUsize) {
        if instance.served >= self.max_served {
            return;
        }
        let dropped = {
            let mut list = self.lock();
            if list.closed {
                Some(instance)
            } else {
                list.instances.push((instance, Instant::now()));
                None
            }
        };
        drop(dropped);
        if waiting.load(Ordering::SeqCst) > 0 {
            let freed = self.lock().instances.pop();
            drop(freed);
        }
    }

    /// Drops the instances idle for longer than the timeout.
    pub(super) fn sweep(&self) {
        let expired: Vec<_> = {
            let mut list = self.lock();
            let timeout = self.timeout;
            let (old, kept) = std::mem::take(&mut list.instances)
                .into_iter()
                .partition(|(_, since)| since.elapsed() > timeout);
            list.instances = kept;
            old
        };
        drop(expired);
    }

    /// How often [`Idle::sweep`] should run.
    pub(super) fn sweep_every(&self) -> Duration {
        (self.timeout / 2).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }

    /// Drops every idle instance and keeps no more (the server is stopping).
    pub(super) fn close(&self) {
        let all = {
            let mut list = self.lock();
            list.closed = true;
            std::mem::take(&mut list.instances)
        };
        drop(all);
    }
}
