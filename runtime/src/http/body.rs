//! Request and response bodies: the request's size bound, and a response's first frames
//! gathered so that a small one leaves in one write with a Content-Length.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Response, StatusCode};
use std::pin::Pin;
use std::task::{Context, Poll};
use wasmtime_wasi_http::WasiBody;

/// Bytes of a response body collected before the head is sent.
const GATHER_LIMIT: usize = 64 * 1024;

/// How far a response body got before its head leaves.
pub(super) enum Gathered {
    /// All of it: send it with a Content-Length.
    Complete,
    /// A part (the rest is not ready yet, or it is large): stream it.
    Partial,
    /// The body failed before any of it was sent.
    Failed(wasmtime_wasi_http::Error),
}

/// A response body's first frames, taken while `side` (the guest, when it runs in this task)
/// is polled along: all of it if it is small and ready, else what is there.
pub(super) struct Gather {
    frames: Vec<Frame<Bytes>>,
    len: usize,
}

impl Gather {
    pub(super) async fn new(
        body: &mut WasiBody,
        mut side: impl FnMut(&mut Context<'_>),
    ) -> (Gather, Gathered) {
        let mut frames = Vec::new();
        let mut len = 0;
        let outcome = std::future::poll_fn(|cx| {
            loop {
                side(cx);
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        let trailers = frame.is_trailers();
                        len += frame.data_ref().map_or(0, Bytes::len);
                        frames.push(frame);
                        if trailers || len > GATHER_LIMIT {
                            return Poll::Ready(Gathered::Partial);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Gathered::Failed(e)),
                    Poll::Ready(None) => return Poll::Ready(Gathered::Complete),
                    Poll::Pending if frames.is_empty() => return Poll::Pending,
                    Poll::Pending => return Poll::Ready(Gathered::Partial),
                }
            }
        })
        .await;
        (Gather { frames, len }, outcome)
    }

    /// The response: the whole body in one piece, or the frames taken followed by the rest.
    pub(super) fn respond(
        self,
        parts: hyper::http::response::Parts,
        rest: WasiBody,
        outcome: Gathered,
    ) -> Response<WasiBody> {
        let body = match outcome {
            Gathered::Complete => {
                let mut whole = bytes::BytesMut::with_capacity(self.len);
                for frame in self.frames {
                    if let Ok(data) = frame.into_data() {
                        whole.extend_from_slice(&data);
                    }
                }
                Full::new(whole.freeze())
                    .map_err(|never| match never {})
                    .boxed_unsync()
            }
            Gathered::Partial => Prefixed {
                head: self.frames.into(),
                rest,
            }
            .boxed_unsync(),
            Gathered::Failed(e) => {
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("the handler failed while writing its response: {e}\n"),
                );
            }
        };
        Response::from_parts(parts, body)
    }
}

/// A response with a text body, for what the server answers itself.
pub(super) fn plain(status: StatusCode, text: String) -> Response<WasiBody> {
    let body = Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed_unsync();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// A request body cut off with an error past `limit` bytes.
pub(super) struct Limited {
    inner: Incoming,
    left: u64,
    limit: u64,
}

impl Limited {
    pub(super) fn new(inner: Incoming, limit: u64) -> Limited {
        Limited {
            inner,
            left: limit,
            limit,
        }
    }
}

impl Body for Limited {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(Some(Ok(frame))) => frame,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            if len > self.left {
                let limit = self.limit;
                self.left = 0;
                return Poll::Ready(Some(Err(wasmtime_wasi_http::Error::HttpRequestBodySize(
                    Some(limit),
                ))));
            }
            self.left -= len;
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A body whose first frames were already taken from `rest`.
struct Prefixed {
    head: std::collections::VecDeque<Frame<Bytes>>,
    rest: WasiBody,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = wasmtime_wasi_http::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(frame) = self.head.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.is_end_stream()
    }
}
