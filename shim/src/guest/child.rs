//! A guest process, forked by the zygote: prepare the program, wait for Start, run it, exit
//! with its status.

use super::{Launch, Ready, WireErrorKind};
use crate::confine::{apply, compiler, seccomp};
use crate::image::{self, ImageSource};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use wasmtime_shim_runtime::{
    CompileCache, Compiler, Error as RuntimeError, GuestSpec, Host, Loaded, MemoryLimit, Program,
    Stdio, exit,
};

/// Signals that end a guest. Their default action terminates a process; the guest handles them
/// on one thread so that they work the same when the guest is pid 1 of a pid namespace.
const TERMINATING: [Signal; 7] = [
    Signal::SIGTERM,
    Signal::SIGINT,
    Signal::SIGHUP,
    Signal::SIGQUIT,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
];

/// Blocks the terminating signals. Called by the zygote before anything else, so every guest
/// and every thread of it (wasmtime's compile workers, WASI's I/O threads) inherits the mask and
/// only `signal_thread` sees them.
pub fn block_terminating_signals() -> SigSet {
    let mut mask = SigSet::empty();
    for signal in TERMINATING {
        mask.add(signal);
    }
    if mask.thread_block().is_err() {
        fail("cannot block signals");
    }
    mask
}

/// A forked guest's `main`: `host` was built by the zygote, `control` is the channel to the
/// shim, `mask` the blocked terminating signals, `shim` a pidfd of the shim. Never returns: the
/// process exits with the guest's status.
pub fn run(
    host: Result<Host, wasmtime_shim_runtime::Error>,
    control: UnixStream,
    mask: SigSet,
    shim: OwnedFd,
) -> ! {
    // A guest that serves HTTP allocates on one thread per CPU, and with one malloc arena (the
    // zygote's setting) its threads queue on its lock. What the guest runs is known only after
    // the load, and glibc fixes the limit when a second thread first allocates: so glibc's
    // default now, while this process has one thread, and one arena again after the load for
    // a command. (A load that compiled, on a compile-cache miss, has used wasmtime's threads
    // already and keeps the default; the trim before Start returns their arenas' free pages.)
    crate::arenas::restore_default();
    let Some(stdio) = receive_fds(&control, 2) else {
        std::process::exit(exit::FAILURE);
    };
    for (fd, target) in stdio.iter().zip([1, 2]) {
        // SAFETY: dup2 onto fds 1 and 2, which hold /dev/null until now.
        if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
            fail("cannot set up stdout and stderr");
        }
    }
    drop(stdio);
    let mut reader = BufReader::new(control);
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        std::process::exit(exit::FAILURE);
    }
    let launch: Launch = match serde_json::from_str(&line) {
        Ok(launch) => launch,
        Err(e) => fail(&format!("bad launch request: {e}")),
    };
    // Host paths, so opened before the guest pivots away from the host's filesystem.
    let stdin = open_stdin(launch.stdin.as_deref());

    // Still one thread: confinement needs it (see `confine::apply`).
    let prepared = host.map_err(Failure::from).and_then(|host| {
        let work = confine_and_load(&host, &launch)?;
        die_with_shim(&shim);
        Ok(work)
    });
    drop(shim);
    let on_signal = match &prepared {
        Ok((Work::Pause, _)) => OnSignal::Pause,
        Ok((Work::Program(program), _)) if program.http().is_some() => {
            OnSignal::Drain(program.shutdown())
        }
        _ => OnSignal::Exit,
    };
    if !matches!(on_signal, OnSignal::Drain(_)) {
        crate::arenas::limit_to_one();
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(mask, on_signal))
        .unwrap_or_else(|_| fail("cannot start the signal thread"));
    connect_stdin(stdin);

    let ready = match &prepared {
        Ok((Work::Program(program), timing)) => Ready::Prepared {
            path: program.path().to_string(),
            kind: match program.http() {
                Some(_) => "http".to_string(),
                None => format!("{:?}", program.kind()).to_lowercase(),
            },
            cache: program.cache_outcome().to_string(),
            confine_us: timing.confine_us,
            load_us: timing.load_us,
        },
        Ok((Work::Pause, timing)) => Ready::Prepared {
            path: String::new(),
            kind: "pause".into(),
            cache: String::new(),
            confine_us: timing.confine_us,
            load_us: 0,
        },
        Err(failure) => Ready::Failed {
            kind: failure.kind,
            message: failure.message.clone(),
        },
    };
    let control = reader.get_mut();
    let mut answer = serde_json::to_vec(&ready).unwrap_or_default();
    answer.push(b'\n');
    if control.write_all(&answer).is_err() {
        std::process::exit(exit::FAILURE);
    }
    let Ok((work, _)) = prepared else {
        std::process::exit(exit::FAILURE);
    };
    // The linkers (the component one is large) and the load's scratch are freed by now, in
    // pages this process inherited from the zygote or dirtied itself: hand whole free pages
    // back, while containerd is still on its way from Create to Start.
    // SAFETY: malloc_trim only releases free heap memory.
    unsafe { libc::malloc_trim(0) };

    // Wait for Start, taking memory limit updates meanwhile. Anything else (the shim deleted
    // the container, or died) ends the guest.
    loop {
        line.clear();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            std::process::exit(exit::FAILURE);
        }
        match (line.trim_end(), &work) {
            ("start", _) => break,
            (update, Work::Program(program)) if update.starts_with(super::MEMORY_LIMIT) => {
                apply_update(update, &program.memory_limit())
            }
            _ => std::process::exit(exit::FAILURE),
        }
    }
    let mut control = reader.into_inner();
    let program = match work {
        Work::Program(program) => program,
        Work::Pause => loop {
            // The signal thread ends the process.
            std::thread::park();
        },
    };
    if let Ok(updates) = control.try_clone() {
        let limit = program.memory_limit();
        let _ = std::thread::Builder::new()
            .name("control".into())
            .spawn(move || follow_updates(updates, limit));
    }

    let outcome = program.run();
    let _ = std::io::stdout().flush();
    if let Some(message) = &outcome.message {
        let _ = std::io::stderr().write_all(message.as_bytes());
    }
    let _ = std::io::stderr().flush();
    if outcome.out_of_memory {
        // Read by the shim once this process is gone, to report the exit as an OOM.
        let _ = control.write_all(super::OUT_OF_MEMORY);
    }
    std::process::exit(outcome.status)
}

