//! What the agent owes the orchestrator, per job attempt: the `Started`
//! report, every log byte not yet acknowledged, and the result until it is
//! acknowledged. Jobs keep running and producing output while the session is
//! down; after a reconnect everything unacknowledged is sent again from the
//! last acknowledged offset (the orchestrator drops what it already has).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use bytes::{Bytes, BytesMut};
use hodei_core::LogStream;
use hwp_proto::pb;
use tokio::sync::{Notify, watch};

use crate::executor::OutputChunk;

/// Largest log message sent at once (contiguous chunks are merged up to it).
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Default)]
struct StreamBox {
    /// Bytes below this offset are durable on the orchestrator.
    acked: u64,
    /// Bytes below this offset were sent on the current session.
    sent: u64,
    /// Unacknowledged chunks: (offset, data, timestamp), contiguous, in order.
    chunks: VecDeque<(u64, Bytes, i64)>,
    /// Offset after the last byte produced.
    end: u64,
}

impl StreamBox {
    fn unacked(&self) -> u64 {
        self.end - self.acked
    }

    /// The orchestrator has stored everything below `offset`. Acks trail
    /// sends, so an ack never moves `sent` back (a reconnect does, see
    /// [`Outbox::rewind`]).
    fn ack(&mut self, offset: u64) {
        let offset = offset.min(self.end);
        if offset <= self.acked {
            return;
        }
        self.acked = offset;
        while let Some((off, data, _)) = self.chunks.front() {
            if off + data.len() as u64 <= offset {
                self.chunks.pop_front();
            } else {
                break;
            }
        }
        self.sent = self.sent.max(offset);
    }

    /// The next unsent bytes, contiguous chunks merged up to `MAX_MESSAGE_BYTES`.
    fn next_unsent(&mut self) -> Option<(u64, Bytes, i64)> {
        let start = self.sent;
        if start >= self.end {
            return None;
        }
        let mut pieces: Vec<Bytes> = Vec::new();
        let mut total = 0;
        let mut ts = 0;
        for (off, data, t) in &self.chunks {
            if off + data.len() as u64 <= start {
                continue;
            }
            // Non-zero only for the first chunk, which may be partly sent.
            let skip = start.saturating_sub(*off) as usize;
            let piece = data.slice(skip.min(data.len())..);
            if !pieces.is_empty() && total + piece.len() > MAX_MESSAGE_BYTES {
                break;
            }
            if pieces.is_empty() {
                ts = *t;
            }
            total += piece.len();
            pieces.push(piece);
            if total >= MAX_MESSAGE_BYTES {
                break;
            }
        }
        let data = match pieces.len() {
            1 => pieces.pop().unwrap_or_default(),
            _ => {
                let mut buf = BytesMut::with_capacity(total);
                for p in &pieces {
                    buf.extend_from_slice(p);
                }
                buf.freeze()
            }
        };
        self.sent = start + data.len() as u64;
        Some((start, data, ts))
    }
}

#[derive(Debug)]
struct Entry {
    attempt: u32,
    started_sent: bool,
    streams: [StreamBox; 2],
    result: Option<pb::JobResult>,
    result_sent: bool,
    cancel: watch::Sender<bool>,
}

/// The agent's jobs and what it owes the orchestrator for each.
#[derive(Debug)]
pub struct Outbox {
    jobs: Mutex<HashMap<String, Entry>>,
    /// Wakes the sender when there is something to send.
    pub ready: Notify,
    /// Wakes producers waiting for acknowledgements (backpressure).
    space: Notify,
    max_unacked: u64,
}

