//! A native process's stdin, fed from containerd's stdin FIFO as containerd's runc shim feeds
//! it: the process reads a pipe that a relay thread fills from the FIFO, and the relay closes
//! the pipe when the FIFO's last writer goes (the client's input ended) or at CloseIO, so the
//! process reads EOF exactly then. Before the first writer opens the FIFO the relay waits; the
//! process does not read a premature EOF.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};

/// The relay's handle: dropping it (CloseIO, Delete) ends the relay, which closes the pipe.
#[derive(Debug)]
pub struct Relay {
    _stop: OwnedFd,
}

/// Opens the stdin FIFO named by `uri` (none: no stdin) and starts the relay. Returns the
/// pipe's read end for the process and the relay's handle.
pub fn open(uri: &str) -> Result<Option<(File, Relay)>> {
    let Some(path) = crate::stdio::stdin_path(uri)? else {
        return Ok(None);
    };
    use rustix::fs::{Mode, OFlags};
    let fifo = rustix::fs::open(
        &path,
        OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(format!("open stdin {}", path.display()))(e.into()))?;
    let pipe = || {
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
            .map_err(|e| Error::io("create the stdin pipe")(e.into()))
    };
    let (read, write) = pipe()?;
    rustix::fs::fcntl_setfl(&write, OFlags::NONBLOCK)
        .map_err(|e| Error::io("set the stdin pipe non-blocking")(e.into()))?;
    let (stop_read, stop_write) = pipe()?;
    std::thread::Builder::new()
        .name("stdin-relay".into())
        .spawn(move || relay(fifo, write, stop_read))
        .map_err(Error::io("start the stdin relay"))?;
    Ok(Some((File::from(read), Relay { _stop: stop_write })))
}

/// Copies `fifo` to `sink` until the FIFO's writer closes it or the process's end of `sink`
/// closes. When `stop`'s writer goes (CloseIO), what the client wrote before it still reaches
/// the process: the relay drains the FIFO to empty, then closes the pipe. Both ends are
/// non-blocking; a process that stops reading holds the relay only until it exits.
fn relay(fifo: OwnedFd, sink: OwnedFd, stop: OwnedFd) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0, 0);
    let mut draining = false;
    loop {
        let pending = start < end;
        if draining && !pending {
            // CloseIO came after the client's writes returned, so their bytes are in the
            // FIFO: read until it is empty.
            match rustix::io::read(&fifo, &mut buf) {
                Ok(0) | Err(rustix::io::Errno::AGAIN) => return,
                Ok(n) => (start, end) = (0, n),
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
            continue;
        }
        let mut fds = [
            pollfd(if draining { -1 } else { stop.as_raw_fd() }, libc::POLLIN),
            // While bytes wait for the process, the FIFO is left alone (a negative fd is
            // skipped): its hang-up would wake the loop at once.
            pollfd(if pending { -1 } else { fifo.as_raw_fd() }, libc::POLLIN),
            // Without bytes to write, still watched: POLLERR says the process's end is gone.
            pollfd(sink.as_raw_fd(), if pending { libc::POLLOUT } else { 0 }),
        ];
        // SAFETY: poll on three pollfd structs we own.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[2].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            return;
        }
        if fds[0].revents != 0 {
            draining = true;
            continue;
        }
        if pending {
            if fds[2].revents & libc::POLLOUT == 0 {
                continue;
            }
            match rustix::io::write(&sink, &buf[start..end]) {
                Ok(n) => start += n,
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        } else if fds[1].revents != 0 {
            match rustix::io::read(&fifo, &mut buf) {
                Ok(0) => return,
                Ok(n) => (start, end) = (0, n),
                Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => {}
                Err(_) => return,
            }
        }
    }
}

fn pollfd(fd: i32, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn fifo() -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdin");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        (dir, path)
    }

    fn read_all(mut process: File) -> Vec<u8> {
        let mut got = Vec::new();
        process.read_to_end(&mut got).unwrap();
        got
    }

    #[test]
    fn the_process_reads_everything_then_eof_when_the_writer_goes() {
        let (_dir, path) = fifo();
        let (process, _relay) = open(path.to_str().unwrap()).unwrap().unwrap();
        // A late writer: the process must not read EOF before it comes.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let data: Vec<u8> = (0..300_000u32).map(|i| i as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
            w.write_all(&sent).unwrap();
        });
        assert_eq!(read_all(process), data);
        writer.join().unwrap();
    }

    #[test]
    fn dropping_the_relay_ends_stdin_while_the_writer_stays() {
        let (_dir, path) = fifo();
        let (process, relay) = open(path.to_str().unwrap()).unwrap().unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(b"hello").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(relay);
        assert_eq!(read_all(process), b"hello");
        drop(w);
    }

    #[test]
    fn bytes_written_before_close_io_all_reach_the_process() {
        let (_dir, path) = fifo();
        let (process, relay) = open(path.to_str().unwrap()).unwrap().unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        // More than the relay holds at once (its buffer and the pipe), less than it and the
        // FIFO hold together: the writes return before the process reads a byte.
        let data: Vec<u8> = (0..150_000u32).map(|i| (i % 251) as u8).collect();
        w.write_all(&data).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        drop(relay);
        assert_eq!(read_all(process), data);
        drop(w);
    }
}