/// Applies what the shim sends while the guest runs: `memory-limit <bytes>` (or `none`) after an
/// Update resized the container.
fn follow_updates(control: UnixStream, limit: MemoryLimit) {
    for line in BufReader::new(control).lines() {
        let Ok(line) = line else { return };
        apply_update(&line, &limit);
    }
}

fn apply_update(line: &str, limit: &MemoryLimit) {
    if let Some(value) = line.strip_prefix(super::MEMORY_LIMIT) {
        match value.trim() {
            "none" => limit.set(None),
            bytes => {
                if let Ok(bytes) = bytes.parse() {
                    limit.set(Some(bytes));
                }
            }
        }
    }
}

/// Where preparing the guest went.
#[derive(Default)]
struct Timing {
    confine_us: u64,
    load_us: u64,
}

/// What a prepared guest will do at Start.
enum Work {
    Program(Box<Program>),
    /// The pod sandbox's pause process: hold the namespaces until told to stop.
    Pause,
}

/// Why a guest could not be prepared, as the shim reports it.
struct Failure {
    kind: WireErrorKind,
    message: String,
}

impl From<wasmtime_shim_runtime::Error> for Failure {
    fn from(err: wasmtime_shim_runtime::Error) -> Failure {
        Failure {
            kind: err.kind().into(),
            message: err.chain(),
        }
    }
}

fn confinement_failure(message: String) -> Failure {
    Failure {
        kind: WireErrorKind::Internal,
        message: format!("cannot confine the guest process: {message}"),
    }
}

/// Loads the program `spec` names from the root filesystem or, when it is not there, from the
/// Wasm layers of the container's image (`spec.args` then become the argv [`image::find`] chose).
fn load(
    host: &Host,
    spec: &mut GuestSpec,
    image: Option<&ImageSource>,
    cache: &CompileCache,
) -> Result<Loaded, Failure> {
    let mut native = false;
    let not_in_rootfs = match Loaded::load(host, spec, cache) {
        Ok(loaded) => return Ok(loaded),
        Err(err @ RuntimeError::EntrypointNotFound { .. }) => err,
        // An index's native image, pulled instead of its Wasm one (containerd pulls the node's
        // platform): the Wasm manifest runs if containerd has it, with no arguments.
        Err(err @ RuntimeError::NativeProgram { .. }) => {
            native = true;
            err
        }
        Err(err @ RuntimeError::InvalidSpec(_))
            if spec.args.first().is_none_or(|a| a.is_empty()) =>
        {
            err
        }
        Err(err) => return Err(err.into()),
    };
    let Some(image) = image else {
        return Err(not_in_rootfs.into());
    };
    let args = if native { &[][..] } else { &spec.args[..] };
    let Some(program) = image::find(image, args)? else {
        return Err(not_in_rootfs.into());
    };
    spec.args = program.argv;
    Ok(Loaded::load_blob(host, &program.layer, spec, cache)?)
}

