//! Preparing a program (everything that can fail on bad input) and running it once.

use crate::cache::{CacheOutcome, CompileCache, Compiled, Fetched};
use crate::error::wasmtime_source;
use crate::exit::{self, Outcome};
use crate::http::{Proxy, RequestCosts, Shutdown};
use crate::limits::{Budget, MemoryLimit};
use crate::{Entrypoint, Error, GuestSpec, WasmKind, engine};
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, ExternType, InstancePre, Linker, Module, Store, Val};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::bindings::sync::Command;
use wasmtime_wasi::p2::pipe::{MemoryInputPipe, MemoryOutputPipe};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

/// Where the guest's stdio goes.
#[derive(Debug, Clone, Default)]
pub enum Stdio {
    /// This process's fds 0, 1 and 2 (the guest process in production).
    #[default]
    Inherit,
    /// `stdin` as input; output kept in memory and returned in [`Outcome`] (tests, tools).
    Capture { stdin: Vec<u8> },
}

/// A compiled and linked program whose WASI capabilities are not opened yet: what a guest
/// process prepares before it confines itself (the entrypoint and the compile cache are host
/// paths), to be turned into a [`Program`] afterwards.
pub struct Loaded {
    engine: Engine,
    path: String,
    cache: CacheOutcome,
    pre: Pre,
}

enum Pre {
    Module {
        pre: InstancePre<ModuleState>,
        export: String,
    },
    Component {
        pre: wasmtime::component::InstancePre<ComponentState>,
        /// A WASIp3 command (its `run` is async: see [`crate::p3`]).
        p3: bool,
    },
    /// A `wasi:http/proxy` component, linked on its own serving engine.
    Proxy(Box<Proxy>),
}

/// A linked program with its WASI capabilities, ready to be started once.
pub struct Program {
    engine: Engine,
    path: String,
    cache: CacheOutcome,
    linked: Linked,
    memory_limit: MemoryLimit,
    captured: Option<(MemoryOutputPipe, MemoryOutputPipe)>,
    shutdown: Shutdown,
}

enum Linked {
    Module {
        pre: InstancePre<ModuleState>,
        state: ModuleState,
        export: String,
    },
    Component {
        pre: wasmtime::component::InstancePre<ComponentState>,
        state: ComponentState,
        p3: bool,
    },
    Proxy(Box<Proxy>),
}

/// The engine and the WASI linkers: built once per process (before the program is known, so
/// a guest process can get them ready while it waits for work), used by every [`Program`].
pub struct Host {
    engine: Engine,
    modules: Linker<ModuleState>,
    components: wasmtime::component::Linker<ComponentState>,
}

impl Host {
    pub fn new() -> Result<Host, Error> {
        let engine = engine::new_engine()?;
        let engine_err = |e| Error::Engine(wasmtime_source(e));
        let mut modules: Linker<ModuleState> = Linker::new(&engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut modules, |s| &mut s.wasi).map_err(engine_err)?;
        let mut components = wasmtime::component::Linker::<ComponentState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut components).map_err(engine_err)?;
        Ok(Host {
            engine,
            modules,
            components,
        })
    }
}

/// Store data of a core module guest.
struct ModuleState {
    wasi: WasiP1Ctx,
    budget: Budget,
}

/// Store data of a component guest.
struct ComponentState {
    ctx: WasiCtx,
    table: ResourceTable,
    budget: Budget,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.ctx,
            table: &mut self.table,
        }
    }
}

/// A Wasm binary kept outside the root filesystem, such as an OCI image layer in containerd's
/// content store, named by its digest.
pub trait Blob {
    /// The sha256 of the bytes, as `sha256:<hex>`.
    fn digest(&self) -> &str;
    /// What messages call it, e.g. `layer app.wasm (sha256:...)`.
    fn name(&self) -> &str;
    /// The bytes, checked against the digest. Only called when the compile cache misses.
    fn read(&self) -> Result<Vec<u8>, Error>;
}

