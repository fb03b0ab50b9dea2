//! File-system work that nothing waits for, done in batches on one blocking
//! thread: clean-up, and recording a started job's process in the spool.
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

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

type Chore = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Queue {
    chores: Vec<Chore>,
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
            q.chores.push(Box::new(chore));
            !std::mem::replace(&mut q.draining, true)
        };
        if start {
            let janitor = self.clone();
            runtime.spawn_blocking(move || janitor.drain());
        }
    }

    /// Runs queued chores until the queue is empty.
    fn drain(&self) {
        // Ends the drain even if a chore panics (the rest of its batch is
        // dropped), so that `settle` returns and the next chore starts a
        // new drain.
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
            let chores = {
                let mut q = self.lock();
                if q.chores.is_empty() {
                    // Cleared under the lock: a chore queued after this
                    // starts a new drain.
                    q.draining = false;
                    done.emptied = true;
                    break;
                }
                std::mem::take(&mut q.chores)
            };
            for chore in chores {
                chore();
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
                if q.chores.is_empty() && !q.draining {
                    return;
                }
            }
            idle.await;
        }
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

    #[test]
    fn outside_a_runtime_a_chore_runs_at_once() {
        let janitor = Janitor::new();
        let ran = Arc::new(AtomicUsize::new(0));
        let r = ran.clone();
        janitor.defer(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(ran.load(Ordering::SeqCst), 1);
    }
}
