//! Following a job's log live (`GET /api/v1/jobs/{id}/logs/follow`).
//!
//! The client asks for log frames ([`hodei_core::frames`]): the bytes as
//! they are, where Server-Sent Events carry them as base64 in JSON. A
//! server that answers with SSE instead (one from before frames) is read as
//! SSE. Either way a dropped connection is resumed from the last position
//! (`Last-Event-ID: STDOUT:STDERR`), so no byte is missed or repeated.

use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use hodei_core::LogStream;
use hodei_core::api::{EndEvent, LogEvent};
use hodei_core::frames::{self, Frame};

use crate::{Client, ClientError, sse};

/// One event of a live log follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowEvent {
    Log {
        attempt: u32,
        stream: LogStream,
        offset: u64,
        data: Bytes,
    },
    /// The job was retried; the log restarts for this attempt.
    Attempt(u32),
}

/// How one connection ended.
enum Ended {
    /// The job ended and every byte was delivered.
    Job(EndEvent),
    /// The connection broke (this message): resume.
    Broken(String),
}

/// An answer the client cannot read.
fn protocol(e: impl std::fmt::Display) -> ClientError {
    ClientError::Protocol(e.to_string())
}

impl Client {
    /// Follows a job's log live until the job ends, calling `on_event` for
    /// every piece of output in order, and returns how the job ended. A
    /// dropped connection is resumed from the last event (no byte is missed
    /// or repeated) for up to `reconnect_for` of consecutive failures.
    pub async fn follow(
        &self,
        id: &str,
        reconnect_for: Duration,
        mut on_event: impl FnMut(FollowEvent),
    ) -> Result<EndEvent, ClientError> {
        // Where to resume: the stdout and stderr offsets the last event
        // reached (`None`: from the start of the current attempt).
        let mut resume: Option<[u64; 2]> = None;
        let mut failing_since: Option<tokio::time::Instant> = None;
        loop {
            let mut req = self
                .http
                .get(self.url(&format!("/jobs/{id}/logs/follow")))
                .header(reqwest::header::ACCEPT, frames::CONTENT_TYPE);
            if let Some([o, e]) = resume {
                req = req.header("Last-Event-ID", format!("{o}:{e}"));
            }
            let message = match self.send(req).await {
                Ok(resp) => {
                    let is_frames = resp
                        .headers()
                        .get(reqwest::header::CONTENT_TYPE)
                        .and_then(|v| v.to_str().ok())
                        .is_some_and(|v| v.starts_with(frames::CONTENT_TYPE));
                    let body = resp.bytes_stream();
                    let mut seen = || failing_since = None;
                    let ended = if is_frames {
                        read_frames(body, &mut resume, &mut seen, &mut on_event).await?
                    } else {
                        read_sse(body, &mut resume, &mut seen, &mut on_event).await?
                    };
                    match ended {
                        Ended::Job(end) => return Ok(end),
                        Ended::Broken(message) => message,
                    }
                }
                // The connection failed: resume below. The server refused: stop.
                Err(ClientError::Unreachable { message, .. }) => message,
                Err(refused) => return Err(refused),
            };
            let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > reconnect_for {
                return Err(ClientError::Unreachable {
                    url: self.base.clone(),
                    message,
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Reads one connection's log frames.
async fn read_frames(
    body: impl Stream<Item = reqwest::Result<Bytes>>,
    resume: &mut Option<[u64; 2]>,
    seen: &mut impl FnMut(),
    on_event: &mut impl FnMut(FollowEvent),
) -> Result<Ended, ClientError> {
    let mut body = std::pin::pin!(body);
    let mut decoder = frames::Decoder::default();
    while let Some(piece) = body.next().await {
        let piece = match piece {
            Ok(piece) => piece,
            Err(e) => return Ok(Ended::Broken(e.to_string())),
        };
        seen();
        decoder.feed(&piece);
        while let Some(frame) = decoder.next_frame().map_err(protocol)? {
            match frame {
                Frame::Log {
                    attempt,
                    stream,
                    offset,
                    data,
                    ..
                } => {
                    // Frames carry no id: the position is where this one ends.
                    resume.get_or_insert([0, 0])[stream.index()] = offset + data.len() as u64;
                    on_event(FollowEvent::Log {
                        attempt,
                        stream,
                        offset,
                        data,
                    });
                }
                Frame::Attempt(n) => {
                    *resume = Some([0, 0]);
                    on_event(FollowEvent::Attempt(n));
                }
                Frame::End(json) => {
                    return serde_json::from_slice(&json)
                        .map(Ended::Job)
                        .map_err(protocol);
                }
                Frame::Error(message) => return Err(ClientError::Protocol(message)),
                Frame::KeepAlive => {}
            }
        }
    }
    Ok(Ended::Broken(match decoder.finish() {
        Err(e) => e.to_string(),
        Ok(()) => "log stream ended early".to_string(),
    }))
}

/// `STDOUT:STDERR`, as the server reads it.
fn parse_position(s: &str) -> Option<[u64; 2]> {
    let (o, e) = s.split_once(':')?;
    Some([o.parse().ok()?, e.parse().ok()?])
}

/// Reads one connection's Server-Sent Events.
async fn read_sse(
    body: impl Stream<Item = reqwest::Result<Bytes>>,
    resume: &mut Option<[u64; 2]>,
    seen: &mut impl FnMut(),
    on_event: &mut impl FnMut(FollowEvent),
) -> Result<Ended, ClientError> {
    let mut events = std::pin::pin!(sse::events(body));
    while let Some(ev) = events.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => return Ok(Ended::Broken(e.to_string())),
        };
        seen();
        match ev.event.as_str() {
            "log" => {
                let log: LogEvent = serde_json::from_str(&ev.data).map_err(protocol)?;
                let data = base64_simd::STANDARD
                    .decode_to_vec(&log.data)
                    .map_err(protocol)?;
                on_event(FollowEvent::Log {
                    attempt: log.attempt,
                    stream: log.stream,
                    offset: log.offset,
                    data: Bytes::from(data),
                });
            }
            "attempt" => {
                let n = ev.data.trim().parse().unwrap_or_default();
                on_event(FollowEvent::Attempt(n));
            }
            "end" => {
                return serde_json::from_str(&ev.data)
                    .map(Ended::Job)
                    .map_err(protocol);
            }
            "error" => return Err(ClientError::Protocol(ev.data)),
            _ => {}
        }
        if let Some(at) = parse_position(&ev.id) {
            *resume = Some(at);
        }
    }
    Ok(Ended::Broken("log stream ended early".to_string()))
}
