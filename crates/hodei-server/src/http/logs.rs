//! Live log follow, as Server-Sent Events or as binary log frames
//! ([`hodei_core::frames`], when the client's `Accept` names them); the
//! full download is in `download.rs`.
//!
//! A follower never misses a byte: it subscribes to change notices first,
//! then reads from the store from its offsets, sends what it read, and only
//! waits for a notice when the store had nothing new. It ends after the job
//! is finished *and* a read made after seeing it finished returned nothing
//! (results are committed after the logs that precede them).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use hodei_core::api::EndEvent;
use hodei_core::engine::Notice;
use hodei_core::frames::{self, Frame};
use hodei_core::{Job, JobState, LogStream};
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::jobs::job_id;
use super::schema::ErrorBodySchema;
use super::{ApiError, AppState};
use crate::store::{LogChunk, LogQuery};

/// Bytes read from the store per page.
pub(super) const PAGE_BYTES: usize = 1024 * 1024;
/// A follower re-reads the store at least this often, notices or not.
const SAFETY_POLL: Duration = Duration::from_secs(2);
/// A follow that sent nothing for this long gets a keep-alive (an SSE
/// comment, or a `K` frame), so that proxies keep the connection open.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct LogParams {
    /// stdout | stderr | both (default).
    pub(super) stream: Option<String>,
    /// Which attempt; default the current one (a follower moves on to the
    /// next attempt when the job is retried).
    pub(super) attempt: Option<u32>,
    /// Follow only: start offsets, as the SSE event id: `STDOUT:STDERR`, or
    /// one number for a single stream. `Last-Event-ID` takes precedence.
    pub(super) from: Option<String>,
}

pub fn parse_stream(s: Option<&str>) -> Result<Option<LogStream>, ApiError> {
    match s {
        None | Some("both") | Some("") => Ok(None),
        Some(s) => LogStream::parse(s).map(Some).ok_or_else(|| {
            ApiError::invalid("stream", format!("{s:?} is not stdout, stderr or both"))
        }),
    }
}

/// Where a follow starts: the stream asked for, and the offsets from
/// `Last-Event-ID` (which takes precedence) or `from`; `[0, 0]` without
/// either.
pub fn follow_start(
    params: &LogParams,
    last_event_id: Option<&str>,
) -> Result<(Option<LogStream>, [u64; 2]), ApiError> {
    let stream = parse_stream(params.stream.as_deref())?;
    let from = match last_event_id.or(params.from.as_deref()) {
        Some(s) => parse_offsets(s, stream)?,
        None => [0, 0],
    };
    Ok((stream, from))
}

/// Parses `STDOUT:STDERR` (or a single offset for a one-stream follow).
pub fn parse_offsets(s: &str, stream: Option<LogStream>) -> Result<[u64; 2], ApiError> {
    let bad = || {
        ApiError::invalid(
            "from",
            format!("{s:?} is not an offset (N, or STDOUT:STDERR)"),
        )
    };
    let mut from = [0u64; 2];
    match (s.split_once(':'), stream) {
        (Some((o, e)), _) => {
            from[0] = o.trim().parse().map_err(|_| bad())?;
            from[1] = e.trim().parse().map_err(|_| bad())?;
        }
        (None, Some(st)) => from[st.index()] = s.trim().parse().map_err(|_| bad())?,
        (None, None) => return Err(bad()),
    }
    Ok(from)
}

/// The SSE event id of a position: what [`parse_offsets`] reads back.
pub fn event_id(from: [u64; 2]) -> String {
    format!("{}:{}", from[0], from[1])
}

/// A [`LogEvent`](hodei_core::api::LogEvent) as JSON, the same text `serde_json` makes of it (the
/// test below checks), written directly: base64 needs no escaping, and
/// `serde_json` scanned every byte of it for characters to escape (10 % of
/// the server's time in the logs benchmark).
pub fn log_event_json(
    attempt: u32,
    stream: LogStream,
    offset: u64,
    data: &[u8],
    timestamp_ms: i64,
) -> String {
    use std::fmt::Write as _;
    let mut json = String::with_capacity(96 + data.len().div_ceil(3) * 4);
    let _ = write!(
        json,
        "{{\"attempt\":{attempt},\"stream\":\"{}\",\"offset\":{offset},\"data\":\"",
        stream.as_str()
    );
    base64_simd::STANDARD.encode_append(data, &mut json);
    let _ = write!(json, "\",\"timestamp_ms\":{timestamp_ms}}}");
    json
}