impl Loaded {
    /// Resolves, loads (or compiles) and links the program `spec` names. Nothing of the guest
    /// runs yet and no WASI capability is opened.
    pub fn load(host: &Host, spec: &GuestSpec, cache: &CompileCache) -> Result<Loaded, Error> {
        let entry = Entrypoint::resolve(spec)?;
        let kind = engine::kind_of(&entry.bytes, &entry.path)?;
        let fetched = cache.load(&host.engine, kind, &entry.bytes, &entry.path)?;
        drop(entry.bytes);
        Loaded::link(host, fetched, entry.path, entry.export, spec)
    }

    /// Loads (or compiles) and links `blob` to run as `spec` says. The compile cache is looked
    /// up by the blob's digest, so on a hit the blob is not read at all.
    pub fn load_blob(
        host: &Host,
        blob: &dyn Blob,
        spec: &GuestSpec,
        cache: &CompileCache,
    ) -> Result<Loaded, Error> {
        let hex = blob
            .digest()
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
            .ok_or_else(|| {
                Error::Image(format!(
                    "{}: unsupported digest {:?} (sha256 only)",
                    blob.name(),
                    blob.digest()
                ))
            })?;
        let path = blob.name().to_string();
        let fetched = cache.load_digest(&host.engine, hex, &path, || blob.read())?;
        Loaded::link(host, fetched, path, None, spec)
    }

    fn link(
        host: &Host,
        fetched: Fetched,
        path: String,
        export: Option<String>,
        spec: &GuestSpec,
    ) -> Result<Loaded, Error> {
        let outcome = fetched.outcome;
        let engine = host.engine.clone();
        let link_err = |e| Error::Link {
            path: path.clone(),
            source: wasmtime_source(e),
        };
        let pre = match fetched.code {
            Compiled::Module(module) => {
                let export = export.unwrap_or_else(|| "_start".to_string());
                check_module_export(&module, &path, &export)?;
                let pre = host.modules.instantiate_pre(&module).map_err(link_err)?;
                Pre::Module { pre, export }
            }
            Compiled::Component(component) => {
                if let Some(name) = export {
                    return Err(Error::Unsupported(format!(
                        "selecting an export ({path}#{name}) of a component; components run \
                         their wasi:cli/run export"
                    )));
                }
                match check_component_exports(&engine, &component, &path)? {
                    ComponentRole::Command => Pre::Component {
                        pre: host
                            .components
                            .instantiate_pre(&component)
                            .map_err(link_err)?,
                        p3: false,
                    },
                    ComponentRole::CommandP3 => Pre::Component {
                        pre: crate::p3::linker(&engine)
                            .and_then(|linker| linker.instantiate_pre(&component))
                            .map_err(link_err)?,
                        p3: true,
                    },
                    ComponentRole::Proxy(generation) => Pre::Proxy(Box::new(Proxy::new(
                        &component,
                        fetched.entry.as_deref(),
                        spec,
                        &path,
                        generation,
                    )?)),
                }
            }
        };
        Ok(Loaded {
            engine,
            path,
            cache: outcome,
            pre,
        })
    }

