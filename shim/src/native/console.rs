//! A terminal for a native process (`kubectl exec -it`, `ctr task exec -t`): runc makes the pty
//! inside the container and sends its master over a console socket (`SCM_RIGHTS`); the shim
//! copies between the master and containerd's stdio FIFOs, and ResizePty sets its window size.

use crate::error::{Error, Result};
use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// How long runc may take to send the pty master.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);

/// A listening console socket, in a directory of its own (a socket path must be short).
pub struct ConsoleSocket {
    dir: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    pub fn new() -> Result<ConsoleSocket> {
        let dir = std::env::temp_dir().join(format!(
            "wasmtime-shim-pty-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir(&dir).map_err(Error::io(format!("create {}", dir.display())))?;
        let listener =
            UnixListener::bind(dir.join("pty.sock")).map_err(Error::io("bind the console socket"));
        match listener {
            Ok(listener) => Ok(ConsoleSocket { dir, listener }),
            Err(err) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(err)
            }
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join("pty.sock")
    }

    /// Waits (blocking, bounded) for runc to send the pty master.
    pub fn receive(self) -> Result<OwnedFd> {
        let what = "receive the terminal from runc";
        self.listener
            .set_nonblocking(true)
            .map_err(Error::io(what))?;
        let deadline = std::time::Instant::now() + RECEIVE_TIMEOUT;
        let stream = loop {
            match self.listener.accept() {
                Ok((stream, _)) => break stream,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if std::time::Instant::now() > deadline {
                        return Err(Error::Internal(format!("{what}: runc sent nothing")));
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::io(what)(e)),
            }
        };
        stream.set_nonblocking(false).map_err(Error::io(what))?;
        stream
            .set_read_timeout(Some(RECEIVE_TIMEOUT))
            .map_err(Error::io(what))?;
        let mut name = [0u8; 256];
        let mut iov = [std::io::IoSliceMut::new(&mut name)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| Error::io(what)(e.into()))?;
        for cmsg in msg.cmsgs().map_err(|e| Error::io(what)(e.into()))? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg
                && let Some(fd) = fds.first()
            {
                // SAFETY: SCM_RIGHTS installed this fd in this process for us to own.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
        Err(Error::Internal(format!("{what}: no fd in runc's message")))
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    let mut value = 0u64;
    // SAFETY: getrandom fills the 8 bytes of `value`; a failure leaves it 0, and the directory
    // name still carries the shim's pid.
    unsafe { libc::getrandom((&raw mut value).cast(), 8, 0) };
    value
}

/// Copies the pty `master` to `stdout` and `stdin` (if any) to it, each on a thread of its own,
/// until the process's side closes (EIO on the master) or stdin ends.
pub fn relay(master: Arc<OwnedFd>, stdout: File, stdin: Option<File>) -> Result<()> {
    let out = master
        .try_clone()
        .map_err(Error::io("copy the terminal fd"))?;
    std::thread::Builder::new()
        .name("pty-out".into())
        .spawn(move || copy(File::from(out), stdout))
        .map_err(Error::io("start the terminal relay"))?;
    if let Some(stdin) = stdin {
        let input = master
            .try_clone()
            .map_err(Error::io("copy the terminal fd"))?;
        std::thread::Builder::new()
            .name("pty-in".into())
            .spawn(move || copy(stdin, File::from(input)))
            .map_err(Error::io("start the terminal relay"))?;
    }
    Ok(())
}

fn copy(mut from: File, mut to: File) {
    let mut buf = [0u8; 8192];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the last process holding the pty's other side is gone.
            Err(_) => return,
        }
    }
}

/// Sets the terminal's window size (ResizePty).
pub fn resize(master: &OwnedFd, width: u32, height: u32) -> Result<()> {
    let size = libc::winsize {
        ws_row: height.min(u16::MAX as u32) as u16,
        ws_col: width.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize struct we own; `master` is an open pty master.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) } < 0 {
        return Err(Error::io("resize the terminal")(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
