//! A guest process, forked by the zygote: prepare the program, wait for Start, run it, exit
//! with its status.

use super::{Launch, Ready};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use wasmtime_shim_runtime::{CompileCache, Host, Program, Stdio, exit};

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
/// shim, `mask` the blocked terminating signals. Never returns: the process exits with the
/// guest's status.
pub fn run(
    host: Result<Host, wasmtime_shim_runtime::Error>,
    control: UnixStream,
    mask: SigSet,
) -> ! {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || signal_thread(mask))
        .unwrap_or_else(|_| fail("cannot start the signal thread"));

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
    connect_stdin(launch.stdin.as_deref());

    let cache = match &launch.cache_dir {
        Some(dir) => CompileCache::new(dir),
        None => CompileCache::disabled(),
    };
    let prepared =
        host.and_then(|host| Program::prepare(&host, &launch.spec, &cache, Stdio::Inherit));
    let ready = match &prepared {
        Ok(program) => Ready::Prepared {
            path: program.path().to_string(),
            kind: format!("{:?}", program.kind()).to_lowercase(),
            cache: program.cache_outcome().to_string(),
        },
        Err(err) => Ready::Failed {
            kind: err.kind().into(),
            message: err.chain(),
        },
    };
    let control = reader.get_mut();
    let mut answer = serde_json::to_vec(&ready).unwrap_or_default();
    answer.push(b'\n');
    if control.write_all(&answer).is_err() {
        std::process::exit(exit::FAILURE);
    }
    let Ok(program) = prepared else {
        std::process::exit(exit::FAILURE);
    };

    // Wait for Start. Anything else (the shim deleted the container, or died) ends the guest.
    line.clear();
    if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim_end() != "start" {
        std::process::exit(exit::FAILURE);
    }
    let mut control = reader.into_inner();

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

/// Puts `/dev/null` on fd 0.
pub fn replace_fd0_with_null() {
    match File::open("/dev/null") {
        Ok(null) => replace_fd0(null.as_fd().as_raw_fd()),
        Err(_) => fail("cannot open /dev/null"),
    }
}

/// Makes fd 0 the guest's stdin: `/dev/null` without a stdin FIFO, otherwise a pipe fed by a
/// thread that opens the FIFO once a writer appears (`ctr run`, `ctr task attach`) and copies
/// until the writer closes it, so the guest sees EOF exactly then.
fn connect_stdin(fifo: Option<&std::path::Path>) {
    let Some(fifo) = fifo.map(|p| p.to_path_buf()) else {
        replace_fd0_with_null();
        return;
    };
    let Ok((read, write)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        fail("cannot create the stdin pipe");
    };
    replace_fd0(read.as_raw_fd());
    drop(read);
    let _ = std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let mut sink = File::from(write);
            if let Ok(mut source) = File::open(&fifo) {
                let _ = std::io::copy(&mut source, &mut sink);
            }
        });
}

fn replace_fd0(fd: i32) {
    // SAFETY: dup2 onto fd 0, which nothing else in this process uses any longer.
    if unsafe { libc::dup2(fd, 0) } < 0 {
        fail("cannot set up stdin");
    }
}

/// Waits for a terminating signal and ends the guest with status 128 + signal, whatever it is
/// doing: spinning in Wasm code or blocked in a host call.
fn signal_thread(mask: SigSet) {
    loop {
        if let Ok(signal) = mask.wait() {
            // No flush: another thread may hold the stdout lock while blocked on a full pipe.
            // SAFETY: _exit ends the process without running anything else.
            unsafe { libc::_exit(exit::from_signal(signal as i32)) };
        }
    }
}
