//! Where a compile-cache miss compiles: in this process, or in a child process forked for it.
//!
//! wasmtime compiles a module's functions in parallel on a pool of worker threads that live as
//! long as the process. A process that has to confine itself after loading its program (a
//! guest: capabilities, `no_new_privs` and seccomp are per thread) must not start them: threads
//! that exist before confinement keep what it takes away. [`Compiler::Child`] compiles in a
//! forked child instead, which confines itself first (the caller says how), compiles with all
//! the parallelism it likes, hands the serialized artifact back over a pipe and exits. The
//! calling process only deserializes, which starts no thread.

use crate::{Error, WasmKind};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use wasmtime::Engine;

/// What a compiler child does to itself before it reads any Wasm: the caller's confinement
/// (drop capabilities, set `no_new_privs`, load seccomp, change root, ...). Runs in the child,
/// single-threaded, right after `fork`.
pub type Confine = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// How a compile-cache miss turns Wasm bytes into code.
#[derive(Clone, Default)]
pub enum Compiler {
    /// In this process, on wasmtime's parallel compile threads (tools, tests).
    #[default]
    InProcess,
    /// In a child process forked for each compilation, which runs [`Confine`] first. The calling
    /// process never starts a compile thread. Call it only while the process has one thread (a
    /// process that always compiles this way never starts wasmtime's thread pool, which a fork
    /// would leave unusable in the child).
    Child(Confine),
}

impl std::fmt::Debug for Compiler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Compiler::InProcess => "InProcess",
            Compiler::Child(_) => "Child",
        })
    }
}

impl Compiler {
    /// The serialized artifact of `bytes` compiled by `engine` (`path` names them in errors).
    pub(crate) fn precompile(
        &self,
        engine: &Engine,
        kind: WasmKind,
        bytes: &[u8],
        path: &str,
    ) -> Result<Vec<u8>, Error> {
        let _span = tracing::debug_span!("compile", path, size = bytes.len()).entered();
        match self {
            Compiler::InProcess => {
                precompile(engine, kind, bytes).map_err(|message| invalid(path, message))
            }
            Compiler::Child(confine) => in_child(engine, kind, bytes, path, confine),
        }
    }
}

fn invalid(path: &str, message: String) -> Error {
    Error::InvalidWasm {
        path: path.to_string(),
        source: message.into(),
    }
}

fn precompile(engine: &Engine, kind: WasmKind, bytes: &[u8]) -> Result<Vec<u8>, String> {
    match kind {
        WasmKind::Module => engine.precompile_module(bytes),
        WasmKind::Component => engine.precompile_component(bytes),
    }
    .map_err(|e| format!("{e:#}"))
}

/// The first byte a compiler child writes: what the rest of its output is.
const ARTIFACT: u8 = b'A';
const INVALID: u8 = b'I';
const NOT_CONFINED: u8 = b'C';

fn in_child(
    engine: &Engine,
    kind: WasmKind,
    bytes: &[u8],
    path: &str,
    confine: &Confine,
) -> Result<Vec<u8>, Error> {
    let (read, write) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| Error::Compiler(format!("create the compiler's pipe: {e}")))?;
    // SAFETY: the caller promises a single-threaded process (see `Compiler::Child`), so the child
    // may allocate and run anything; it leaves only through `_exit`.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Compiler(format!("fork the compiler process: {err}")));
    }
    if pid == 0 {
        drop(read);
        child(write, engine, kind, bytes, confine);
    }
    drop(write);
    let mut output = Vec::new();
    let read_result = std::fs::File::from(read).read_to_end(&mut output);
    let status = wait(pid);
    read_result.map_err(|e| Error::Compiler(format!("read the compiler's output: {e}")))?;
    let status = status.map_err(|e| Error::Compiler(format!("wait for the compiler: {e}")))?;
    let (tag, rest) = output.split_first().map_or((0, &[][..]), |(t, r)| (*t, r));
    match (tag, status) {
        (ARTIFACT, Ended::Exited(0)) => Ok(rest.to_vec()),
        (INVALID, _) => Err(invalid(path, String::from_utf8_lossy(rest).into_owned())),
        (NOT_CONFINED, _) => Err(Error::Compiler(format!(
            "cannot confine the compiler process: {}",
            String::from_utf8_lossy(rest)
        ))),
        (_, Ended::Signaled(signal)) => Err(Error::Compiler(format!(
            "the compiler process of {path} was killed by signal {signal}{}",
            match signal {
                libc::SIGKILL => " (out of memory in the container's cgroup?)",
                libc::SIGSYS => " (a system call the seccomp profile forbids)",
                _ => "",
            }
        ))),
        (_, Ended::Exited(code)) => Err(Error::Compiler(format!(
            "the compiler process of {path} exited with status {code} without an artifact"
        ))),
    }
}

/// The compiler child: confine, compile, write the outcome, `_exit`. Never returns.
fn child(out: OwnedFd, engine: &Engine, kind: WasmKind, bytes: &[u8], confine: &Confine) -> ! {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number has no memory effects: the
    // compiler dies with the process that waits for it.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    // Only the pipe stays open: the parent's other fds (its control channel, stdio FIFOs,
    // host directories) are no business of the compiler. The pipe moves to fd 3 first.
    // SAFETY: dup2 onto fd 3 and closing every fd above it touch only this child's fd table
    // (the pipe's original fd, above 3 or equal to it, goes with the others).
    let fd = unsafe {
        let fd = libc::dup2(out.as_raw_fd(), 3);
        libc::syscall(libc::SYS_close_range, 4u32, u32::MAX, 0u32);
        fd
    };
    std::mem::forget(out);
    if fd != 3 {
        // SAFETY: _exit ends the child without running the parent's atexit handlers.
        unsafe { libc::_exit(1) };
    }
    // SAFETY: fd 3 is the pipe's write end, owned by nothing else in this child.
    let mut out = unsafe { std::fs::File::from_raw_fd(3) };
    let (tag, payload) = match confine() {
        Err(message) => (NOT_CONFINED, message.into_bytes()),
        Ok(()) => match precompile(engine, kind, bytes) {
            Ok(artifact) => (ARTIFACT, artifact),
            Err(message) => (INVALID, message.into_bytes()),
        },
    };
    let written = out.write_all(&[tag]).and_then(|()| out.write_all(&payload));
    // SAFETY: as above.
    unsafe { libc::_exit(if written.is_ok() { 0 } else { 1 }) }
}

enum Ended {
    Exited(i32),
    Signaled(i32),
}

fn wait(pid: libc::pid_t) -> std::io::Result<Ended> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut status, 0) } >= 0 {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
    Ok(if libc::WIFSIGNALED(status) {
        Ended::Signaled(libc::WTERMSIG(status))
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    })
}
