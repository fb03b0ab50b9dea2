//! What the agent owes the orchestrator, per job attempt: the `Started`
//! report, every log byte not yet acknowledged, and the result until it is
//! acknowledged. Jobs keep running and producing output while the session is
//! down; after a reconnect everything unacknowledged is sent again from the
//! last acknowledged offset (the orchestrator drops what it already has).
//!
//! Output is held in memory and sent from there until the orchestrator
//! acknowledges it (16 MiB per stream, 64 MiB in all). A stream at its
//! limit waits for an acknowledgement to make room, holding the job back,
//! while a session is up and acknowledged some of the attempt's output in
//! the last second;
//! otherwise (no session, or a stalled one) its oldest bytes go to the
//! on-disk [spool](crate::spool). When an attempt ends, everything not
//! acknowledged yet goes to the spool before its result is recorded. So
//! memory stays bounded however much a job prints or however long the
//! orchestrator is away, a job is held back only by an orchestrator that is
//! keeping up more slowly, and output acknowledged quickly never touches
//! the disk. `stream.rs` has the details.
//!
//! # A full spool
//!
//! The spool holds at most `max_bytes` unacknowledged bytes, all jobs
//! together. A chunk that does not fit is dropped (a full spool never holds
//! the job back) and counted; before the next byte written to that stream, as soon
//! as it fits again, or when the job ends, the stream gets a line
//! `[hodei: N bytes of output dropped: the agent's log spool was full]`, so
//! the loss is visible in the log. A write that fails (a full disk, an I/O
//! error) is handled the same way.
//!
//! # Checksums
//!
//! Each stream keeps a running crc32c of every byte it accepted, markers
//! included; the result carries the totals (`StreamSummary`) so that
//! the orchestrator can check what it stored. For an attempt whose streams
//! do not start at offset 0 no totals are sent (the agent has not seen the
//! bytes before its start offset).

use std::collections::HashMap;
use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use hwp_proto::pb;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::warn;

use crate::janitor::Janitor;
use crate::recover::{KillResult, SpoolLock, process_record};
use crate::spool::{AttemptFiles, Meta, Recycled, Recycler};

mod late_sync;
mod open;
mod send;
mod stream;
mod write;

use late_sync::LateSyncs;
pub use late_sync::SYNC_AFTER;
pub use send::MAX_MESSAGE_BYTES;
use send::wire_result;
use stream::StreamState;
pub use stream::dropped_marker;

#[derive(Debug)]
struct Entry {
    attempt: u32,
    /// The job's leader process, once started.
    pid: Option<u32>,
    started_sent: bool,
    streams: [StreamState; 2],
    /// Set once the result is recorded in the spool (see `late_sync.rs`
    /// for when it is fsynced).
    result: Option<pb::JobResult>,
    result_sent: bool,
    /// The attempt holds one of the agent's slots: it can no longer be
    /// taken back (see [`Outbox::revoke`]).
    slotted: bool,
    cancel: watch::Sender<bool>,
    files: Option<Arc<AttemptFiles>>,
    /// Serializes writes to the attempt's spool files.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// When the attempt's output was last acknowledged (or its session
    /// started): a stream at its memory limit waits for acknowledgements
    /// only while they keep coming.
    last_ack: Instant,
}

impl Entry {
    fn new(attempt: u32, offsets: [u64; 2], cancel: watch::Sender<bool>) -> Entry {
        Entry {
            attempt,
            pid: None,
            started_sent: false,
            streams: [StreamState::new(offsets[0]), StreamState::new(offsets[1])],
            result: None,
            result_sent: false,
            slotted: false,
            cancel,
            files: None,
            writer: Arc::default(),
            last_ack: Instant::now(),
        }
    }

    fn unacked(&self) -> u64 {
        self.streams
            .iter()
            .map(|s| s.end.saturating_sub(s.acked))
            .sum()
    }
}

#[derive(Debug, Default)]
struct State {
    jobs: HashMap<String, Entry>,
    /// Unacknowledged bytes (in memory or in the spool), all jobs.
    unacked: u64,
    /// Unacknowledged bytes held in memory, all jobs.
    held: usize,
    /// Whether a session is up (acknowledgements can come).
    attached: bool,
}

