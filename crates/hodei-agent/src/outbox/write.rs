//! Accepting output (into memory, and into the spool when memory is
//! full), and recording the result once the job ended.

use std::io;

use bytes::{Bytes, BytesMut};
use hodei_core::LogStream;
use hwp_proto::pb;
use tokio::time::Instant;
use tracing::{error, warn};

use super::{Outbox, State, dropped_marker, wire_result};
use crate::executor::{OutputChunk, now_ms};
use crate::spool::{AttemptFiles, ResultRecord};

impl Outbox {
    /// Accepts output into memory (or drops it if the spool's bound on
    /// unacknowledged bytes is reached); see `write` below.
    pub async fn push(&self, job_id: &str, chunk: OutputChunk) {
        let Some(writer) = self.lock().jobs.get(job_id).map(|e| e.writer.clone()) else {
            return;
        };
        let _writing = writer.lock().await;
        let s = chunk.stream.index();
        self.write(job_id, s, chunk.data, chunk.timestamp_ms, false)
            .await;
    }

    /// Accepts `data` into stream `s`, after the dropped-bytes marker if
    /// one is due. Unless `force`, drops it all when it would pass the
    /// bound on unacknowledged bytes (`max_bytes`). Making room in memory
    /// first may wait for acknowledgements or write the stream's oldest
    /// held chunks to the spool; when that write fails, `data` is dropped.
    async fn write(&self, job_id: &str, s: usize, data: Bytes, ts: i64, force: bool) {
        if let Err(why) = self.make_room(job_id, s, data.len()).await {
            let mut st = self.lock();
            if let Some(e) = st.jobs.get_mut(job_id) {
                e.streams[s].dropped += data.len() as u64;
            }
            warn!(job = job_id, error = %why, bytes = data.len(), "cannot write to the spool; output dropped");
            return;
        }
        let mut st = self.lock();
        let State {
            jobs,
            unacked,
            held,
            ..
        } = &mut *st;
        let Some(e) = jobs.get_mut(job_id) else {
            return;
        };
        let sb = &mut e.streams[s];
        if e.files.is_none() {
            sb.dropped += data.len() as u64;
            return;
        }
        let marked = sb.dropped;
        let buf = if marked > 0 {
            let marker = dropped_marker(marked);
            let mut buf = BytesMut::with_capacity(marker.len() + data.len());
            buf.extend_from_slice(marker.as_bytes());
            buf.extend_from_slice(&data);
            buf.freeze()
        } else {
            data.clone()
        };
        if buf.is_empty() {
            return;
        }
        let len = buf.len() as u64;
        if !force && *unacked + len > self.max_bytes {
            sb.dropped += data.len() as u64;
            return;
        }
        *unacked += len;
        *held += buf.len();
        sb.dropped -= marked;
        sb.hold(buf, ts);
        drop(st);
        self.ready.notify_one();
    }

    /// Makes room in memory for `len` more bytes of stream `s` (and the
    /// dropped-bytes marker due before them): waits for acknowledgements
    /// while they come, or else writes the stream's oldest held chunks to
    /// the spool and forgets them.
    async fn make_room(&self, job_id: &str, s: usize, len: usize) -> io::Result<()> {
        let (files, due) = loop {
            let acked = self.acked.notified();
            tokio::pin!(acked);
            acked.as_mut().enable();
            let until = {
                let st = self.lock();
                let Some(e) = st.jobs.get(job_id) else {
                    return Ok(());
                };
                let sb = &e.streams[s];
                let (Some(keep), Some(files)) = (sb.room_for(len, st.held), e.files.clone()) else {
                    return Ok(());
                };
                // While a session is up and this attempt's output was
                // acknowledged recently, acknowledgements are coming: wait
                // for the next to make room (holding the job back) rather
                // than write to the disk.
                let until = e.last_ack + ACK_STALL;
                if !st.attached || Instant::now() >= until {
                    break (files, sb.spill_due(keep));
                }
                until
            };
            let _ = tokio::time::timeout_at(until, acked).await;
        };
        let written = tokio::task::spawn_blocking(move || write_chunks(&files, s, &due))
            .await
            .map_err(io::Error::other)??;
        let Some(range) = written else {
            return Ok(());
        };
        let mut st = self.lock();
        let State { jobs, held, .. } = &mut *st;
        if let Some(e) = jobs.get_mut(job_id) {
            let forgotten = e.streams[s].saved(range.0, range.1, true);
            *held = (*held).saturating_sub(forgotten);
        }
        Ok(())
    }

