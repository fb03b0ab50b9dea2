//! The agent's file-system work, done in batches on one blocking thread:
//! clean-up and recording a started job's process in the spool, which
//! nothing waits for ([`Janitor::defer`]), and the work a job's task waits
//! for, making its spool entry and working directory and recording its
//! result ([`Janitor::run`]), which goes first.
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
//! each waking an idle pool thread and then the task. Queued here, ahead of
//! the chores, it joins a drain that is running anyway on a busy agent:
//! half the agent's context switches and 15 % of its CPU per job went with
//! it (see `docs/performance.md`, fifteenth round). A chore is a few
//! system calls on the page cache, so such work waits at most one chore.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

type Chore = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    /// Work something waits for ([`Janitor::run`]): runs before `chores`.
    urgent: Vec<Chore>,
    chores: std::collections::VecDeque<Chore>,
    /// A blocking task is draining the queue.
    draining: bool,
}

/// Runs deferred clean-up in batches; see the module docs.
#[derive(Default)]
pub struct Janitor {
    queue: Mutex<Queue>,
    /// Notified whenever a drain ends with the queue empty.
    idle: Notify,
}

impl std::fmt::Debug for Janitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let q = self.lock();
        f.debug_struct("Janitor")
            .field("queued", &q.chores.len())
            .field("draining", &q.draining)
            .finish()
    }
}

impl Janitor {
    pub fn new() -> Arc<Janitor> {
        Arc::new(Janitor::default())
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        // A chore never runs under the lock: the data stays consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `chore` (blocking file-system work) to run soon on a blocking
    /// thread. Outside a runtime it runs at once, on this thread.
    pub fn defer(self: &Arc<Self>, chore: impl FnOnce() + Send + 'static) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            chore();
            return;
        };
        let start = {
            let mut q = self.lock();
            q.chores.push_back(Box::new(chore));
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let janitor = self.clone();
            runtime.spawn_blocking(move || janitor.drain());
        }
    }

    /// Runs `work` (blocking file-system work a task waits for) on the
    /// janitor's thread, ahead of the chores queued, and returns its result:
    /// `None` if it panicked. Outside a runtime it runs at once, on this
    /// thread.
    pub fn run<T, F>(self: &Arc<Self>, work: F) -> impl Future<Output = Option<T>> + use<T, F>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Chore = Box::new(move || {
            let _ = tx.send(work());
        });
        match tokio::runtime::Handle::try_current() {
            Err(_) => run_one(job),
            Ok(runtime) => {
                let start = {
                    let mut q = self.lock();
                    q.urgent.push(job);
                    !std::mem::replace(&mut q.draining, true)
                };
                if start {
                    let janitor = self.clone();
                    runtime.spawn_blocking(move || janitor.drain());
                }
            }
        }
        async move { rx.await.ok() }
    }

    /// Runs queued work until the queue is empty. A chore that panics is
    /// logged and the drain goes on (a waiting task gets `None`).
    fn drain(&self) {
        // Ends the drain even if it unwinds, so that `settle` returns and
        // the next chore starts a new drain.
        struct Done<'a> {
            janitor: &'a Janitor,
            emptied: bool,
        }
        impl Drop for Done<'_> {
            fn drop(&mut self) {
                if !self.emptied {
                    self.janitor.lock().draining = false;
                }
                self.janitor.idle.notify_waiters();
            }
        }
        let mut done = Done {
            janitor: self,
            emptied: false,
        };
        loop {
            // Work waited for first, then one chore at a time, so that work
            // queued meanwhile does not wait behind a long backlog.
            let next = {
                let mut q = self.lock();
                if !q.urgent.is_empty() {
                    Ok(std::mem::take(&mut q.urgent))
                } else if let Some(chore) = q.chores.pop_front() {
                    Err(chore)
                } else {
                    // Cleared under the lock: a chore queued after this
                    // starts a new drain.
                    q.draining = false;
                    done.emptied = true;
                    break;
                }
            };
            match next {
                Ok(urgent) => urgent.into_iter().for_each(run_one),
                Err(chore) => run_one(chore),
            }
        }
    }

    /// Waits until every chore queued so far has run.
    pub async fn settle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            {
                let q = self.lock();
                if q.chores.is_empty() && q.urgent.is_empty() && !q.draining {
                    return;
                }
            }
            idle.await;
        }
    }
}

/// Runs a chore; a panic stops that chore only.
fn run_one(chore: Chore) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(chore)).is_err() {
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
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        janitor.defer(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        janitor.settle().await;
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_waited_for_runs_before_the_chores_queued_and_returns_its_result() {
        let janitor = Janitor::new();
        // Holds the drain in its first chore until the rest is queued.
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
        let order = Arc::new(Mutex::new(Vec::new()));
        let o = order.clone();
        janitor.defer(move || {
            let _ = started_tx.send(());
            let _ = hold_rx.recv();
            o.lock().expect("order").push("first chore");
        });
        started_rx.await.expect("the first chore started");
        for _ in 0..3 {
            let o = order.clone();
            janitor.defer(move || o.lock().expect("order").push("chore"));
        }
        let o = order.clone();
        let waited = janitor.run(move || {
            o.lock().expect("order").push("work");
            42
        });
        hold_tx.send(()).expect("release the first chore");
        assert_eq!(waited.await, Some(42));
        janitor.settle().await;
        assert_eq!(
            *order.lock().expect("order"),
            ["first chore", "work", "chore", "chore", "chore"]
        );
    }

    #[tokio::test]
    async fn work_that_panics_returns_none_and_the_rest_still_runs() {
        let janitor = Janitor::new();
        let first = janitor.run(|| -> u32 { panic!("the work failed") });
        let second = janitor.run(|| 7);
        assert_eq!(first.await, None);
        assert_eq!(second.await, Some(7));
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
