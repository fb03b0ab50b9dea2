//! The agent's file-system work, done in batches on blocking threads:
//! clean-up and recording a started job's process in the spool, which
//! nothing waits for ([`Janitor::defer`]), and the work a job's task waits
//! for, making its spool entry and working directory and recording its
//! result ([`Janitor::run`]), in a lane of its own.
//!
//! When a job ends, its working directory is emptied into the recycling pool
//! or deleted; when its result is acknowledged, its spool entry is retired.
//! Nothing depends on either finishing soon, but each is file-system work
//! that must not run on a runtime thread. Handing each to a blocking thread
//! of its own costs two thread switches per chore, which on a busy agent
//! (a thousand short jobs a second) is a large part of its time.
//!
//! So chores queue here. The first chore of a burst starts one blocking task,
//! which runs every chore queued, then every chore queued meanwhile, until
//! the queue is empty: a busy agent pays one thread hand-off per burst, not
//! per chore. [`Janitor::settle`] waits until the queue is empty and no chore
//! is running (before the pools are deleted at shutdown, and in tests).
//!
//! Work a task waits for used to take a `spawn_blocking` each: two per job,
//! each waking an idle pool thread and then the task. It now queues the
//! same way in a second lane with a drain of its own, so that on a busy
//! agent it joins a drain that is running anyway. The lanes are apart so
//! that a job's start never waits behind a slow chore (deleting a large
//! directory a job left, a late fsync). That costs some of the gain: the
//! agent's context switches per job went from 13.2 to 9.5, where one lane
//! with waited-for work at its head made it 6.9 (see
//! `docs/performance.md`, fifteenth round).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

type Chore = Box<dyn FnOnce() + Send>;

/// Which queue a piece of work waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// Work a task waits for ([`Janitor::run`]).
    Waited,
    /// Clean-up nothing waits for ([`Janitor::defer`]).
    Chores,
}

/// One lane's queue, drained by at most one blocking task at a time.
#[derive(Default)]
struct Queue {
    work: VecDeque<Chore>,
    /// A blocking task is draining this queue.
    draining: bool,
}

#[derive(Default)]
struct Lanes {
    waited: Queue,
    chores: Queue,
}

impl Lanes {
    fn of(&mut self, lane: Lane) -> &mut Queue {
        match lane {
            Lane::Waited => &mut self.waited,
            Lane::Chores => &mut self.chores,
        }
    }
}

/// Runs the agent's file-system work in batches; see the module docs.
#[derive(Default)]
pub struct Janitor {
    lanes: Mutex<Lanes>,
    /// Notified whenever a drain ends with its queue empty.
    idle: Notify,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = self.lock();
        f.debug_struct("Janitor")
            .field("waited", &l.waited.work.len())
            .field("chores", &l.chores.work.len())
            .finish()
    }
}

impl Janitor {
    pub fn new() -> Arc<Janitor> {
        Arc::new(Janitor::default())
    }

    fn lock(&self) -> MutexGuard<'_, Lanes> {
        // Work never runs under the lock: the data stays consistent.
        self.lanes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `chore` (blocking file-system work) to run soon on a blocking
    /// thread. Outside a runtime it runs at once, on this thread.
    pub fn defer(self: &Arc<Self>, chore: impl FnOnce() + Send + 'static) {
        self.queue(Lane::Chores, Box::new(chore));
    }