    /// Opens the WASI capabilities of `spec` (its root filesystem and volumes as the process
    /// sees them now) and attaches stdio.
    pub fn with_wasi(self, spec: &GuestSpec, stdio: Stdio) -> Result<Program, Error> {
        if let Pre::Proxy(mut proxy) = self.pre {
            // Each request gets its own WASI context (and output streams) from `spec`.
            if !matches!(stdio, Stdio::Inherit) {
                return Err(Error::Unsupported(
                    "capturing the output of an HTTP server".into(),
                ));
            }
            proxy.set_wasi(spec);
            return Ok(Program {
                engine: self.engine,
                path: self.path,
                cache: self.cache,
                memory_limit: proxy.memory_limit(),
                linked: Linked::Proxy(proxy),
                captured: None,
                shutdown: Shutdown::new(),
            });
        }
        let mut builder = wasi_builder(spec)?;
        let captured = match stdio {
            Stdio::Inherit => {
                builder.inherit_stdio();
                None
            }
            Stdio::Capture { stdin } => {
                let (out, err) = (
                    MemoryOutputPipe::new(usize::MAX),
                    MemoryOutputPipe::new(usize::MAX),
                );
                builder.stdin(MemoryInputPipe::new(stdin));
                builder.stdout(out.clone());
                builder.stderr(err.clone());
                Some((out, err))
            }
        };
        let memory_limit = MemoryLimit::new(spec.memory_limit);
        let budget = Budget::new(memory_limit.clone());
        let linked = match self.pre {
            Pre::Module { pre, export } => Linked::Module {
                pre,
                state: ModuleState {
                    wasi: builder.build_p1(),
                    budget,
                },
                export,
            },
            Pre::Component { pre, p3 } => Linked::Component {
                pre,
                state: ComponentState {
                    ctx: builder.build(),
                    table: ResourceTable::new(),
                    budget,
                },
                p3,
            },
            Pre::Proxy(_) => unreachable!("handled above"),
        };
        Ok(Program {
            engine: self.engine,
            path: self.path,
            cache: self.cache,
            linked,
            memory_limit,
            captured,
            shutdown: Shutdown::new(),
        })
    }

    /// The resolved entrypoint inside the root filesystem.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }
}

impl Program {
    /// [`Loaded::load`] then [`Loaded::with_wasi`], for a caller that does not confine itself
    /// in between.
    pub fn prepare(
        host: &Host,
        spec: &GuestSpec,
        cache: &CompileCache,
        stdio: Stdio,
    ) -> Result<Program, Error> {
        Loaded::load(host, spec, cache)?.with_wasi(spec, stdio)
    }

    /// The guest's memory budget, to change while it runs (an in-place resize).
    pub fn memory_limit(&self) -> MemoryLimit {
        self.memory_limit.clone()
    }

    /// Whether the compiled code came from the cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// The resolved entrypoint inside the root filesystem.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn kind(&self) -> WasmKind {
        match self.linked {
            Linked::Module { .. } => WasmKind::Module,
            Linked::Component { .. } | Linked::Proxy(_) => WasmKind::Component,
        }
    }

    /// The HTTP server's settings when the program serves `wasi:http` (it then runs until
    /// [`Program::shutdown`] is triggered), `None` for a command.
    pub fn http(&self) -> Option<&crate::HttpConfig> {
        match &self.linked {
            Linked::Proxy(proxy) => Some(proxy.config()),
            _ => None,
        }
    }

    /// For a `wasi:http` program: serves `requests` GET requests for `path` in this thread, without
    /// a network, and returns the mean time of each step of a request (see [`RequestCosts`]).
    /// The benchmark uses it; the guest's output goes where [`Program::run`]'s would. A request
    /// that fails, times out or answers other than 2xx is an error. Not to be called from
    /// within a tokio runtime.
    pub fn request_costs(&self, path: &str, requests: u32) -> Result<RequestCosts, Error> {
        match &self.linked {
            Linked::Proxy(proxy) => crate::http::request_costs(proxy, path, requests),
            _ => Err(Error::Unsupported(format!(
                "measuring HTTP requests of {}, which is a command",
                self.path
            ))),
        }
    }

    /// Stops a serving program gracefully: no new connections, requests in flight finish, then
    /// [`Program::run`] returns status 0. Does nothing to a command.
    pub fn shutdown(&self) -> Shutdown {
        self.shutdown.clone()
    }

    /// Runs the program to completion in a fresh store. With inherited stdio the caller prints
    /// the outcome's message (if any) to the guest's stderr and exits with its status.
    pub fn run(self) -> Outcome {
        let path = self.path;
        let mut results = String::new();
        let (result, exhausted) = match self.linked {
            Linked::Proxy(proxy) => {
                let result = crate::http::serve(*proxy, &self.shutdown);
                return match result {
                    Ok(()) => Outcome::default(),
                    Err(err) => Outcome {
                        status: exit::FAILURE,
                        message: Some(format!("{}\n", err.chain())),
                        ..Outcome::default()
                    },
                };
            }
            Linked::Module { pre, state, export } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.budget);
                store.set_epoch_deadline(NO_DEADLINE);
                let result = run_module(&mut store, &pre, &export).map(|printed| results = printed);
                (result, store.data().budget.exhausted())
            }
            Linked::Component { pre, state, p3 } => {
                let mut store = Store::new(&self.engine, state);
                store.limiter(|s| &mut s.budget);
                store.set_epoch_deadline(NO_DEADLINE);
                let result = if p3 {
                    crate::p3::run(&mut store, &pre)
                } else {
                    run_component(&mut store, &pre)
                };
                (result, store.data().budget.exhausted())
            }
        };
        // A guest that traps after its memory growth was refused died of memory exhaustion.
        let trapped = matches!(&result, Err(e) if e.is::<wasmtime::Trap>());
        let mut outcome = Outcome::from_result(result, &path);
        if exhausted && trapped {
            outcome.out_of_memory = true;
            if let Some(message) = &mut outcome.message {
                let limit = self
                    .memory_limit
                    .get_bytes()
                    .map_or("no".to_string(), |l| l.to_string());
                message.push_str(&format!(
                    "\nThe guest ran out of memory: its memories and tables may use at most \
                     {limit} bytes (the container's memory limit less the process's own \
                     needs), and a memory.grow was refused.\n"
                ));
            }
        }
        match self.captured {
            Some((out, err)) => {
                outcome.stdout = out.contents().to_vec();
                outcome.stdout.extend_from_slice(results.as_bytes());
                outcome.stderr = err.contents().to_vec();
            }
            None if !results.is_empty() => {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(results.as_bytes());
                let _ = stdout.flush();
            }
            None => {}
        }
        outcome
    }
}