/// Confines this process as `launch` says and loads the program, in the one order that works:
/// the program is resolved (volumes mounted) and loaded from the compile cache (a host path)
/// before `pivot_root`; its WASI capabilities are opened after it, in the container's view.
fn confine_and_load(host: &Host, launch: &Launch) -> Result<(Work, Timing), Failure> {
    let began = std::time::Instant::now();
    let mut timing = Timing::default();
    let c = &launch.confinement;
    let mut spec = launch.spec.clone();
    // While the host's /proc is at hand; the compiler child inherits it.
    apply::set_oom_score_adj(c).map_err(confinement_failure)?;
    apply::enter_namespaces(c).map_err(confinement_failure)?;
    if c.pivots() {
        apply::mount_rootfs(c, &spec.rootfs).map_err(confinement_failure)?;
    }
    let loading = std::time::Instant::now();
    let loaded = if launch.pause {
        None
    } else {
        let cache = match &launch.cache_dir {
            Some(dir) => CompileCache::new(dir).with_limit(launch.cache_limit),
            None => CompileCache::disabled(),
        };
        // A miss compiles in a confined child: this process keeps its one thread.
        let (confinement, rootfs) = (c.clone(), spec.rootfs.clone());
        let cache = cache.compile_with(Compiler::Child(std::sync::Arc::new(move || {
            compiler::confine_compiler(&confinement, &rootfs)
        })));
        Some(load(host, &mut spec, launch.image.as_ref(), &cache)?)
    };
    timing.load_us = loading.elapsed().as_micros() as u64;
    // Nothing from here to the privilege drop starts a thread; the host's /proc is still
    // mounted, so this check is always made.
    compiler::ensure_one_thread().map_err(confinement_failure)?;
    if let Some(mount_ns) = &launch.join_mount_ns {
        // An exec: into the container's own view, where its root is `/` and its volumes are
        // mounted (setns moves root and cwd to the namespace's root).
        apply::join_mount_namespace(mount_ns).map_err(confinement_failure)?;
        spec.rootfs = "/".into();
        spec.mounts.retain(|m| m.readonly);
        for m in &mut spec.mounts {
            m.host = m.guest.clone().into();
        }
    } else if c.pivots() {
        if spec.readonly_rootfs {
            apply::readonly_rootfs(&spec.rootfs).map_err(confinement_failure)?;
        }
        apply::pivot(&spec.rootfs).map_err(confinement_failure)?;
        // The root filesystem is `/` now, and volumes are mounted in it. Read-only ones stay
        // preopens of their own, read-only to WASI as well as to the kernel: wasmtime-wasi
        // reports the kernel's EROFS as EIO, while its own refusal is a clear EPERM.
        spec.rootfs = "/".into();
        spec.mounts.retain(|m| m.readonly);
        for m in &mut spec.mounts {
            m.host = m.guest.clone().into();
        }
    }
    apply::set_hostname(c).map_err(confinement_failure)?;
    apply::set_rlimits(&c.rlimits).map_err(confinement_failure)?;
    // Loading a seccomp filter takes CAP_SYS_ADMIN or no_new_privs: load it after dropping
    // privileges when no_new_privs is set, otherwise just before.
    let load_seccomp = || match &c.seccomp {
        Some(profile) => seccomp::load(profile).map_err(confinement_failure),
        None => Ok(()),
    };
    if !c.no_new_privs {
        load_seccomp()?;
    }
    apply::drop_privileges(c).map_err(confinement_failure)?;
    // WASI opens the preopens as the container's user, before the filter (the last step, as
    // runc loads it right before exec).
    let work = match loaded {
        Some(loaded) => Work::Program(Box::new(loaded.with_wasi(&spec, Stdio::Inherit)?)),
        None => Work::Pause,
    };
    if c.no_new_privs {
        load_seccomp()?;
    }
    timing.confine_us = (began.elapsed().as_micros() as u64).saturating_sub(timing.load_us);
    Ok((work, timing))
}

/// Receives the one-byte message carrying `count` fds (the container's stdout and stderr).
/// `None` if the shim closed the channel instead (it no longer needs this guest).
fn receive_fds(control: &UnixStream, count: usize) -> Option<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 2]);
    let msg = loop {
        match recvmsg::<()>(
            control.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            other => break other.ok()?,
        }
    };
    if msg.bytes == 0 {
        return None;
    }
    let mut fds = Vec::new();
    for cmsg in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: SCM_RIGHTS installed these fds in this process for us to own.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    (fds.len() == count).then_some(fds)
}

fn fail(message: &str) -> ! {
    let _ = writeln!(std::io::stderr(), "wasmtime shim guest: {message}");
    std::process::exit(exit::FAILURE)
}