/// Follow a job's log live (Server-Sent Events, or log frames).
///
/// Events: `log` (JSON [`LogEvent`](hodei_core::api::LogEvent), the bytes base64), `attempt` (the job
/// moved on to a new attempt, whose number is the data; offsets restart at
/// 0) and finally `end` (JSON [`EndEvent`]) once the job is finished and
/// every byte was sent. Event ids are `STDOUT:STDERR` byte offsets: a client
/// that reconnects with `Last-Event-ID` misses nothing and gets nothing twice.
///
/// With `Accept: application/vnd.hodei.log-frames` the same events come as
/// binary frames, the bytes as they are (no base64, no JSON); see
/// `docs/api.md`. The client computes its offsets from the frames.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/logs/follow",
    tag = "logs",
    params(
        ("id" = String, Path, description = "Job id"),
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id (`STDOUT:STDERR` offsets)"),
        LogParams,
    ),
    responses(
        (status = 200, description = "`text/event-stream` of `log` (LogEvent JSON), `attempt` and `end` (EndEvent JSON) events; or, when asked for, the same events as log frames", content(
            (String = "text/event-stream"),
            (Vec<u8> = "application/vnd.hodei.log-frames"),
        )),
        (status = 400, description = "Invalid id, stream or offsets", body = ErrorBodySchema),
        (status = 404, description = "No such job", body = ErrorBodySchema),
    )
)]
pub async fn follow(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<LogParams>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = job_id(path)?;
    let Query(p) = params?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let (stream, from) = follow_start(&p, last_event_id)?;
    let frames = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(frames::CONTENT_TYPE));
    // Subscribe before the first read so no notice can slip between them.
    let notices = app.hub.subscribe();
    let job = app
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let follower = Follower {
        app,
        query: LogQuery {
            job_id: id,
            attempt: p.attempt.unwrap_or(job.attempt),
            stream,
            from,
            max_bytes: PAGE_BYTES,
        },
        fixed_attempt: p.attempt.is_some(),
        notices,
        last_sent: Instant::now(),
    };
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(follower.run(tx, job));
    let out = ReceiverStream::new(rx);
    Ok(if frames {
        // A log frame goes out as its head and its bytes, without a copy.
        let body = out.flat_map(|o| futures::stream::iter(o.into_frame()).map(Ok::<_, Infallible>));
        (
            [
                (header::CONTENT_TYPE, frames::CONTENT_TYPE),
                (header::CACHE_CONTROL, "no-cache"),
            ],
            Body::from_stream(body),
        )
            .into_response()
    } else {
        Sse::new(out.map(|o| Ok::<_, Infallible>(o.into_event()))).into_response()
    })
}

/// What a follower sends, before it is encoded as an SSE event or a frame.
enum Out {
    Log {
        attempt: u32,
        chunk: LogChunk,
        /// The offsets after this chunk (the SSE event id).
        from: [u64; 2],
    },
    Attempt(u32),
    /// The `EndEvent` JSON.
    End(String),
    Error(String),
    KeepAlive,
}

impl Out {
    fn into_event(self) -> Event {
        match self {
            Out::Log {
                attempt,
                chunk,
                from,
            } => Event::default()
                .event("log")
                .id(event_id(from))
                .data(log_event_json(
                    attempt,
                    chunk.stream,
                    chunk.offset,
                    &chunk.data,
                    chunk.timestamp_ms,
                )),
            Out::Attempt(n) => Event::default()
                .event("attempt")
                .id(event_id([0, 0]))
                .data(n.to_string()),
            Out::End(json) => Event::default().event("end").data(json),
            Out::Error(message) => Event::default().event("error").data(message),
            Out::KeepAlive => Event::default().comment(""),
        }
    }

