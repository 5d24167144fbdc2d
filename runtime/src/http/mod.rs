//! Serving a `wasi:http` component, in slots of wasmtime's pooling allocator sized from the
//! container's memory limit, on an engine that shares the command engine's compiled code (and
//! so the node's compile cache):
//! - a WASIp2 component (`wasi:http/incoming-handler@0.2`): every request gets a fresh instance
//!   from a pre-linked [`ProxyPre`] (or, with `WASMTIME_HTTP_MAX_INSTANCE_REUSE_COUNT` above 1,
//!   an instance that served earlier requests, one at a time, as `wasmtime serve` reuses them);
//! - a WASIp3 component (`wasi:http/handler@0.3`): wasmtime-wasi-http's `ProxyHandler`
//!   dispatches requests to instances, each serving up to 16 at once and 128 in all by
//!   default ([`p3`]).
//!
//! The settings come from the container's environment ([`config`]). Robustness rules:
//! - a trap answers 500 and only ends its own instance;
//! - a request waits for an instance while fewer than `WASMTIME_HTTP_MAX_QUEUED` wait, and gets
//!   503 otherwise, or when its timeout passes before an instance is free;
//! - a request's handler is bounded in time (504 if it has not answered by then, a cut body if it
//!   has), including a guest spinning in Wasm code: it yields to the server at every epoch tick;
//! - request bodies are bounded (413 up front for a declared length, a body error for a
//!   streamed one);
//! - all instances together stay within the container's memory limit (a refused `memory.grow`
//!   fails that request only);
//! - open connections are bounded (`WASMTIME_HTTP_MAX_CONNECTIONS`; past it, new ones wait in
//!   the listen backlog), and one must send a request's headers within 30 s of connecting or of
//!   its previous response;
//! - [`Shutdown`] stops accepting, lets requests in flight finish, then [`serve`] returns 0.

mod body;
mod config;
mod cost;
mod log;
mod p3;
mod reuse;
mod serve;

pub use config::{Generation, HttpConfig};
pub use cost::RequestCosts;
pub(crate) use cost::request_costs;
pub use serve::Shutdown;
pub(crate) use serve::serve;

use crate::engine;
use crate::error::wasmtime_source;
use crate::limits::{Budget, MemoryLimit};
use crate::{Error, GuestSpec};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::{Engine, Store};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::p2::bindings::ProxyPre;
use wasmtime_wasi_http::p3::bindings::ServicePre;
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// The export that makes a component a WASIp2 HTTP server.
pub const INCOMING_HANDLER: &str = "wasi:http/incoming-handler@";
/// The export that makes a component a WASIp3 HTTP server.
pub const HANDLER_P3: &str = "wasi:http/handler@0.3";

/// Bytes charged for one instance beyond its linear memories: its `VMContext`, tables and the
/// host state of one request (a conservative figure; the pool sizes itself with it).
const INSTANCE_OVERHEAD: u64 = 256 * 1024;

/// A linked HTTP component, ready to serve.
pub(crate) struct Proxy {
    engine: Engine,
    pre: Pre,
    config: HttpConfig,
    /// How many instances may live at once: the pool's size.
    slots: u32,
    wasi: WasiTemplate,
    /// The budget all instances share (each request's store gets a share of it).
    budget: Budget,
    /// Whether the component imports `wasi:filesystem` and `wasi:sockets`.
    uses_files: bool,
    uses_sockets: bool,
}

/// The pre-linked component, of either generation.
#[derive(Clone)]
enum Pre {
    P2(ProxyPre<RequestState>),
    P3(ServicePre<RequestState>),
}

/// What each request's WASI context is built from.
#[derive(Default)]
struct WasiTemplate {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    /// The root filesystem and volumes, preopened only for components that import
    /// `wasi:filesystem` (opening them is a per-request cost otherwise paid for nothing).
    preopens: Vec<(std::path::PathBuf, String, FsPerms)>,
    network: bool,
}