    /// Records the attempt's result: writes the pending dropped-bytes
    /// markers, writes what memory alone held of the log and then the
    /// result into the spool, and offers it; it is sent after the last log
    /// byte. With a session up, nothing is fsynced unless the result is
    /// still unacknowledged [`super::SYNC_AFTER`] later (see
    /// `late_sync.rs`); without one, the log and the result are made
    /// durable before the result is offered.
    pub async fn finish(&self, job_id: &str, mut result: pb::JobResult) {
        let Some(writer) = self.lock().jobs.get(job_id).map(|e| e.writer.clone()) else {
            return;
        };
        let _writing = writer.lock().await;
        for s in 0..2 {
            let due = self
                .lock()
                .jobs
                .get(job_id)
                .is_some_and(|e| e.streams[s].dropped > 0);
            if due {
                self.write(job_id, s, Bytes::new(), now_ms(), true).await;
            }
        }
        let owed = {
            let st = self.lock();
            let attached = st.attached;
            st.jobs.get(job_id).map(|e| {
                let st = &e.streams;
                (
                    attached,
                    e.files.clone(),
                    [st[0].base, st[1].base],
                    [st[0].totals(), st[1].totals()],
                    [st[0].acked, st[1].acked],
                    [st[0].dropped, st[1].dropped],
                    [st[0].unsaved(), st[1].unsaved()],
                )
            })
        };
        let Some((attached, files, base, totals, acked, lost, unsaved)) = owed else {
            return;
        };
        for (stream, n) in LogStream::BOTH.iter().zip(lost) {
            if n > 0 {
                let note = format!(
                    "hodei: {n} bytes of {} were lost (spool not writable)",
                    stream.as_str()
                );
                result.message = if result.message.is_empty() {
                    note
                } else {
                    format!("{}; {note}", result.message)
                };
            }
        }
        let record = ResultRecord {
            outcome: result.outcome,
            exit_code: result.exit_code,
            signal: result.signal,
            message: result.message.clone(),
            stdout: totals[0],
            stderr: totals[1],
        };
        let result = wire_result(job_id, result.attempt, base, &record);
        if let Some(files) = files {
            // The bytes the orchestrator has not acknowledged go to the
            // spool (what memory alone held), then the result; only those
            // streams' files need an fsync to make it durable.
            let unacked = [totals[0].bytes > acked[0], totals[1].bytes > acked[1]];
            let entry = files.clone();
            // A result recorded while attached with little output to write
            // is a few system calls: batched by the janitor with other
            // jobs' waited-for work. Much output, or the fsyncs of a result
            // made durable at once, would hold those up: a blocking thread
            // of its own.
            let bytes: usize = unsaved.iter().flatten().map(|(_, d)| d.len()).sum();
            let quick = attached && bytes <= QUICK_RECORD_BYTES;
            let record = move || {
                let written = [
                    write_chunks(&entry, 0, &unsaved[0])?,
                    write_chunks(&entry, 1, &unsaved[1])?,
                ];
                let change = |m: &mut crate::spool::Meta| {
                    m.acked = acked;
                    m.result = Some(record);
                };
                if attached {
                    entry.record_result(change)?;
                } else {
                    entry.make_result_durable(unacked, change)?;
                }
                Ok::<_, io::Error>(written)
            };
            let recorded = if quick {
                self.janitor
                    .run(record)
                    .await
                    .unwrap_or_else(|| Err(io::Error::other("recording the result panicked")))
            } else {
                tokio::task::spawn_blocking(record)
                    .await
                    .map_err(io::Error::other)
                    .and_then(|r| r)
            };
            match recorded {
                Err(e) => {
                    error!(job = job_id, error = %e, "cannot record the result in the spool; sending it anyway");
                }
                Ok(written) => {
                    if attached {
                        self.syncs.later(job_id, &files, unacked);
                        // A session that ended meanwhile flushed what was
                        // waiting before this result joined it.
                        if !self.lock().attached {
                            self.syncs.all_now();
                        }
                    } else {
                        self.syncs.count_synced();
                    }
                    if let Some(e) = self.lock().jobs.get_mut(job_id) {
                        for (sb, range) in e.streams.iter_mut().zip(written) {
                            if let Some((from, to)) = range {
                                sb.saved(from, to, false);
                            }
                        }
                    }
                }
            }
        }
        if let Some(e) = self.lock().jobs.get_mut(job_id) {
            e.result = Some(result);
        }
        self.ready.notify_one();
    }
}

/// Most unacknowledged output a result is recorded with by the janitor (see
/// `finish`); more goes to a blocking thread of its own.
const QUICK_RECORD_BYTES: usize = 64 * 1024;

/// A stream over its memory limit waits for an acknowledgement to make
/// room while its attempt's last one came less than this long ago; past it
/// (an orchestrator that stopped acknowledging this attempt), or with no
/// session, it writes to the spool at once.
const ACK_STALL: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes held chunks (contiguous, in order) of stream `s` at their
/// offsets; the stream range they cover, `None` when there were none.
/// Blocking.
fn write_chunks(
    files: &AttemptFiles,
    s: usize,
    chunks: &[(u64, Bytes)],
) -> io::Result<Option<(u64, u64)>> {
    for (offset, data) in chunks {
        files.write_at(s, *offset, data)?;
    }
    let (Some((from, _)), Some((last, data))) = (chunks.first(), chunks.last()) else {
        return Ok(None);
    };
    Ok(Some((*from, last + data.len() as u64)))
}
