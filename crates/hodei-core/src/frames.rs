//! Log frames: the binary form of a live log follow
//! (`GET /api/v1/jobs/{id}/logs/follow` with `Accept:` [`CONTENT_TYPE`]).
//!
//! The same events as the Server-Sent Events form (`log`, `attempt`, `end`,
//! `error`, keep-alives), without its costs: SSE carries bytes as base64
//! inside JSON inside text lines, so every byte of output was encoded,
//! escaped and scanned by the server and decoded, scanned and decoded again
//! by the client, and a third more of it crossed the network. A frame
//! carries the bytes as they are.
//!
//! # Format
//!
//! A body is a sequence of frames. Every frame is
//!
//! ```text
//! kind: u8   length: u32 (big-endian; the payload's bytes)   payload
//! ```
//!
//! | kind | payload |
//! |---|---|
//! | `L` log | attempt `u32`, stream `u8` (0 stdout, 1 stderr), offset `u64`, timestamp (Unix ms) `i64`, then the bytes (the rest) |
//! | `A` attempt | the new attempt `u32`: the job was retried, offsets restart at 0 |
//! | `E` end | [`EndEvent`](crate::api::EndEvent) JSON: the job finished and every byte was sent |
//! | `X` error | a UTF-8 message: the server could not go on |
//! | `K` keep-alive | empty |
//!
//! Integers are big-endian. A reader skips frames of a kind it does not
//! know, so kinds can be added. There is no event id: the reader knows its
//! offsets (a log frame's offset plus its length; `0:0` after an attempt
//! frame) and resumes with `Last-Event-ID: STDOUT:STDERR`, as with SSE.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::LogStream;

/// The media type to ask for (`Accept`) and that the server answers with.
pub const CONTENT_TYPE: &str = "application/vnd.hodei.log-frames";

/// The largest payload a reader accepts; the server sends at most 1 MiB of
/// log bytes per frame.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// `kind` and `length`.
const HEAD: usize = 5;
/// A log frame's fields before its bytes.
const LOG_FIELDS: usize = 4 + 1 + 8 + 8;
/// Everything before a log frame's bytes.
pub const LOG_HEAD: usize = HEAD + LOG_FIELDS;

const LOG: u8 = b'L';
const ATTEMPT: u8 = b'A';
const END: u8 = b'E';
const ERROR: u8 = b'X';
const KEEP_ALIVE: u8 = b'K';

/// One frame, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Log {
        attempt: u32,
        stream: LogStream,
        offset: u64,
        timestamp_ms: i64,
        data: Bytes,
    },
    Attempt(u32),
    /// The `EndEvent` JSON.
    End(Bytes),
    Error(String),
    KeepAlive,
}

/// A body that is not a sequence of frames.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("a frame of {0} bytes is larger than the {MAX_PAYLOAD} allowed")]
    TooLarge(usize),
    #[error("a {kind:?} frame of {len} bytes is too short")]
    Short { kind: char, len: usize },
    #[error("a log frame names stream {0}, which is neither 0 (stdout) nor 1 (stderr)")]
    Stream(u8),
    #[error("the body ended inside a frame")]
    Truncated,
}

/// The bytes before a log frame's data; send `data` right after them.
pub fn log_head(
    attempt: u32,
    stream: LogStream,
    offset: u64,
    timestamp_ms: i64,
    data_len: usize,
) -> [u8; LOG_HEAD] {
    let mut head = [0u8; LOG_HEAD];
    let mut w = &mut head[..];
    w.put_u8(LOG);
    // The server never sends more than `MAX_PAYLOAD`: saturating is moot.
    w.put_u32(u32::try_from(LOG_FIELDS + data_len).unwrap_or(u32::MAX));
    w.put_u32(attempt);
    w.put_u8(stream.index() as u8);
    w.put_u64(offset);
    w.put_i64(timestamp_ms);
    head
}

/// A whole frame (a log frame's bytes are copied in).
pub fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    let mut put = |kind: u8, payload: &[u8]| {
        out.reserve(HEAD + payload.len());
        out.put_u8(kind);
        out.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        out.put_slice(payload);
    };
    match frame {
        Frame::Log {
            attempt,
            stream,
            offset,
            timestamp_ms,
            data,
        } => {
            out.put_slice(&log_head(
                *attempt,
                *stream,
                *offset,
                *timestamp_ms,
                data.len(),
            ));
            out.put_slice(data);
        }
        Frame::Attempt(n) => put(ATTEMPT, &n.to_be_bytes()),
        Frame::End(json) => put(END, json),
        Frame::Error(message) => put(ERROR, message.as_bytes()),
        Frame::KeepAlive => put(KEEP_ALIVE, &[]),
    }
    out.freeze()
}