    /// The frame's pieces: a log frame's head, then its bytes.
    fn into_frame(self) -> Vec<Bytes> {
        match self {
            Out::Log { attempt, chunk, .. } => {
                let head = frames::log_head(
                    attempt,
                    chunk.stream,
                    chunk.offset,
                    chunk.timestamp_ms,
                    chunk.data.len(),
                );
                vec![Bytes::copy_from_slice(&head), chunk.data]
            }
            Out::Attempt(n) => vec![frames::encode(&Frame::Attempt(n))],
            Out::End(json) => vec![frames::encode(&Frame::End(json.into()))],
            Out::Error(message) => vec![frames::encode(&Frame::Error(message))],
            Out::KeepAlive => vec![frames::encode(&Frame::KeepAlive)],
        }
    }
}

struct Follower {
    app: AppState,
    query: LogQuery,
    fixed_attempt: bool,
    notices: broadcast::Receiver<Notice>,
    /// When something was last sent (keep-alives fill silences).
    last_sent: Instant,
}

type Tx = mpsc::Sender<Out>;

impl Follower {
    /// Follows from `job`, the job as read after subscribing.
    async fn run(mut self, tx: Tx, job: Job) {
        if let Err(message) = self.follow(&tx, job).await {
            let _ = tx.send(Out::Error(message)).await;
        }
    }

    /// Sends `out`; `false` when the client is gone.
    async fn send(&mut self, tx: &Tx, out: Out) -> bool {
        self.last_sent = Instant::now();
        tx.send(out).await.is_ok()
    }

    /// Sends the log, then the end. Reads the store only for what a notice
    /// says may have changed: new output (the log, until a page comes back
    /// not full), another state (the job; the log once more if it ended or
    /// moved to another attempt), or anything after a missed notice or a
    /// quiet [`SAFETY_POLL`] (both).
    async fn follow(&mut self, tx: &Tx, job: Job) -> Result<(), String> {
        // The job as last seen finished; set only before a log read, so an
        // empty read after it means every byte was sent (results are
        // committed after the logs that precede them).
        let mut finished: Option<Job> = None;
        // The job as last read, while no notice said it changed.
        let mut known = Some(job);
        // Whether output may have come since the last read that sent all
        // that was stored (an empty page, or one not full).
        let mut logs_due = true;
        loop {
            if logs_due {
                let chunks = self
                    .app
                    .store
                    .read_logs(&self.query)
                    .await
                    .map_err(|e| e.to_string())?;
                if !chunks.is_empty() {
                    // A page that is not full held everything stored when it
                    // was read: what comes later comes with a notice.
                    let bytes: usize = chunks.iter().map(|c| c.data.len()).sum();
                    logs_due = bytes >= self.query.max_bytes;
                    for chunk in chunks {
                        let end = chunk.offset + chunk.data.len() as u64;
                        self.query.from[chunk.stream.index()] = end;
                        let log = Out::Log {
                            attempt: self.query.attempt,
                            chunk,
                            from: self.query.from,
                        };
                        if !self.send(tx, log).await {
                            return Ok(());
                        }
                    }
                    if logs_due {
                        continue;
                    }
                }
            }
            if let Some(job) = finished {
                let end = serde_json::to_string(&EndEvent::of(&job)).map_err(|e| e.to_string())?;
                self.send(tx, Out::End(end)).await;
                return Ok(());
            }
            // Nothing new to send: only now look at the job.
            let job = match known.take() {
                Some(job) => job,
                None => self
                    .app
                    .store
                    .get_job(&self.query.job_id)
                    .await
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("job {} not found", self.query.job_id))?,
            };
            if !self.fixed_attempt && job.attempt > self.query.attempt {
                self.query.attempt = job.attempt;
                self.query.from = [0, 0];
                if !self.send(tx, Out::Attempt(job.attempt)).await {
                    return Ok(());
                }
                logs_due = true;
                continue;
            }
            if job.state.is_terminal() {
                // One more read, ordered after the finish, then the end.
                finished = Some(job);
                logs_due = true;
                continue;
            }
            if tx.is_closed() {
                return Ok(());
            }
            let due = self.wait_for_change().await;
            if self.last_sent.elapsed() >= KEEP_ALIVE && !self.send(tx, Out::KeepAlive).await {
                return Ok(());
            }
            // The last read sent everything stored then: what came since
            // came with notices.
            logs_due = due.log;
            // Otherwise nothing said the job changed since it was read.
            known = (!due.job).then_some(job);
        }
    }

    /// Waits until something happens to this job (or the safety poll),
    /// then takes every notice already queued too: one read covers them.
    async fn wait_for_change(&mut self) -> Due {
        let deadline = tokio::time::sleep(SAFETY_POLL);
        tokio::pin!(deadline);
        let mut due = loop {
            tokio::select! {
                _ = &mut deadline => return Due::ALL,
                notice = self.notices.recv() => match notice {
                    Ok(notice) => {
                        if let Some(due) = self.due_for(&notice) {
                            break due;
                        }
                    }
                    // Missed some notices: re-read to be safe.
                    Err(broadcast::error::RecvError::Lagged(_)) => break Due::ALL,
                    Err(broadcast::error::RecvError::Closed) => {
                        (&mut deadline).await;
                        return Due::ALL;
                    }
                },
            }
        };
        loop {
            match self.notices.try_recv() {
                Ok(notice) => {
                    if let Some(more) = self.due_for(&notice) {
                        due = due.and(more);
                    }
                }
                Err(broadcast::error::TryRecvError::Lagged(_)) => due = Due::ALL,
                Err(_) => return due,
            }
        }
    }

    /// What `notice` makes due for this follower; `None` when it is about
    /// another job.
    fn due_for(&self, notice: &Notice) -> Option<Due> {
        match notice {
            // Another replica changed the job or its log: both.
            Notice::JobTouched { job_id } if *job_id == self.query.job_id => Some(Due::ALL),
            Notice::LogAppended { job_id } if *job_id == self.query.job_id => Some(Due {
                log: true,
                job: false,
            }),
            // Running: same attempt, not finished, no output of its own.
            Notice::JobChanged {
                job_id,
                state: JobState::Running,
            } if *job_id == self.query.job_id => Some(Due::NOTHING),
            // Output comes with notices of its own: the job is read, and if
            // it finished or moved to another attempt, the log after it.
            Notice::JobChanged { job_id, .. } if *job_id == self.query.job_id => Some(Due {
                log: false,
                job: true,
            }),
            _ => None,
        }
    }
}