/// What the spool held when the agent started; see [`crate::recover`].
#[derive(Debug, Default)]
pub struct RecoverySummary {
    /// Finished attempts offered again: (job id, attempt).
    pub resumed: Vec<(String, u32)>,
    /// Attempts that were running when the previous agent died; dropped.
    pub abandoned: Vec<(String, u32, KillResult)>,
    /// Unusable entries that were deleted.
    pub discarded: usize,
}

/// The agent's jobs and what it owes the orchestrator for each.
#[derive(Debug)]
pub struct Outbox {
    state: Mutex<State>,
    /// Wakes the sender when there is something to send.
    pub ready: Notify,
    /// Wakes writers waiting for room in memory when an ack frees some.
    acked: Notify,
    spool: PathBuf,
    /// Acknowledged attempts' directories, emptied for the next attempts.
    recycler: Arc<Recycler>,
    /// Retires acknowledged attempts' entries (and, for the runner, job
    /// directories) in the background, in batches.
    janitor: Arc<Janitor>,
    /// Results recorded without fsync, made durable if not acknowledged
    /// soon.
    syncs: Arc<LateSyncs>,
    max_bytes: u64,
    _lock: SpoolLock,
}

/// What creating an attempt's spool entry takes: made by
/// [`Outbox::spool_plan`], carried out on a blocking thread with
/// [`SpoolPlan::create`] (together with other file-system work of the job's
/// start, in one hand-off), and the result given to [`Outbox::install_spool`].
#[derive(Debug)]
pub struct SpoolPlan {
    root: PathBuf,
    meta: Meta,
    recycled: Option<Recycled>,
}

impl SpoolPlan {
    /// Creates the attempt's directory (blocking file-system work).
    pub fn create(self) -> io::Result<AttemptFiles> {
        AttemptFiles::create_from(&self.root, self.meta, self.recycled)
    }
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts tracking an attempt; returns its cancel receiver, or `None`
    /// when the agent already tracks that job. Call [`Outbox::create_spool`]
    /// before writing output.
    pub fn add(
        &self,
        job_id: &str,
        attempt: u32,
        offsets: [u64; 2],
    ) -> Option<watch::Receiver<bool>> {
        let mut st = self.lock();
        if st.jobs.contains_key(job_id) {
            return None;
        }
        let (tx, rx) = watch::channel(false);
        st.jobs
            .insert(job_id.to_string(), Entry::new(attempt, offsets, tx));
        Some(rx)
    }

    /// Creates the attempt's directory in the spool.
    pub async fn create_spool(&self, job_id: &str) -> io::Result<()> {
        let plan = self.spool_plan(job_id)?;
        let files = tokio::task::spawn_blocking(move || plan.create())
            .await
            .map_err(io::Error::other)??;
        self.install_spool(job_id, files);
        Ok(())
    }

    /// What creating the attempt's spool entry takes (a recycled entry, if
    /// the pool has one); see [`SpoolPlan`].
    pub fn spool_plan(&self, job_id: &str) -> io::Result<SpoolPlan> {
        let meta = {
            let st = self.lock();
            let e = st
                .jobs
                .get(job_id)
                .ok_or_else(|| io::Error::other("unknown job"))?;
            Meta::new(job_id, e.attempt, [e.streams[0].base, e.streams[1].base])
        };
        Ok(SpoolPlan {
            root: self.spool.clone(),
            meta,
            recycled: self.recycler.take(),
        })
    }

    /// Gives the attempt the spool entry [`SpoolPlan::create`] made.
    pub fn install_spool(&self, job_id: &str, files: AttemptFiles) {
        if let Some(e) = self.lock().jobs.get_mut(job_id) {
            e.files = Some(Arc::new(files));
        }
    }

    /// The background clean-up shared by the agent's jobs.
    pub fn janitor(&self) -> &Arc<Janitor> {
        &self.janitor
    }

    /// Waits until every deferred clean-up (retired spool entries, released
    /// job directories) has been done.
    pub async fn settle(&self) {
        self.janitor.settle().await;
    }