impl Proxy {
    /// Links `component` (compiled by the command engine, `entry` the cache file it was loaded
    /// from, if any) for serving: a pooling engine sized for `spec`, the component loaded into
    /// it, and WASI + wasi:http linked. The listen address is not bound yet.
    pub(crate) fn new(
        component: &Component,
        entry: Option<&std::path::Path>,
        spec: &GuestSpec,
        path: &str,
        generation: Generation,
    ) -> Result<Proxy, Error> {
        let config = HttpConfig::from_spec(spec, generation)?;
        let needs = component.resources_required();
        let per_instance = needs
            .as_ref()
            .and_then(|n| {
                let pages = n.max_initial_memory_size?;
                Some(u64::from(n.num_memories.max(1)) * pages * 65536)
            })
            .unwrap_or(1 << 20)
            + INSTANCE_OVERHEAD;
        let slots = config
            .concurrency
            .unwrap_or_else(|| slots_for(spec.memory_limit, per_instance));
        let memories_per = needs.as_ref().map_or(1, |n| n.num_memories.max(1));
        let tables_per = needs.as_ref().map_or(1, |n| n.num_tables.max(1));
        let engine = engine::new_pooling_engine(&engine::Pool {
            instances: slots,
            memories_per_instance: memories_per,
            tables_per_instance: tables_per,
            keep_resident: per_instance.min(8 << 20) as usize,
        })?;
        // The same compiled code, loaded into the serving engine (wasmtime checks that the two
        // engines compile alike): from the cache file when there is one, so the code stays
        // mapped from it and shared between pods.
        // SAFETY: the entry is the cache file the command engine just loaded (see
        // `cache::deserialize`), and the bytes are its own serialization of the same code.
        let served = unsafe {
            match entry {
                Some(entry) => Component::deserialize_file(&engine, entry),
                None => component
                    .serialize()
                    .and_then(|bytes| Component::deserialize(&engine, bytes)),
            }
        }
        .map_err(|e| Error::Engine(wasmtime_source(e)))?;
        let link_err = |e| Error::Link {
            path: path.to_string(),
            source: wasmtime_source(e),
        };
        let pre = match generation {
            Generation::P2 => {
                let mut linker: Linker<RequestState> = Linker::new(&engine);
                wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link_err)?;
                wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                    .map_err(link_err)?;
                let pre = linker.instantiate_pre(&served).map_err(link_err)?;
                Pre::P2(ProxyPre::new(pre).map_err(link_err)?)
            }
            Generation::P3 => {
                // WASI 0.2 and 0.3 together, as for a WASIp3 command, and both wasi:http
                // generations (Rust's std in the component speaks 0.2).
                let mut linker = crate::p3::linker(&engine).map_err(link_err)?;
                wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)
                    .map_err(link_err)?;
                wasmtime_wasi_http::p3::add_to_linker(&mut linker).map_err(link_err)?;
                let pre = linker.instantiate_pre(&served).map_err(link_err)?;
                Pre::P3(ServicePre::new(pre).map_err(link_err)?)
            }
        };

        let imports = |prefix: &str| {
            served
                .component_type()
                .imports(&engine)
                .any(|(name, _)| name.starts_with(prefix))
        };
        let uses_files = imports("wasi:filesystem/preopens@");
        let uses_sockets = imports("wasi:sockets/");
        let budget = Budget::new(MemoryLimit::new(spec.memory_limit));
        let mut proxy = Proxy {
            engine,
            pre,
            config,
            slots,
            wasi: WasiTemplate::default(),
            budget,
            uses_files,
            uses_sockets,
        };
        proxy.set_wasi(spec);
        Ok(proxy)
    }

    /// Takes what each request's WASI context gets from `spec`: argv, environment, working
    /// directory, the root filesystem and volumes (as the process sees them now: call again after
    /// the process changed its root), and sockets.
    pub(crate) fn set_wasi(&mut self, spec: &GuestSpec) {
        let mut preopens = Vec::new();
        if self.uses_files {
            let perms = |readonly| {
                if readonly {
                    FsPerms::ReadOnly
                } else {
                    FsPerms::ReadWrite
                }
            };
            preopens.push((
                spec.rootfs.clone(),
                "/".to_string(),
                perms(spec.readonly_rootfs),
            ));
            for m in &spec.mounts {
                preopens.push((m.host.clone(), m.guest.clone(), perms(m.readonly)));
            }
        }
        let mut args = spec.args.clone();
        if let Some(arg0) = args.first_mut() {
            *arg0 = crate::resolve::split_export(arg0).0.to_string();
        }
        self.wasi = WasiTemplate {
            args,
            env: spec
                .env_pairs()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            cwd: spec.cwd.clone(),
            preopens,
            network: spec.network && self.uses_sockets,
        };
    }

    /// The limit all instances share; the guest process changes it on a resize.
    pub(crate) fn memory_limit(&self) -> MemoryLimit {
        self.budget.limit()
    }

    pub(crate) fn config(&self) -> &HttpConfig {
        &self.config
    }

    /// A fresh request's store: its WASI context, its share of the memory budget, and the
    /// epoch deadline that makes a guest yield at every tick (the timeout is enforced around it).
    fn new_store(&self) -> Result<Store<RequestState>, Error> {
        let mut store = Store::new(&self.engine, self.request_state()?);
        store.limiter(|state| &mut state.budget);
        store.epoch_deadline_async_yield_and_update(1);
        Ok(store)
    }

    /// A fresh request's store data.
    fn request_state(&self) -> Result<RequestState, Error> {
        let t = &self.wasi;
        let mut b = WasiCtxBuilder::new();
        b.args(&t.args).envs(&t.env);
        let requests = Arc::new(AtomicU64::new(0));
        if self.config.reuse > 1 {
            let output = |output| log::InstanceOutput {
                output,
                requests: requests.clone(),
            };
            b.stdout(output(log::Output::Stdout))
                .stderr(output(log::Output::Stderr));
        } else {
            b.stdout(log::Output::Stdout).stderr(log::Output::Stderr);
        }
        if !t.cwd.is_empty() {
            b.initial_cwd(&t.cwd);
        }
        for (host, guest, perms) in &t.preopens {
            b.preopened_dir(host, guest, *perms)
                .map_err(|e| Error::Io {
                    context: format!("open {} for {guest}", host.display()),
                    source: std::io::Error::other(format!("{e:#}")),
                })?;
        }
        if t.network {
            b.inherit_network();
            b.allow_tcp(true);
            b.allow_udp(true);
            b.allow_ip_name_lookup(true);
        }
        Ok(RequestState {
            wasi: b.build(),
            http: WasiHttpCtx::new(),
            table: ResourceTable::new(),
            budget: self.budget.share(),
            requests,
        })
    }
}

/// How many instances fit in `limit` at `per_instance` bytes each, between 1 and
/// [`config::MAX_INSTANCES`].
fn slots_for(limit: Option<u64>, per_instance: u64) -> u32 {
    let Some(limit) = limit else {
        return config::MAX_INSTANCES;
    };
    let fit = limit / per_instance.max(1);
    fit.clamp(1, u64::from(config::MAX_INSTANCES)) as u32
}

/// Store data of one request.
struct RequestState {
    wasi: WasiCtx,
    http: WasiHttpCtx,
    table: ResourceTable,
    budget: Budget,
    /// Requests this instance has started (see [`log::InstanceOutput`]).
    requests: Arc<AtomicU64>,
}

impl WasiView for RequestState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for RequestState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: wasmtime_wasi_http::default_hooks(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_memory_limit() {
        assert_eq!(slots_for(None, 1 << 20), 1000);
        assert_eq!(slots_for(Some(128 << 20), 2 << 20), 64);
        assert_eq!(slots_for(Some(1 << 20), 2 << 20), 1);
        assert_eq!(slots_for(Some(1 << 40), 1 << 20), 1000);
    }
}