/// Asks the kernel to kill this process when its parent goes away, then makes sure the parent is
/// still `parent` (if it already went, ours is someone else). Returns `parent`.
pub fn die_with_parent(parent: i32) -> i32 {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if nix::unistd::getppid().as_raw() != parent {
        std::process::exit(exit::FAILURE);
    }
    parent
}

/// Asks the kernel to kill this process when its parent (the shim) goes away, then makes sure
/// the shim is still there. Works from any pid namespace, where `getppid` may say 0. Called
/// again after the guest changed its credentials, which clears the setting.
pub fn die_with_shim(shim: &OwnedFd) {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    let mut poll = libc::pollfd {
        fd: shim.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one pollfd we own, without waiting. A pidfd is readable once the process
    // it refers to has exited.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    if ready != 0 {
        std::process::exit(exit::FAILURE);
    }
}

/// Puts `/dev/null` on fd 0.
pub fn replace_fd0_with_null() {
    match File::open("/dev/null") {
        Ok(null) => replace_fd0(null.as_fd().as_raw_fd()),
        Err(_) => fail("cannot open /dev/null"),
    }
}

/// The guest's stdin source, opened before the guest leaves the host's filesystem.
enum Stdin {
    /// No stdin: fd 0 keeps the `/dev/null` the zygote put there. Opening it again here could
    /// fail: the shim may be moving this process into the container's cgroup meanwhile, whose
    /// device rules are written deny-all first, then the allowed devices.
    Null,
    /// The FIFO, opened without waiting for a writer (`O_NONBLOCK`).
    Fifo(OwnedFd),
}

fn open_stdin(fifo: Option<&std::path::Path>) -> Stdin {
    let Some(fifo) = fifo else {
        return Stdin::Null;
    };
    match rustix::fs::open(
        fifo,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(fd) => Stdin::Fifo(fd),
        Err(_) => fail(&format!("cannot open stdin {}", fifo.display())),
    }
}

/// Makes fd 0 the guest's stdin: `/dev/null` without a stdin FIFO, otherwise a pipe fed by a
/// thread that copies from the FIFO once a writer appears (`ctr run`, `ctr task attach`) until
/// the writer closes it, so the guest sees EOF exactly then.
fn connect_stdin(stdin: Stdin) {
    let fifo = match stdin {
        Stdin::Null => return,
        Stdin::Fifo(fifo) => fifo,
    };
    let Ok((read, write)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        fail("cannot create the stdin pipe");
    };
    replace_fd0(read.as_raw_fd());
    drop(read);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || copy_fifo(fifo, File::from(write)));
}

/// Copies from a non-blocking FIFO read end until its writer closes it. Before the first
/// writer opens it, a FIFO reports neither data nor hang-up, so `poll` waits for exactly that.
fn copy_fifo(fifo: OwnedFd, mut sink: File) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let mut poll = libc::pollfd {
            fd: fifo.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        if unsafe { libc::poll(&mut poll, 1, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        match rustix::io::read(&fifo, &mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if sink.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
    }
}

fn replace_fd0(fd: i32) {
    // SAFETY: dup2 onto fd 0, which nothing else in this process uses any longer.
    if unsafe { libc::dup2(fd, 0) } < 0 {
        fail("cannot set up stdin");
    }
}

/// What SIGTERM and SIGINT do to a guest.
enum OnSignal {
    /// End it with status 128 + signal (a command).
    Exit,
    /// End it with 0, as the pause image's program does.
    Pause,
    /// Stop serving gracefully: no new connections, requests in flight finish, then the
    /// server returns and the guest exits 0. A second signal ends it at once.
    Drain(wasmtime_shim_runtime::Shutdown),
}

/// Waits for a terminating signal and ends the guest with status 128 + signal, whatever it is
/// doing: spinning in Wasm code or blocked in a host call. SIGTERM and SIGINT do what
/// `on_signal` says.
fn signal_thread(mask: SigSet, on_signal: OnSignal) {
    let mut draining = false;
    loop {
        if let Ok(signal) = mask.wait() {
            let status = match (signal, &on_signal) {
                (Signal::SIGTERM | Signal::SIGINT, OnSignal::Pause) => 0,
                (Signal::SIGTERM | Signal::SIGINT, OnSignal::Drain(shutdown)) if !draining => {
                    draining = true;
                    shutdown.trigger();
                    continue;
                }
                _ => exit::from_signal(signal as i32),
            };
            // No flush: another thread may hold the stdout lock while blocked on a full pipe.
            // SAFETY: _exit ends the process without running anything else.
            unsafe { libc::_exit(status) };
        }
    }
}
