//! Guest stdout and stderr while serving: many instances write at once, so each instance's
//! output is cut into whole lines, and each line reaches the container's log in one write under a
//! process-wide lock. A line of one request is never split by another request's output.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
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

/// An instance's stdout or stderr when the instance may serve several requests: the start of
/// each request ends a partial line left by the one before, so one request's output never
/// continues another's line.
#[derive(Clone)]
pub(crate) struct InstanceOutput {
    pub(crate) output: Output,
    /// Counts the requests the instance has started.
    pub(crate) requests: Arc<AtomicU64>,
}

impl IsTerminal for InstanceOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for InstanceOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.lines())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.lines())
    }
}

impl InstanceOutput {
    fn lines(&self) -> Lines {
        let mut lines = Lines::new(self.output);
        let seen = self.requests.load(Ordering::Acquire);
        lines.requests = Some((self.requests.clone(), seen));
        lines
    }
}

/// One guest stream: buffers until a newline, writes whole lines, and writes what is left
/// (with a newline) when the instance drops it or, on a reused instance, when the next request
/// writes.
pub(crate) struct Lines {
    output: Output,
    pending: Vec<u8>,
    /// The instance's request count and the value at this stream's last write.
    requests: Option<(Arc<AtomicU64>, u64)>,
}

impl Lines {
    pub(crate) fn new(output: Output) -> Lines {
        Lines {
            output,
            pending: Vec::new(),
            requests: None,
        }
    }

    fn push(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if let Some((requests, seen)) = &mut self.requests {
            let now = requests.load(Ordering::Acquire);
            if now != *seen {
                *seen = now;
                self.end_line()?;
            }
        }
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

impl Lines {
    /// Writes a partial line out, ended with a newline.
    fn end_line(&mut self) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.pending.push(b'\n');
        let result = write_locked(self.output, &self.pending);
        self.pending.clear();
        result
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.end_line();
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
    fn a_new_request_ends_the_partial_line_of_the_one_before() {
        let output = InstanceOutput {
            output: Output::Stdout,
            requests: Arc::new(AtomicU64::new(1)),
        };
        let mut lines = output.lines();
        lines
            .pending
            .extend_from_slice(b"first request, no newline");
        output.requests.fetch_add(1, Ordering::AcqRel);
        // The push ends the old line first (written out), then buffers the new bytes alone.
        lines.push(b"second").unwrap();
        assert_eq!(lines.pending, b"second");
        lines.pending.clear();
    }

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