/// A command's epoch deadline: never reached (the command engine's epoch never advances).
const NO_DEADLINE: u64 = u64::MAX / 2;

fn run_module(
    store: &mut Store<ModuleState>,
    pre: &InstancePre<ModuleState>,
    export: &str,
) -> wasmtime::Result<String> {
    let instance = pre.instantiate(&mut *store)?;
    if export != "_start"
        && let Some(init) = instance.get_func(&mut *store, "_initialize")
    {
        init.call(&mut *store, &[], &mut [])?;
    }
    let func = instance
        .get_func(&mut *store, export)
        .ok_or_else(|| wasmtime::Error::msg(format!("export {export} disappeared")))?;
    let ty = func.ty(&*store);
    let mut results: Vec<Val> = ty
        .results()
        .map(|t| Val::default_for_ty(&t).unwrap_or(Val::I32(0)))
        .collect();
    func.call(&mut *store, &[], &mut results)?;
    // As `wasmtime run --invoke` does, print what the function returned, one value a line.
    let mut printed = String::new();
    for value in &results {
        let line = match value {
            Val::I32(v) => v.to_string(),
            Val::I64(v) => v.to_string(),
            Val::F32(v) => f32::from_bits(*v).to_string(),
            Val::F64(v) => f64::from_bits(*v).to_string(),
            other => format!("{other:?}"),
        };
        printed.push_str(&line);
        printed.push('\n');
    }
    Ok(printed)
}

fn run_component(
    store: &mut Store<ComponentState>,
    pre: &wasmtime::component::InstancePre<ComponentState>,
) -> wasmtime::Result<()> {
    let instance = pre.instantiate(&mut *store)?;
    let command = Command::new(&mut *store, &instance)?;
    match command.wasi_cli_run().call_run(&mut *store)? {
        Ok(()) => Ok(()),
        // `wasmtime run` turns a failed `run` into exit status 1 without a message.
        Err(()) => Err(wasmtime_wasi::I32Exit(exit::FAILURE).into()),
    }
}

fn check_module_export(module: &Module, path: &str, name: &str) -> Result<(), Error> {
    let missing = |hint: &str| Error::MissingExport {
        path: path.to_string(),
        name: name.to_string(),
        hint: hint.to_string(),
    };
    match module.get_export(name) {
        Some(ExternType::Func(ty)) if ty.params().len() == 0 => Ok(()),
        Some(ExternType::Func(_)) => Err(missing(
            " without parameters (arguments cannot be passed to it)",
        )),
        Some(_) => Err(missing(" (the export is not a function)")),
        None if name == "_start" => Err(missing(
            "; it is not a WASI command (select another export with args[0] = \"file.wasm#name\")",
        )),
        None => Err(missing("")),
    }
}