    /// The job's process started: `Started` (with its pid) is due.
    pub fn set_pid(&self, job_id: &str, pid: u32) {
        if let Some(e) = self.lock().jobs.get_mut(job_id) {
            e.pid = Some(pid);
        }
        self.ready.notify_one();
    }

    /// Records the job's process (pid, group, start time) in the spool, so
    /// that a restarted agent can kill what is left of it. Not fsynced: it
    /// only has to outlive the agent process. Done in the background, with
    /// other file-system work that nothing waits for (one hand-off for many
    /// jobs; [`Outbox::settle`] waits for it). A process that ended first is
    /// not recorded (see [`AttemptFiles::record_process`]).
    pub fn record_process_later(&self, job_id: &str, pid: u32) {
        let Some(files) = self.lock().jobs.get(job_id).and_then(|e| e.files.clone()) else {
            return;
        };
        let job = job_id.to_string();
        self.janitor.defer(move || {
            // A short job has often ended by now: no need to read /proc.
            if files.has_result() {
                return;
            }
            let written = match process_record(pid) {
                Some(rec) => files.record_process(rec),
                None => Ok(()), // Already gone: nothing to kill later.
            };
            if let Err(e) = written {
                warn!(job, error = %e, "cannot record the job's process in the spool");
            }
        });
    }

    /// Number of jobs whose process has not finished.
    pub fn running(&self) -> usize {
        self.lock()
            .jobs
            .values()
            .filter(|e| e.result.is_none())
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().jobs.is_empty()
    }

    /// Unacknowledged bytes in the spool, all jobs.
    pub fn unacked_bytes(&self) -> u64 {
        self.lock().unacked
    }

    /// The attempts the agent holds, for `Hello` and heartbeats.
    pub fn attempts(&self) -> Vec<pb::RunningJob> {
        self.lock()
            .jobs
            .iter()
            .map(|(id, e)| pb::RunningJob {
                job_id: id.clone(),
                attempt: e.attempt,
            })
            .collect()
    }

    /// Asks the attempt's process to stop; false if the agent does not run it.
    pub fn cancel(&self, job_id: &str, attempt: u32) -> bool {
        match self.lock().jobs.get(job_id) {
            Some(e) if e.attempt == attempt && e.result.is_none() => {
                let _ = e.cancel.send(true);
                true
            }
            _ => false,
        }
    }

    /// Records that the attempt got a slot and will start; `false` if it
    /// was taken back (revoked) meanwhile, and must not start.
    pub fn take_slot(&self, job_id: &str, attempt: u32) -> bool {
        match self.lock().jobs.get_mut(job_id) {
            Some(e) if e.attempt == attempt => {
                e.slotted = true;
                true
            }
            _ => false,
        }
    }

    /// Takes back an attempt that is still waiting for a slot: forgets it
    /// (it has no output, spool entry or result yet) and stops its task.
    /// `false` if it holds a slot already, or is not tracked.
    pub fn revoke(&self, job_id: &str, attempt: u32) -> bool {
        let mut st = self.lock();
        match st.jobs.get(job_id) {
            Some(e) if e.attempt == attempt && !e.slotted && e.result.is_none() => {
                if let Some(e) = st.jobs.remove(job_id) {
                    let _ = e.cancel.send(true);
                }
                true
            }
            _ => false,
        }
    }

    /// Whether the agent tracks this attempt (it was not taken back).
    pub fn tracks(&self, job_id: &str, attempt: u32) -> bool {
        self.lock()
            .jobs
            .get(job_id)
            .is_some_and(|e| e.attempt == attempt)
    }

    /// Cancels every job (agent shutting down hard).
    pub fn cancel_all(&self) {
        for e in self.lock().jobs.values() {
            let _ = e.cancel.send(true);
        }
    }

