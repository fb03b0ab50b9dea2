//! Choosing what to send next, and reading its log data from memory or,
//! when memory no longer holds it, from the spool.

use std::sync::Arc;

use bytes::Bytes;
use hodei_core::LogStream;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use tracing::warn;

use super::Outbox;
use crate::spool::{AttemptFiles, ResultRecord, Totals};

/// Largest log message sent at once.
pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

/// Something to send, before the log data is read from the spool (unless
/// memory holds it).
enum Due {
    Ready(Body),
    Log {
        job_id: String,
        attempt: u32,
        stream: LogStream,
        offset: u64,
        len: usize,
        ts: i64,
        files: Arc<AttemptFiles>,
        /// The bytes, when memory holds them.
        data: Option<Bytes>,
    },
}

impl Due {
    /// A log message whose bytes must be read from the spool.
    fn needs_read(&self) -> bool {
        matches!(self, Due::Log { data: None, .. })
    }
}

impl Outbox {
    /// Plans the next messages: `Started` (once the process started, or
    /// before anything else of the attempt), log data from the last sent
    /// offset (a message per job and stream in turn), and results whose
    /// logs have all been sent.
    fn take_due(&self, max_bytes: usize) -> Vec<Due> {
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut st = self.lock();
        loop {
            let mut progressed = false;
            for (id, e) in st.jobs.iter_mut() {
                if bytes >= max_bytes {
                    break;
                }
                if !e.started_sent {
                    let pending = e.streams.iter().any(|s| s.sent < s.end);
                    if e.pid.is_none() && e.result.is_none() && !pending {
                        continue;
                    }
                    e.started_sent = true;
                    progressed = true;
                    out.push(Due::Ready(Body::Started(pb::JobStarted {
                        job_id: id.clone(),
                        attempt: e.attempt,
                        pid: e.pid.unwrap_or(0),
                    })));
                }
                for stream in LogStream::BOTH {
                    let sb = &mut e.streams[stream.index()];
                    let Some(files) = e.files.as_ref().filter(|_| sb.sent < sb.end) else {
                        continue;
                    };
                    let (len, data) = sb.sendable(sb.sent, MAX_MESSAGE_BYTES);
                    if len == 0 {
                        continue;
                    }
                    out.push(Due::Log {
                        job_id: id.clone(),
                        attempt: e.attempt,
                        stream,
                        offset: sb.sent,
                        len,
                        ts: sb.stamp_at(sb.sent),
                        files: files.clone(),
                        data,
                    });
                    sb.sent += len as u64;
                    bytes += len;
                    progressed = true;
                }
                let all_sent = e.streams.iter().all(|s| s.sent >= s.end);
                if all_sent
                    && !e.result_sent
                    && let Some(result) = &e.result
                {
                    e.result_sent = true;
                    progressed = true;
                    out.push(Due::Ready(Body::Result(result.clone())));
                }
            }
            if !progressed || bytes >= max_bytes {
                return out;
            }
        }
    }

    /// The next messages to send (about `max_bytes` of log data at most),
    /// with the log data read from the spool. Empty when nothing is due.
    pub async fn next_batch(&self, max_bytes: usize) -> Vec<Body> {
        let due = self.take_due(max_bytes);
        if !due.iter().any(Due::needs_read) {
            // Nothing to read from the spool (`Started`, results, output
            // still in memory): no round trip to a blocking thread.
            return due.into_iter().filter_map(Due::into_body).collect();
        }
        let read = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .filter_map(Due::into_body)
                .collect::<Vec<_>>()
        })
        .await;
        read.unwrap_or_else(|e| {
            warn!(error = %e, "reading the spool failed");
            Vec::new()
        })
    }
}

impl Due {
    /// The message, with its log data read from the spool (blocking file
    /// I/O for a `Due::Log` without its bytes); `None` when the spool
    /// cannot be read.
    fn into_body(self) -> Option<Body> {
        match self {
            Due::Ready(body) => Some(body),
            Due::Log {
                job_id,
                attempt,
                stream,
                offset,
                len,
                ts,
                files,
                data,
            } => match data.map_or_else(
                || files.read_at(stream.index(), offset, len).map(Bytes::from),
                Ok,
            ) {
                Ok(data) => Some(Body::Log(pb::LogEntry {
                    job_id,
                    data: String::new(),
                    attempt,
                    stream: match stream {
                        LogStream::Stdout => pb::LogStream::Stdout as i32,
                        LogStream::Stderr => pb::LogStream::Stderr as i32,
                    },
                    offset,
                    timestamp_ms: ts,
                    bytes: data,
                    has_offset: true,
                })),
                Err(e) => {
                    warn!(job = job_id, offset, error = %e, "cannot read the spool; the orchestrator will ask again");
                    None
                }
            },
        }
    }
}

/// The wire form of a recorded result.
pub(super) fn wire_result(
    job_id: &str,
    attempt: u32,
    base: [u64; 2],
    r: &ResultRecord,
) -> pb::JobResult {
    let summary = |t: Totals| {
        (base == [0, 0]).then_some(pb::StreamSummary {
            bytes: t.bytes,
            crc32c: t.crc32c,
        })
    };
    pb::JobResult {
        job_id: job_id.to_string(),
        exit_code: r.exit_code,
        attempt,
        outcome: r.outcome,
        signal: r.signal,
        message: r.message.clone(),
        stdout: summary(r.stdout),
        stderr: summary(r.stderr),
    }
}
