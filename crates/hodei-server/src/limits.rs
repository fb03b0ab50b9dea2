//! The transport limits of the orchestrator's port, applied before any
//! handler decodes a byte: the largest gRPC message
//! ([`Limits::max_grpc_message_bytes`]) and the largest HTTP request body
//! ([`Limits::max_http_body_bytes`]). The job spec limits are checked by
//! the engine ([`hodei_core::JobSpec::validate_with`]).
//!
//! [`Limits::max_grpc_message_bytes`]: hodei_core::spec::Limits::max_grpc_message_bytes
//! [`Limits::max_http_body_bytes`]: hodei_core::spec::Limits::max_http_body_bytes

use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http_body::{Frame, SizeHint};
use tonic::Status;

use crate::http::ApiError;

/// Length of a gRPC message prefix: a compression flag and a big-endian u32.
const PREFIX: usize = 5;

/// A gRPC request body that fails with RESOURCE_EXHAUSTED as soon as a
/// message prefix announces more than `limit` bytes, before the message is
/// buffered. tonic reads the error as the call's status. Every message
/// before the one over the limit is passed on first.
pub struct GrpcFrameLimit {
    inner: Body,
    limit: usize,
    scan: FrameScan,
    /// The refusal, due once the data before it was passed on.
    refused: Option<Status>,
}

/// A message prefix that announces more than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized {
    /// The announced length.
    pub len: u64,
    /// Where in the data fed the prefix starts (0 when it started in
    /// earlier data): everything before it belongs to earlier messages.
    pub at: usize,
}

/// Where the scan of a stream of length-prefixed messages is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameScan {
    prefix: [u8; PREFIX],
    /// Bytes of the current prefix seen so far.
    have: usize,
    /// Bytes of the current message still to come.
    remaining: u64,
}