    /// Applies a `LogAck`: frees what the orchestrator stored (punching it
    /// out of the spool files). With `resend`, the orchestrator is missing
    /// the bytes from the given offsets on: they are sent again, and then
    /// the result if it had been sent.
    pub async fn ack_logs(&self, ack: &pb::LogAck) {
        let (files, punches) = {
            let mut st = self.lock();
            let State {
                jobs,
                unacked,
                held,
                ..
            } = &mut *st;
            let Some(e) = jobs
                .get_mut(&ack.job_id)
                .filter(|e| e.attempt == ack.attempt)
            else {
                return;
            };
            let mut punches = Vec::new();
            for (s, offset) in [ack.stdout_offset, ack.stderr_offset]
                .into_iter()
                .enumerate()
            {
                let sb = &mut e.streams[s];
                if !ack.resend || offset >= sb.acked {
                    let (freed, forgotten) = sb.ack(offset);
                    *unacked = (*unacked).saturating_sub(freed);
                    *held = (*held).saturating_sub(forgotten);
                    if freed > 0 {
                        e.last_ack = Instant::now();
                    }
                } else if offset >= sb.held_from() {
                    // Still in memory or the spool: take the acknowledgement back.
                    *unacked += sb.acked - offset;
                    sb.acked = offset;
                } else {
                    warn!(job = %ack.job_id, stream = s, offset, acked = sb.acked,
                        "the orchestrator asks again for bytes already freed; resending what is left");
                }
                if ack.resend {
                    sb.sent = sb.acked;
                }
                if let Some(range) = sb.punch_range() {
                    punches.push((s, range));
                }
            }
            if ack.resend {
                e.result_sent = false;
            }
            (e.files.clone(), punches)
        };
        self.ready.notify_one();
        self.acked.notify_waiters();
        let Some(files) = files.filter(|_| !punches.is_empty()) else {
            return;
        };
        let job = ack.job_id.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for (s, (from, to)) in punches {
                if let Err(e) = files.punch(s, from, to) {
                    warn!(job, error = %e, "cannot free acknowledged log data");
                }
            }
        })
        .await;
    }

    /// The result is recorded: forget the job, and retire its spool entry
    /// in the background (see [`Outbox::settle`]). Returns whether it was
    /// known (with a result).
    pub fn ack_result(&self, ack: &pb::ResultAck) -> bool {
        let removed = {
            let mut st = self.lock();
            let known = st
                .jobs
                .get(&ack.job_id)
                .is_some_and(|e| e.attempt == ack.attempt && e.result.is_some());
            let removed = if known {
                st.jobs.remove(&ack.job_id)
            } else {
                None
            };
            if let Some(e) = &removed {
                st.unacked = st.unacked.saturating_sub(e.unacked());
                let held: usize = e.streams.iter().map(StreamState::held_bytes).sum();
                st.held = st.held.saturating_sub(held);
            }
            removed
        };
        let Some(entry) = removed else { return false };
        if let Some(files) = entry.files {
            let recycler = self.recycler.clone();
            let job = ack.job_id.clone();
            self.janitor.defer(move || {
                let removed = match Arc::try_unwrap(files) {
                    Ok(files) => recycler.retire(files),
                    // Still being read for sending (its last bytes): not reused.
                    Err(files) => files.remove(),
                };
                if let Err(e) = removed {
                    warn!(job, error = %e, "cannot delete the job's spool entry");
                }
            });
        }
        true
    }

    /// The agent is leaving: finishes deferred clean-up, then deletes the
    /// pool of emptied spool entries.
    pub async fn close(&self) {
        self.syncs.all_now();
        self.janitor.settle().await;
        let recycler = self.recycler.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || recycler.clear()).await {
            warn!(error = %e, "cannot delete the spool's recycled entries");
        }
    }

    /// The session ended: output that does not fit in memory goes to the
    /// spool at once (no acknowledgement will make room), and so do
    /// results waiting for an acknowledgement (made durable now).
    pub fn detach(&self) {
        self.lock().attached = false;
        self.acked.notify_waiters();
        self.syncs.all_now();
    }

    /// Results made durable so far (see `late_sync.rs`).
    pub fn results_synced(&self) -> u64 {
        self.syncs.synced()
    }

    /// A new session starts: everything unacknowledged is due again.
    pub fn rewind(&self) {
        let mut st = self.lock();
        st.attached = true;
        let now = Instant::now();
        for e in st.jobs.values_mut() {
            e.last_ack = now;
            e.started_sent = false;
            e.result_sent = false;
            for sb in &mut e.streams {
                sb.sent = sb.acked;
            }
        }
        self.ready.notify_one();
    }
}
