//! Results made durable only when they are not acknowledged soon.
//!
//! While a session is up, an attempt's result is written into its spool
//! entry without fsync and offered at once: the orchestrator usually
//! acknowledges it within a millisecond or two, and an acknowledged entry
//! is retired, so the fsyncs (the log files holding unacknowledged bytes,
//! `meta.json`, directories) would be spent on nothing. The result already
//! outlives the agent *process* (the page cache holds it). Only a result
//! still unacknowledged [`SYNC_AFTER`] later is made durable, so that it
//! also outlives the *machine* while the orchestrator is slow or away; when
//! the session ends, every result still waiting is made durable at once,
//! and a restarted agent makes the results it finds in the spool durable
//! before it offers them again ([`super::Outbox::open`]).
//!
//! What the machine's loss can do within that window: the result and its
//! log bytes may reach the disk in any order, or not at all. A restarted
//! agent then finds the entry without a result (the attempt is abandoned:
//! the orchestrator declares it lost or runs it again, as when the machine
//! dies while the job runs), or with a result whose log files are shorter
//! than its totals (discarded: the same), or whole (offered again).
//! Nothing here was acknowledged to anyone: the orchestrator acknowledges a
//! result, and tells users about it, only once its own copy is on disk.
//!
//! The pending list holds weak references: an entry acknowledged and
//! retired meanwhile (its `AttemptFiles` consumed by the recycler) is simply
//! skipped, and a pending sync never keeps an entry from being recycled.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::error;

use crate::janitor::Janitor;
use crate::spool::AttemptFiles;

/// How long a result may wait for its acknowledgement before it is made
/// durable.
pub const SYNC_AFTER: Duration = Duration::from_millis(100);

struct Pending {
    due: Instant,
    job: String,
    files: Weak<AttemptFiles>,
    /// The log files that hold bytes the orchestrator had not acknowledged.
    unacked: [bool; 2],
}

#[derive(Default)]
struct Queue {
    /// In the order of `due` (the delay is constant).
    pending: VecDeque<Pending>,
    /// A timer task is waiting for the first one.
    timer: bool,
}

/// Results recorded without fsync, waiting for their acknowledgement.
pub(super) struct LateSyncs {
    queue: Mutex<Queue>,
    /// Does the fsyncs, on its blocking thread.
    janitor: Arc<Janitor>,
    /// Results made durable (at once or late), for tests and diagnostics.
    synced: Arc<AtomicU64>,
}

impl std::fmt::Debug for LateSyncs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LateSyncs")
            .field("pending", &self.lock().pending.len())
            .field("synced", &self.synced())
            .finish()
    }
}

impl LateSyncs {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Plain data: a panic elsewhere leaves it consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// No result waiting; `synced` results made durable when the spool
    /// was opened.
    pub fn new(janitor: Arc<Janitor>, synced: u64) -> LateSyncs {
        LateSyncs {
            queue: Mutex::default(),
            janitor,
            synced: Arc::new(AtomicU64::new(synced)),
        }
    }

    /// Results made durable so far.
    pub fn synced(&self) -> u64 {
        self.synced.load(Ordering::Relaxed)
    }

    /// Counts a result made durable before it was offered.
    pub fn count_synced(&self) {
        self.synced.fetch_add(1, Ordering::Relaxed);
    }

    /// Makes `files`' result durable after [`SYNC_AFTER`] unless it was
    /// acknowledged (and retired) by then. Call from within a runtime.
    pub fn later(self: &Arc<Self>, job: &str, files: &Arc<AttemptFiles>, unacked: [bool; 2]) {
        let start = {
            let mut q = self.lock();
            q.pending.push_back(Pending {
                due: Instant::now() + SYNC_AFTER,
                job: job.to_string(),
                files: Arc::downgrade(files),
                unacked,
            });
            !std::mem::replace(&mut q.timer, true)
        };
        if start {
            tokio::spawn(self.clone().wait());
        }
    }

    /// Makes every waiting result durable now (the session ended, or the
    /// agent is leaving): hands them to the janitor.
    pub fn all_now(&self) {
        let all: Vec<Pending> = self.lock().pending.drain(..).collect();
        self.sync(all);
    }

    /// The timer: sleeps until the first pending result is due, hands what
    /// is due to the janitor, and ends when nothing is pending.
    async fn wait(self: Arc<Self>) {
        loop {
            let first = {
                let mut q = self.lock();
                match q.pending.front() {
                    Some(p) => p.due,
                    None => {
                        q.timer = false;
                        return;
                    }
                }
            };
            tokio::time::sleep_until(first).await;
            let now = Instant::now();
            let due: Vec<Pending> = {
                let mut q = self.lock();
                let n = q.pending.iter().take_while(|p| p.due <= now).count();
                q.pending.drain(..n).collect()
            };
            self.sync(due);
        }
    }

    fn sync(&self, due: Vec<Pending>) {
        if due.is_empty() {
            return;
        }
        let synced = self.synced.clone();
        // On the janitor's thread, after the retirements queued before:
        // an entry acknowledged by then is gone and skipped.
        self.janitor.defer(move || {
            for p in due {
                let Some(files) = p.files.upgrade() else {
                    continue;
                };
                match files.sync_result(p.unacked) {
                    Ok(true) => {
                        synced.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) => {
                        error!(job = p.job, error = %e, "cannot make the result durable");
                    }
                }
            }
        });
    }
}