impl Outbox {
    /// `max_unacked`: bytes per job stream kept before the job's output is
    /// held back (the process then blocks on its pipe).
    pub fn new(max_unacked: u64) -> Outbox {
        Outbox {
            jobs: Mutex::new(HashMap::new()),
            ready: Notify::new(),
            space: Notify::new(),
            max_unacked,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock leaves plain data; keep going.
        self.jobs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking an attempt; returns its cancel receiver, or `None`
    /// when the agent already tracks that job.
    pub fn add(
        &self,
        job_id: &str,
        attempt: u32,
        offsets: [u64; 2],
    ) -> Option<watch::Receiver<bool>> {
        let mut jobs = self.lock();
        if jobs.contains_key(job_id) {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        let stream = |o: u64| StreamBox {
            acked: o,
            sent: o,
            chunks: VecDeque::new(),
            end: o,
        };
        jobs.insert(
            job_id.to_string(),
            Entry {
                attempt,
                started_sent: false,
                streams: [stream(offsets[0]), stream(offsets[1])],
                result: None,
                result_sent: false,
                cancel: tx,
            },
        );
        drop(jobs);
        // `Started` is due.
        self.ready.notify_one();
        Some(rx)
    }

    /// Number of jobs whose process has not finished.
    pub fn running(&self) -> usize {
        self.lock().values().filter(|e| e.result.is_none()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// The attempts the agent holds, for `Hello` and heartbeats.
    pub fn attempts(&self) -> Vec<pb::RunningJob> {
        self.lock()
            .iter()
            .map(|(id, e)| pb::RunningJob {
                job_id: id.clone(),
                attempt: e.attempt,
            })
            .collect()
    }

    /// Appends output, waiting while too much of the stream is unacknowledged.
    pub async fn push(&self, job_id: &str, chunk: OutputChunk) {
        loop {
            let space = self.space.notified();
            {
                let mut jobs = self.lock();
                let Some(entry) = jobs.get_mut(job_id) else {
                    return;
                };
                let sb = &mut entry.streams[chunk.stream.index()];
                if sb.unacked() < self.max_unacked {
                    let len = chunk.data.len() as u64;
                    sb.chunks
                        .push_back((sb.end, chunk.data, chunk.timestamp_ms));
                    sb.end += len;
                    drop(jobs);
                    self.ready.notify_one();
                    return;
                }
            }
            space.await;
        }
    }

    /// Records the attempt's result; it is sent after the last log byte.
    pub fn finish(&self, job_id: &str, mut result: pb::JobResult) {
        if let Some(e) = self.lock().get_mut(job_id) {
            let summary = |sb: &StreamBox| pb::StreamSummary {
                bytes: sb.end,
                crc32c: 0,
            };
            result.stdout = Some(summary(&e.streams[0]));
            result.stderr = Some(summary(&e.streams[1]));
            e.result = Some(result);
        }
        self.ready.notify_one();
    }

    /// Asks the attempt's process to stop; false if the agent does not run it.
    pub fn cancel(&self, job_id: &str, attempt: u32) -> bool {
        match self.lock().get(job_id) {
            Some(e) if e.attempt == attempt => {
                let _ = e.cancel.send(true);
                true
            }
            _ => false,
        }
    }

    /// Cancels every job (agent shutting down hard).
    pub fn cancel_all(&self) {
        for e in self.lock().values() {
            let _ = e.cancel.send(true);
        }
    }

    pub fn ack_logs(&self, ack: &pb::LogAck) {
        if let Some(e) = self.lock().get_mut(&ack.job_id)
            && e.attempt == ack.attempt
        {
            e.streams[0].ack(ack.stdout_offset);
            e.streams[1].ack(ack.stderr_offset);
        }
        self.space.notify_waiters();
        self.ready.notify_one();
    }

    /// The result is recorded: forget the job. Returns whether it was known.
    pub fn ack_result(&self, ack: &pb::ResultAck) -> bool {
        let mut jobs = self.lock();
        let known = jobs
            .get(&ack.job_id)
            .is_some_and(|e| e.attempt == ack.attempt);
        if known {
            jobs.remove(&ack.job_id);
        }
        drop(jobs);
        self.space.notify_waiters();
        known
    }

    /// A new session starts: everything unacknowledged is due again.
    pub fn rewind(&self) {
        for e in self.lock().values_mut() {
            e.started_sent = false;
            e.result_sent = false;
            for sb in &mut e.streams {
                sb.sent = sb.acked;
            }
        }
        self.ready.notify_one();
    }

    /// Takes the next messages to send: `Started`, log data from the last
    /// sent offset, and results whose logs have all been sent.
    pub fn take_due(&self, max_bytes: usize) -> Vec<pb::agent_message::Body> {
        use pb::agent_message::Body;
        let mut out = Vec::new();
        let mut bytes = 0;
        let mut jobs = self.lock();
        for (id, e) in jobs.iter_mut() {
            if !e.started_sent {
                e.started_sent = true;
                out.push(Body::Started(pb::JobStarted {
                    job_id: id.clone(),
                    attempt: e.attempt,
                    // The executor does not expose the pid; 0 = not reported.
                    pid: 0,
                }));
            }
            for stream in LogStream::BOTH {
                while bytes < max_bytes {
                    let Some((offset, data, ts)) = e.streams[stream.index()].next_unsent() else {
                        break;
                    };
                    bytes += data.len();
                    out.push(Body::Log(pb::LogEntry {
                        job_id: id.clone(),
                        data: String::new(),
                        attempt: e.attempt,
                        stream: match stream {
                            LogStream::Stdout => pb::LogStream::Stdout as i32,
                            LogStream::Stderr => pb::LogStream::Stderr as i32,
                        },
                        offset,
                        timestamp_ms: ts,
                        bytes: data,
                        has_offset: true,
                    }));
                }
            }
            let all_sent = e.streams.iter().all(|s| s.sent >= s.end);
            if all_sent
                && !e.result_sent
                && let Some(result) = &e.result
            {
                e.result_sent = true;
                out.push(Body::Result(result.clone()));
            }
        }
        out
    }
}
