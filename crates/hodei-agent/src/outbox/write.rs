//! Writing output into the spool, and the result once the job ended.

use bytes::{Bytes, BytesMut};
use hodei_core::LogStream;
use hwp_proto::pb;
use tracing::{error, warn};

use super::{Outbox, State, dropped_marker, wire_result};
use crate::executor::{OutputChunk, now_ms};
use crate::spool::ResultRecord;

impl Outbox {
    /// Appends output to the spool (or drops it if the spool is full).
    pub async fn push(&self, job_id: &str, chunk: OutputChunk) {
        let Some(writer) = self.lock().jobs.get(job_id).map(|e| e.writer.clone()) else {
            return;
        };
        let _writing = writer.lock().await;
        let s = chunk.stream.index();
        self.write(job_id, s, chunk.data, chunk.timestamp_ms, false)
            .await;
    }

    /// Writes `data` into stream `s`, after the dropped-bytes marker if one
    /// is due. Unless `force`, drops it all when it does not fit.
    async fn write(&self, job_id: &str, s: usize, data: Bytes, ts: i64, force: bool) {
        let (files, offset, buf, marked) = {
            let mut st = self.lock();
            let State { jobs, unacked } = &mut *st;
            let Some(e) = jobs.get_mut(job_id) else {
                return;
            };
            let sb = &mut e.streams[s];
            let Some(files) = e.files.clone() else {
                sb.dropped += data.len() as u64;
                return;
            };
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
            (files, sb.end, buf, marked)
        };
        let len = buf.len() as u64;
        let written =
            tokio::task::spawn_blocking(move || files.write_at(s, offset, &buf).map(|()| buf))
                .await;
        let mut st = self.lock();
        let State { jobs, unacked } = &mut *st;
        let Some(e) = jobs.get_mut(job_id) else {
            *unacked = (*unacked).saturating_sub(len);
            return;
        };
        let sb = &mut e.streams[s];
        match written {
            Ok(Ok(buf)) => {
                sb.dropped = sb.dropped.saturating_sub(marked);
                sb.wrote(&buf, ts);
                sb.keep_recent(offset, buf);
                drop(st);
                self.ready.notify_one();
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                *unacked = (*unacked).saturating_sub(len);
                sb.dropped += data.len() as u64;
                warn!(job = job_id, error = %why, bytes = data.len(), "cannot write to the spool; output dropped");
            }
        }
    }

    /// Records the attempt's result: writes the pending dropped-bytes
    /// markers, fsyncs the logs, writes the result into the spool and only
    /// then offers it; it is sent after the last log byte.
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
        let Some((files, base, totals, acked, lost)) = self.lock().jobs.get(job_id).map(|e| {
            let st = &e.streams;
            (
                e.files.clone(),
                [st[0].base, st[1].base],
                [st[0].totals(), st[1].totals()],
                [st[0].acked, st[1].acked],
                [st[0].dropped, st[1].dropped],
            )
        }) else {
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
            // Only the streams with bytes the orchestrator has not
            // acknowledged need to reach the disk before the result.
            let unacked = [totals[0].bytes > acked[0], totals[1].bytes > acked[1]];
            let durable = tokio::task::spawn_blocking(move || {
                files.make_result_durable(unacked, |m| {
                    m.acked = acked;
                    m.result = Some(record);
                })
            })
            .await;
            let failed = match durable {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failed {
                error!(job = job_id, error = %e, "cannot make the result durable; sending it anyway");
            }
        }
        if let Some(e) = self.lock().jobs.get_mut(job_id) {
            e.result = Some(result);
        }
        self.ready.notify_one();
    }
}
