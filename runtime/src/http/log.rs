//! Guest stdout and stderr while serving: many instances write at once, so each instance's
//! output is cut into whole lines, and each line reaches the container's log in one write under a
//! process-wide lock. A line of one request is never split by another request's output.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

/// A partial line longer than this is written out (ended with a newline) rather than kept.
const MAX_LINE: usize = 64 * 1024;

/// Serializes writes to fds 1 and 2, so lines from concurrent requests never interleave even
/// when a line is longer than a pipe's atomic write size.
static WRITING: Mutex<()> = Mutex::new(());

/// Which of the process's outputs a guest stream goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    Stdout,
    Stderr,
}

impl Output {
    fn fd(self) -> rustix::fd::BorrowedFd<'static> {
        match self {
            Output::Stdout => rustix::stdio::stdout(),
            Output::Stderr => rustix::stdio::stderr(),
        }
    }
}

impl IsTerminal for Output {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for Output {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(Lines::new(*self))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Lines::new(*self))
    }
}

/// One guest stream: buffers until a newline, writes whole lines, and writes what is left
/// (with a newline) when the instance drops it.
pub(crate) struct Lines {
    output: Output,
    pending: Vec<u8>,
}

impl Lines {
    pub(crate) fn new(output: Output) -> Lines {
        Lines {
            output,
            pending: Vec::new(),
        }
    }

    fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.pending.extend_from_slice(bytes);
        let whole = whole_lines(&mut self.pending);
        if whole == 0 {
            return Ok(());
        }
        let result = write_locked(self.output, &self.pending[..whole]);
        self.pending.drain(..whole);
        result
    }
}

/// How many leading bytes of `pending` are whole lines, ready to write. A partial line longer
/// than [`MAX_LINE`] is ended with a newline and counted whole.
fn whole_lines(pending: &mut Vec<u8>) -> usize {
    match pending.iter().rposition(|&b| b == b'\n') {
        Some(last) => last + 1,
        None if pending.len() > MAX_LINE => {
            pending.push(b'\n');
            pending.len()
        }
        None => 0,
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.pending.push(b'\n');
            let _ = write_locked(self.output, &self.pending);
        }
    }
}

/// Writes all of `bytes` to `output` while holding the process-wide lock.
pub(crate) fn write_locked(output: Output, mut bytes: &[u8]) -> std::io::Result<()> {
    let _held = WRITING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    while !bytes.is_empty() {
        match rustix::io::write(output.fd(), bytes) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn stream_error(e: std::io::Error) -> StreamError {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        StreamError::Closed
    } else {
        StreamError::LastOperationFailed(e.into())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for Lines {
    async fn ready(&mut self) {}
}

impl OutputStream for Lines {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.push(&bytes).map_err(stream_error)
    }

    fn flush(&mut self) -> StreamResult<()> {
        // Whole lines are already out; a partial one waits for its end.
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(MAX_LINE)
    }
}

impl tokio::io::AsyncWrite for Lines {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(self.get_mut().push(buf).map(|()| buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_lines_are_ready() {
        let mut pending = b"no newline yet".to_vec();
        assert_eq!(whole_lines(&mut pending), 0);
        let mut pending = b"one\ntwo\nthr".to_vec();
        assert_eq!(whole_lines(&mut pending), 8);
        let mut long = vec![b'x'; MAX_LINE + 1];
        assert_eq!(whole_lines(&mut long), MAX_LINE + 2);
        assert_eq!(long.last(), Some(&b'\n'));
    }
}
