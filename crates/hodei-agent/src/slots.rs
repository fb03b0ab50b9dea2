//! The agent's slots, taken in the order the assignments arrived.
//!
//! An agent with prefetch holds assignments beyond its slots; each job's
//! task waits for a slot before it starts. Tasks start in whatever order
//! the runtime polls them, so a plain semaphore would let a later
//! assignment overtake an earlier one. Each assignment therefore lines up
//! when it arrives ([`Slots::line_up`], called in arrival order) and asks
//! for a slot only once the one before it got its own (or gave up).

use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// One permit per slot, and the end of the line.
#[derive(Debug)]
pub struct Slots {
    permits: Arc<Semaphore>,
    /// Fires when the last assignment in line got its slot or gave up.
    last: Mutex<Option<oneshot::Receiver<()>>>,
}

/// An assignment's place in line; see [`Turn::slot`].
#[derive(Debug)]
pub struct Turn {
    after: Option<oneshot::Receiver<()>>,
    done: oneshot::Sender<()>,
    permits: Arc<Semaphore>,
}

impl Slots {
    pub fn new(slots: u32) -> Slots {
        Slots {
            permits: Arc::new(Semaphore::new(slots as usize)),
            last: Mutex::new(None),
        }
    }

    /// Takes the next place in line. Call in the order assignments arrive.
    pub fn line_up(&self) -> Turn {
        let (done, next) = oneshot::channel();
        let after = self
            .last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .replace(next);
        Turn {
            after,
            done,
            permits: self.permits.clone(),
        }
    }
}

impl Turn {
    /// Waits until every assignment lined up before this one got its slot
    /// (or was dropped, e.g. cancelled), then for a free slot; the slot is
    /// freed when the permit is dropped. `None` only if the slots were
    /// closed, which they never are.
    pub async fn slot(self) -> Option<OwnedSemaphorePermit> {
        if let Some(after) = self.after {
            // An error means the one before gave up its place: go on.
            let _ = after.await;
        }
        let permit = self.permits.acquire_owned().await.ok();
        let _ = self.done.send(());
        permit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_go_in_the_order_of_lining_up_whatever_the_polling_order() {
        let slots = Slots::new(1);
        let (t1, t2, t3) = (slots.line_up(), slots.line_up(), slots.line_up());
        let (tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        // Polled in reverse order.
        for (n, turn) in [(3, t3), (2, t2)] {
            let tx = tx.clone();
            tokio::spawn(async move {
                let permit = turn.slot().await;
                let _ = tx.send(n);
                drop(permit);
            });
        }
        tokio::task::yield_now().await;
        let first = t1.slot().await;
        assert!(order.try_recv().is_err(), "nobody overtook the first");
        drop(first);
        assert_eq!(order.recv().await, Some(2));
        assert_eq!(order.recv().await, Some(3));
    }

    #[tokio::test]
    async fn a_place_given_up_does_not_block_the_line() {
        let slots = Slots::new(1);
        let (t1, t2, t3) = (slots.line_up(), slots.line_up(), slots.line_up());
        let first = t1.slot().await;
        drop(t2); // cancelled before its turn
        drop(first);
        assert!(t3.slot().await.is_some());
    }
}