/// Reads frames from a body arriving in pieces of any size. A log frame's
/// bytes are handed out without a copy when they arrived in one piece.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    /// Appends the next piece of the body.
    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `None` when more bytes are needed. Frames
    /// of unknown kinds are skipped.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        loop {
            let Some(head) = self.buf.get(..HEAD) else {
                return Ok(None);
            };
            let kind = head[0];
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len > MAX_PAYLOAD {
                return Err(FrameError::TooLarge(len));
            }
            if self.buf.len() < HEAD + len {
                // Room for the rest, so pieces are not reallocated one by one.
                self.buf.reserve(HEAD + len - self.buf.len());
                return Ok(None);
            }
            self.buf.advance(HEAD);
            let mut payload = self.buf.split_to(len);
            let short = || FrameError::Short {
                kind: char::from(kind),
                len,
            };
            let frame = match kind {
                LOG => {
                    if len < LOG_FIELDS {
                        return Err(short());
                    }
                    let attempt = payload.get_u32();
                    let stream = match payload.get_u8() {
                        0 => LogStream::Stdout,
                        1 => LogStream::Stderr,
                        other => return Err(FrameError::Stream(other)),
                    };
                    let offset = payload.get_u64();
                    let timestamp_ms = payload.get_i64();
                    Frame::Log {
                        attempt,
                        stream,
                        offset,
                        timestamp_ms,
                        data: payload.freeze(),
                    }
                }
                ATTEMPT => {
                    if len < 4 {
                        return Err(short());
                    }
                    Frame::Attempt(payload.get_u32())
                }
                END => Frame::End(payload.freeze()),
                ERROR => Frame::Error(String::from_utf8_lossy(&payload).into_owned()),
                KEEP_ALIVE => Frame::KeepAlive,
                _ => continue, // A kind added later.
            };
            return Ok(Some(frame));
        }
    }

    /// Call at the end of the body: an error if it ended inside a frame.
    pub fn finish(&self) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(FrameError::Truncated)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples() -> Vec<Frame> {
        vec![
            Frame::Log {
                attempt: 1,
                stream: LogStream::Stdout,
                offset: 0,
                timestamp_ms: 1_700_000_000_000,
                data: Bytes::from_static(b"hello\n"),
            },
            Frame::KeepAlive,
            Frame::Log {
                attempt: u32::MAX,
                stream: LogStream::Stderr,
                offset: u64::MAX - 3,
                timestamp_ms: -1,
                data: Bytes::from(vec![0xff; 70_000]),
            },
            Frame::Log {
                attempt: 2,
                stream: LogStream::Stdout,
                offset: 7,
                timestamp_ms: 0,
                data: Bytes::new(),
            },
            Frame::Attempt(3),
            Frame::Error("store failed: disk full".into()),
            Frame::End(Bytes::from_static(br#"{"state":"succeeded"}"#)),
        ]
    }

    fn body(frames: &[Frame]) -> Vec<u8> {
        frames.iter().flat_map(|f| encode(f).to_vec()).collect()
    }

    fn decode_in_pieces(body: &[u8], piece: usize) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        for part in body.chunks(piece) {
            d.feed(part);
            while let Some(f) = d.next_frame()? {
                out.push(f);
            }
        }
        d.finish()?;
        Ok(out)
    }

    #[test]
    fn frames_read_back_whatever_the_pieces() {
        let frames = samples();
        let body = body(&frames);
        for piece in [1, 2, 5, 25, 26, 27, 4096, 65_536, body.len()] {
            assert_eq!(decode_in_pieces(&body, piece).unwrap(), frames, "{piece}");
        }
    }

    #[test]
    fn the_log_head_is_what_encode_writes_before_the_bytes() {
        let data = b"some output";
        let whole = encode(&Frame::Log {
            attempt: 4,
            stream: LogStream::Stderr,
            offset: 99,
            timestamp_ms: 5,
            data: Bytes::from_static(data),
        });
        let head = log_head(4, LogStream::Stderr, 99, 5, data.len());
        assert_eq!(&whole[..LOG_HEAD], &head);
        assert_eq!(&whole[LOG_HEAD..], data);
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut body = vec![b'Z', 0, 0, 0, 3, 1, 2, 3];
        body.extend(encode(&Frame::Attempt(2)));
        assert_eq!(decode_in_pieces(&body, 1).unwrap(), vec![Frame::Attempt(2)]);
    }

    #[test]
    fn bad_bodies_are_errors_not_panics() {
        let too_large = [b'L', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(
            decode_in_pieces(&too_large, 5),
            Err(FrameError::TooLarge(u32::MAX as usize))
        );
        let short_log = [b'L', 0, 0, 0, 2, 0, 0];
        assert!(matches!(
            decode_in_pieces(&short_log, 7),
            Err(FrameError::Short { kind: 'L', len: 2 })
        ));
        let short_attempt = [b'A', 0, 0, 0, 1, 9];
        assert!(matches!(
            decode_in_pieces(&short_attempt, 6),
            Err(FrameError::Short { kind: 'A', len: 1 })
        ));
        let mut bad_stream = encode(&Frame::Log {
            attempt: 1,
            stream: LogStream::Stdout,
            offset: 0,
            timestamp_ms: 0,
            data: Bytes::new(),
        })
        .to_vec();
        bad_stream[HEAD + 4] = 7;
        assert_eq!(decode_in_pieces(&bad_stream, 3), Err(FrameError::Stream(7)));
        let cut = &body(&samples())[..40];
        assert_eq!(decode_in_pieces(cut, 8), Err(FrameError::Truncated));
    }
}