impl FrameScan {
    /// Whether everything fed so far ended with a whole message.
    pub fn between_messages(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Follows the message boundaries through the next `data`; finds the
    /// first message over `limit`.
    pub fn feed(&mut self, data: &[u8], limit: usize) -> Result<(), Oversized> {
        let mut pos = 0;
        while pos < data.len() {
            let rest = &data[pos..];
            if self.remaining > 0 {
                let n = rest
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                self.remaining -= n as u64;
                pos += n;
                continue;
            }
            let start = pos.saturating_sub(self.have);
            let n = rest.len().min(PREFIX - self.have);
            self.prefix[self.have..self.have + n].copy_from_slice(&rest[..n]);
            self.have += n;
            pos += n;
            if self.have == PREFIX {
                self.have = 0;
                let [_, a, b, c, d] = self.prefix;
                let len = u64::from(u32::from_be_bytes([a, b, c, d]));
                if len > limit as u64 {
                    return Err(Oversized { len, at: start });
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

impl GrpcFrameLimit {
    pub fn new(inner: Body, limit: usize) -> GrpcFrameLimit {
        GrpcFrameLimit {
            inner,
            limit,
            scan: FrameScan::default(),
            refused: None,
        }
    }

    /// Wraps a gRPC request's body (for `tower::util::MapRequestLayer`).
    pub fn wrap(limit: usize) -> impl Fn(Request) -> Request + Clone {
        move |req: Request| req.map(|body| Body::new(GrpcFrameLimit::new(body, limit)))
    }
}

/// The status of a message over the limit.
pub fn grpc_too_large(len: u64, limit: usize) -> Status {
    Status::resource_exhausted(format!(
        "message too large: {len} bytes; the limit is {limit} (max_grpc_message_bytes)"
    ))
}

impl http_body::Body for GrpcFrameLimit {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(status) = this.refused.take() {
            return Poll::Ready(Some(Err(Box::new(status))));
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let Some(data) = frame.data_ref() else {
                    return Poll::Ready(Some(Ok(frame)));
                };
                match this.scan.feed(data, this.limit) {
                    Ok(()) => Poll::Ready(Some(Ok(frame))),
                    Err(over) => {
                        let status = grpc_too_large(over.len, this.limit);
                        if over.at == 0 {
                            return Poll::Ready(Some(Err(Box::new(status))));
                        }
                        // Earlier messages first; the refusal on the next poll.
                        this.refused = Some(status);
                        let before = data.slice(..over.at);
                        Poll::Ready(Some(Ok(Frame::data(before))))
                    }
                }
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

fn too_large(message: String) -> Response {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message).into_response()
}

/// A refused body is read and thrown away up to this many more bytes, for
/// at most `DRAIN_FOR`, before the 413 is sent: a client that writes its
/// whole body before reading the answer then gets the answer instead of a
/// broken pipe (nginx's "lingering close"). A larger body is not read; the
/// connection closes after the answer.
const DRAIN_MAX: u64 = 16 * 1024 * 1024;
const DRAIN_FOR: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and discards what is left of a refused body, within the bounds
/// above. Nothing is kept in memory.
async fn drain<S, E>(stream: &mut S)
where
    S: futures::Stream<Item = Result<bytes::Bytes, E>> + Unpin,
{
    let mut left = DRAIN_MAX;
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(chunk)) = stream.next().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                return;
            }
        }
    })
    .await;
}

/// HTTP middleware: refuses a request body over `limit` bytes with 413 and
/// a message naming the limit: when `Content-Length` says so, else as soon
/// as that many bytes arrived (a refused body is drained, within bounds,
/// first: see `DRAIN_MAX`). What passes is handed on whole.
pub async fn http_body_limit(State(limit): State<usize>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    if let Some(n) = declared
        && n > limit as u64
    {
        if n <= DRAIN_MAX {
            drain(&mut stream).await;
        }
        return too_large(format!(
            "request body is {n} bytes; the limit is {limit} (max_http_body_bytes)"
        ));
    }
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                return ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_argument",
                    format!("cannot read the request body: {e}"),
                )
                .into_response();
            }
        };
        if buf.len() + chunk.len() > limit {
            drain(&mut stream).await;
            return too_large(format!(
                "request body is over the limit of {limit} bytes (max_http_body_bytes)"
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    next.run(Request::from_parts(parts, Body::from(buf.freeze())))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: u32) -> Vec<u8> {
        let mut f = vec![0];
        f.extend_from_slice(&len.to_be_bytes());
        f.extend(std::iter::repeat_n(b'x', len as usize));
        f
    }

    #[test]
    fn messages_at_the_limit_pass_in_any_split() {
        let mut stream = frame(10);
        stream.extend(frame(0));
        stream.extend(frame(7));
        for split in 0..stream.len() {
            let mut scan = FrameScan::default();
            scan.feed(&stream[..split], 10).expect("first part");
            scan.feed(&stream[split..], 10).expect("second part");
            assert!(scan.between_messages(), "split at {split}: {scan:?}");
        }
    }

    #[test]
    fn a_message_over_the_limit_is_caught_at_its_prefix() {
        let mut stream = frame(3);
        stream.extend(&frame(11)[..PREFIX]);
        for split in 0..stream.len() {
            let mut scan = FrameScan::default();
            let r = scan.feed(&stream[..split], 10).map_err(|o| (o.len, o.at));
            let r = r.and_then(|()| {
                scan.feed(&stream[split..], 10)
                    .map_err(|o| (o.len, o.at + split))
            });
            // The prefix starts after the first message (8 bytes), or at the
            // split when it began before it.
            let at = if split > 8 && split < 8 + PREFIX {
                split
            } else {
                8
            };
            assert_eq!(r, Err((11, at)), "split at {split}");
        }
        let mut scan = FrameScan::default();
        assert_eq!(
            scan.feed(&[0, 0xff, 0xff, 0xff, 0xff], 10),
            Err(Oversized {
                len: u32::MAX as u64,
                at: 0
            })
        );
    }

    #[test]
    fn the_status_names_the_limit() {
        let s = grpc_too_large(20, 10);
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert!(s.message().contains("20 bytes") && s.message().contains("limit is 10"));
    }
}