/// What a component is run as.
enum ComponentRole {
    /// Exports `wasi:cli/run@0.2`: runs once.
    Command,
    /// Exports `wasi:cli/run@0.3` (and not 0.2): runs once, as a WASIp3 command.
    CommandP3,
    /// Exports `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3`: serves HTTP.
    Proxy(crate::http::Generation),
}

fn check_component_exports(
    engine: &Engine,
    component: &Component,
    path: &str,
) -> Result<ComponentRole, Error> {
    let ty = component.component_type();
    let names: Vec<String> = ty
        .exports(engine)
        .map(|(name, _)| name.to_string())
        .collect();
    if names.iter().any(|n| n.starts_with("wasi:cli/run@0.2")) {
        return Ok(ComponentRole::Command);
    }
    if names
        .iter()
        .any(|n| n.starts_with(crate::http::INCOMING_HANDLER))
    {
        return Ok(ComponentRole::Proxy(crate::http::Generation::P2));
    }
    if names.iter().any(|n| n.starts_with(crate::p3::RUN)) {
        return Ok(ComponentRole::CommandP3);
    }
    if names.iter().any(|n| n.starts_with(crate::http::HANDLER_P3)) {
        return Ok(ComponentRole::Proxy(crate::http::Generation::P3));
    }
    Err(Error::MissingExport {
        path: path.to_string(),
        name: "wasi:cli/run@0.2".to_string(),
        hint: format!(
            " (or wasi:cli/run@0.3, wasi:http/incoming-handler@0.2 or wasi:http/handler@0.3; \
             exports: {})",
            if names.is_empty() {
                "none".into()
            } else {
                names.join(", ")
            }
        ),
    })
}

/// The WASI capabilities of `spec`: argv, environment and cwd from the spec only, the root
/// filesystem preopened as `/` (read-only if asked), the process's stdio, and sockets in the
/// current network namespace when `spec.network` is set.
fn wasi_builder(spec: &GuestSpec) -> Result<WasiCtxBuilder, Error> {
    let mut builder = WasiCtxBuilder::new();
    // argv[0] is the program as written, without a `#export` suffix (as `wasmtime run --invoke`).
    let mut args = spec.args.clone();
    if let Some(arg0) = args.first_mut() {
        *arg0 = crate::resolve::split_export(arg0).0.to_string();
    }
    builder.args(&args);
    for (key, value) in spec.env_pairs() {
        builder.env(key, value);
    }
    if !spec.cwd.is_empty() {
        builder.initial_cwd(&spec.cwd);
    }
    builder.allow_blocking_current_thread(true);
    let perms = if spec.readonly_rootfs {
        FsPerms::ReadOnly
    } else {
        FsPerms::ReadWrite
    };
    builder
        .preopened_dir(&spec.rootfs, "/", perms)
        .map_err(|e| Error::Io {
            context: format!("open root filesystem {}", spec.rootfs.display()),
            source: std::io::Error::other(format!("{e:#}")),
        })?;
    for mount in &spec.mounts {
        let perms = if mount.readonly {
            FsPerms::ReadOnly
        } else {
            FsPerms::ReadWrite
        };
        builder
            .preopened_dir(&mount.host, &mount.guest, perms)
            .map_err(|e| Error::Io {
                context: format!("open volume {} for {}", mount.host.display(), mount.guest),
                source: std::io::Error::other(format!("{e:#}")),
            })?;
    }
    if spec.network {
        // As `wasmtime run -S inherit-network,allow-ip-name-lookup` (TCP and UDP on).
        builder.inherit_network();
        builder.allow_tcp(true);
        builder.allow_udp(true);
        builder.allow_ip_name_lookup(true);
    }
    Ok(builder)
}