/// What a follower reads again after a wake-up.
#[derive(Debug, Clone, Copy)]
struct Due {
    /// The log: output came.
    log: bool,
    /// The job: it changed.
    job: bool,
}

impl Due {
    const NOTHING: Due = Due {
        log: false,
        job: false,
    };
    /// After a missed notice, none for a while, or another replica's
    /// change.
    const ALL: Due = Due {
        log: true,
        job: true,
    };

    fn and(self, other: Due) -> Due {
        Due {
            log: self.log || other.log,
            job: self.job || other.job,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use hodei_core::api::LogEvent;

    #[test]
    fn the_log_event_json_is_what_serde_json_writes() {
        let cases: [(u32, LogStream, u64, &[u8], i64); 4] = [
            (1, LogStream::Stdout, 0, b"", 0),
            (
                2,
                LogStream::Stderr,
                u64::MAX,
                b"\"quoted\"\n\\ \xff\x00",
                -1,
            ),
            (u32::MAX, LogStream::Stdout, 12345, &[0u8; 1000], i64::MAX),
            (
                7,
                LogStream::Stderr,
                3,
                "h\u{e9}llo \u{1f600}".as_bytes(),
                i64::MIN,
            ),
        ];
        for (attempt, stream, offset, data, ts) in cases {
            let ev = LogEvent {
                attempt,
                stream,
                offset,
                data: base64::engine::general_purpose::STANDARD.encode(data),
                timestamp_ms: ts,
            };
            let expected = serde_json::to_string(&ev).expect("json");
            assert_eq!(log_event_json(attempt, stream, offset, data, ts), expected);
        }
    }
}