    /// Runs `work` (blocking file-system work a task waits for) in its own
    /// lane, so that it never waits behind a clean-up chore, and returns its
    /// result: `None` if it panicked. Outside a runtime it runs at once, on
    /// this thread.
    pub fn run<T, F>(self: &Arc<Self>, work: F) -> impl Future<Output = Option<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.queue(
            Lane::Waited,
            Box::new(move || {
                let _ = tx.send(work());
            }),
        );
        async move { rx.await.ok() }
    }

    /// Queues `work` in `lane`, starting a drain of that lane unless one
    /// runs.
    fn queue(self: &Arc<Self>, lane: Lane, work: Chore) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            run_one(work);
            return;
        };
        let start = {
            let mut lanes = self.lock();
            let q = lanes.of(lane);
            q.work.push_back(work);
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let janitor = self.clone();
            runtime.spawn_blocking(move || janitor.drain(lane));
        }
    }

    /// Runs `lane`'s queued work until its queue is empty. Work that panics
    /// is logged and the drain goes on (a waiting task gets `None`).
    fn drain(&self, lane: Lane) {
        // Ends the drain even if it unwinds, so that `settle` returns and
        // the next piece of work starts a new drain.
        struct Done<'a> {
            janitor: &'a Janitor,
            lane: Lane,
            emptied: bool,
        }
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if !self.emptied {
                    self.janitor.lock().of(self.lane).draining = false;
                }
                self.janitor.idle.notify_waiters();
            }
        }
        let mut done = Done {
            janitor: self,
            lane,
            emptied: false,
        };
        loop {
            let batch = {
                let mut lanes = self.lock();
                let q = lanes.of(lane);
                if q.work.is_empty() {
                    // Cleared under the lock: work queued after this starts
                    // a new drain.
                    q.draining = false;
                    done.emptied = true;
                    break;
                }
                std::mem::take(&mut q.work)
            };
            batch.into_iter().for_each(run_one);
        }
    }

    /// Waits until every piece of work queued so far has run.
    pub async fn settle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let l = self.lock();
                let quiet = |q: &Queue| q.work.is_empty() && !q.draining;
                if quiet(&l.waited) && quiet(&l.chores) {
                    return;
                }
            }
            idle.await;
        }
    }
}

/// Runs one piece of work; a panic stops that piece only.
fn run_one(work: Chore) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err() {
        tracing::error!("a file-system chore of the agent panicked");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_chore_runs_once_and_settle_waits_for_them() {
        let janitor = Janitor::new();
        let ran = Arc::new(AtomicUsize::new(0));
        for _ in 0..1000 {
            let ran = ran.clone();
            janitor.defer(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            });
        }
        janitor.settle().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1000);
        // Idle: settles at once, and a new chore starts a new drain.
        janitor.settle().await;
        let again = ran.clone();
        janitor.defer(move || {
            again.fetch_add(1, Ordering::SeqCst);
        });
        janitor.settle().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1001);
    }

    #[tokio::test]
    async fn a_panicking_chore_does_not_stop_settle() {
        let janitor = Janitor::new();
        janitor.defer(|| panic!("a chore failed"));
        janitor.settle().await;
        a_chore_still_runs(&janitor).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_waited_for_does_not_wait_behind_a_chore_and_returns_its_result() {
        let janitor = Janitor::new();
        // A chore that holds its drain (a large directory being deleted)
        // until the work waited for has run.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        janitor.defer(move || {
            let _ = started_tx.send(());
            let _ = hold_rx.recv();
            o.lock().expect("order").push("slow chore");
        });
        started_rx.await.expect("the chore started");
        let o = order.clone();
        janitor.defer(move || o.lock().expect("order").push("next chore"));
        let o = order.clone();
        let waited = janitor.run(move || {
            o.lock().expect("order").push("work");
            42
        });
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waited).await;
        hold_tx.send(()).expect("release the chore");
        assert_eq!(
            got.expect("the work ran while the chore held its drain"),
            Some(42)
        );
        janitor.settle().await;
        assert_eq!(
            *order.lock().expect("order"),
            ["work", "slow chore", "next chore"]
        );
    }

    #[tokio::test]
    async fn work_that_panics_returns_none_and_the_rest_still_runs() {
        let janitor = Janitor::new();
        let first = janitor.run(|| -> u32 { panic!("the work failed") });
        let second = janitor.run(|| 7);
        assert_eq!(first.await, None);
        assert_eq!(second.await, Some(7));
        a_chore_still_runs(&janitor).await;
    }

    /// A chore deferred now runs, and `settle` waits for it.
    async fn a_chore_still_runs(janitor: &Arc<Janitor>) {
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        janitor.defer(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        janitor.settle().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn outside_a_runtime_a_chore_runs_at_once() {
        let janitor = Janitor::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        janitor.defer(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // Work waited for too, before anything awaits it.
        let r = ran.clone();
        let done = janitor.run(move || r.fetch_add(1, Ordering::SeqCst));
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(futures::FutureExt::now_or_never(done), Some(Some(1)));
    }
}
