//! Placement: which queued job goes to which worker. Pure functions over
//! plain data, so every rule is unit-tested without a runtime.
//!
//! Rules: higher priority first, then submission order (FIFO); a job goes only
//! to a worker whose labels include all it requires (`docker` for image jobs);
//! no worker gets more jobs than its free slots; a draining worker gets none.
//! A job that fits no worker does not block the jobs behind it. Among the
//! workers that fit, the one with the most free slots wins (spreads load),
//! ties broken by worker id so decisions are reproducible. A worker may also
//! take assignments beyond its free slots, queued until a slot frees
//! (prefetch: the agent starts the next job without a round trip to the
//! orchestrator); that room is used only for jobs that found no free slot.
//! When a worker's slot stays free while jobs wait in another agent's
//! prefetch queue, the orchestrator takes those back ([`revocations`]) so
//! that the free slot runs one of them.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

mod rooms;

pub use rooms::{Rooms, place_in};

/// The key that orders the queue: priority descending, then FIFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueKey {
    pub priority: Reverse<i32>,
    pub seq: u64,
}

impl QueueKey {
    pub fn new(priority: i32, seq: u64) -> QueueKey {
        QueueKey {
            priority: Reverse(priority),
            seq,
        }
    }
}

/// What the scheduler needs to know about a queued job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedJob {
    pub id: String,
    /// Labels the worker must have (including `docker` for image jobs).
    pub requires: Vec<String>,
}

impl QueuedJob {
    /// Whether a worker with `labels` can run it.
    pub fn fits(&self, labels: &BTreeSet<String>) -> bool {
        self.requires.iter().all(|l| labels.contains(l))
    }
}

/// What the scheduler needs to know about a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerView {
    pub id: String,
    pub labels: BTreeSet<String>,
    pub free_slots: u32,
    /// Assignments it takes beyond its free slots, queued on the agent.
    pub queue_room: u32,
    pub draining: bool,
}

/// One decision: run `job` on `worker`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub job: String,
    pub worker: String,
}

/// Places as many queued jobs as the workers' free slots allow, then, for
/// the jobs left, as many as their queue room allows.
///
/// `queue` is walked in key order. A walk stops as soon as no worker has
/// room, so a long backlog costs nothing while the fleet is busy. The
/// engine keeps its workers' room indexed and calls [`place_in`]; this
/// builds the indexes from `workers` first.
pub fn place(queue: &BTreeMap<QueueKey, QueuedJob>, workers: &[WorkerView]) -> Vec<Placement> {
    let (mut slots, mut queue_room) = rooms_of(workers);
    place_in(queue, &mut slots, &mut queue_room)
}

/// The room indexes of `workers` (free slots, prefetch room) as the engine
/// keeps them: a draining worker has no room.
pub fn rooms_of(workers: &[WorkerView]) -> (Rooms, Rooms) {
    let (mut slots, mut queue_room) = (Rooms::default(), Rooms::default());
    for w in workers.iter().filter(|w| !w.draining) {
        slots.set(&w.id, w.free_slots, &w.labels);
        queue_room.set(&w.id, w.queue_room, &w.labels);
    }
    (slots, queue_room)
}

/// Which of the jobs waiting in agents' prefetch queues to take back, so
/// that the free slots left after [`place`] run them instead of idling.
///
/// `free` is the free-slot index after placement (draining workers have no
/// room); `waiting` the jobs held beyond their workers' slots, in the order
/// they should get a slot (queue key order); `in_flight` the jobs already
/// being taken back, which will fill free slots they fit first. Each job
/// taken back needs a free slot that fits it, found as placement finds one
/// ([`Rooms::first_fit`]). A worker with waiting jobs has no free slot, so a
/// job never goes back to a worker as busy as the one it left.
pub fn revocations(free: &Rooms, waiting: &[QueuedJob], in_flight: &[QueuedJob]) -> Vec<String> {
    // The free slots each worker has given so far: the index stays as it is.
    let mut given: HashMap<Arc<str>, u32> = HashMap::new();
    let mut take = |job: &QueuedJob| {
        let worker = free.first_fit(job, |id, room| given.get(id).copied().unwrap_or(0) < room);
        worker
            .map(|id| *given.entry(id).or_default() += 1)
            .is_some()
    };
    for job in in_flight {
        take(job);
    }
    waiting
        .iter()
        .filter(|job| take(job))
        .map(|job| job.id.clone())
        .collect()
}

/// The jobs waiting for a slot on one agent, in the order it will start
/// them (the order they were assigned), and its worker's labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line<'a> {
    pub labels: &'a BTreeSet<String>,
    pub waiting: Vec<(QueueKey, QueuedJob)>,
}

/// How many queued jobs [`overtaken`] looks at per worker.
const OVERTAKE_WALK: usize = 256;

/// Waiting jobs to take back because a job of higher priority would
/// otherwise wait behind them: one assigned after them to the same agent,
/// or one still queued that fits their worker (it could only queue behind
/// them there). Taken back and placed again, they line up behind it. The
/// queue is walked in key order, only while its priority is above the
/// lowest waiting one, and at most [`OVERTAKE_WALK`] jobs per worker.
pub fn overtaken(lines: &[Line<'_>], queue: &BTreeMap<QueueKey, QueuedJob>) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        let Some(lowest) = line.waiting.iter().map(|(k, _)| k.priority.0).min() else {
            continue;
        };
        // The most urgent queued job that fits, if more urgent than some
        // waiting job: it counts as last in the line.
        let queued = queue
            .iter()
            .take(OVERTAKE_WALK)
            .take_while(|(k, _)| k.priority.0 > lowest)
            .find(|(_, j)| j.fits(line.labels))
            .map(|(k, _)| k.priority.0);
        let mut behind = queued;
        for (key, job) in line.waiting.iter().rev() {
            if behind.is_some_and(|p| p > key.priority.0) {
                out.push(job.id.clone());
            }
            behind = behind.max(Some(key.priority.0));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(id: &str, labels: &[&str], free: u32) -> WorkerView {
        WorkerView {
            id: id.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            free_slots: free,
            queue_room: 0,
            draining: false,
        }
    }

    fn queue(jobs: &[(&str, i32, u64, &[&str])]) -> BTreeMap<QueueKey, QueuedJob> {
        jobs.iter()
            .map(|(id, prio, seq, req)| {
                (
                    QueueKey::new(*prio, *seq),
                    QueuedJob {
                        id: id.to_string(),
                        requires: req.iter().map(|s| s.to_string()).collect(),
                    },
                )
            })
            .collect()
    }

    fn pairs(p: &[Placement]) -> Vec<(&str, &str)> {
        p.iter()
            .map(|p| (p.job.as_str(), p.worker.as_str()))
            .collect()
    }

    #[test]
    fn priority_then_fifo() {
        let q = queue(&[("low", 0, 1, &[]), ("high", 5, 3, &[]), ("low2", 0, 2, &[])]);
        let p = place(&q, &[worker("w", &[], 2)]);
        assert_eq!(pairs(&p), vec![("high", "w"), ("low", "w")]);
    }

    #[test]
    fn labels_must_all_match() {
        let q = queue(&[
            ("gpu", 0, 1, &["gpu"]),
            ("any", 0, 2, &[]),
            ("both", 0, 3, &["gpu", "linux"]),
        ]);
        let ws = [
            worker("cpu", &["linux"], 5),
            worker("g", &["gpu", "linux"], 5),
        ];
        let p = place(&q, &ws);
        assert_eq!(pairs(&p), vec![("gpu", "g"), ("any", "cpu"), ("both", "g")]);
    }

    #[test]
    fn unplaceable_job_does_not_block_the_queue() {
        let q = queue(&[("docker", 9, 1, &["docker"]), ("plain", 0, 2, &[])]);
        let p = place(&q, &[worker("w", &[], 1)]);
        assert_eq!(pairs(&p), vec![("plain", "w")]);
    }

    #[test]
    fn slots_are_respected() {
        let q = queue(&[("a", 0, 1, &[]), ("b", 0, 2, &[]), ("c", 0, 3, &[])]);
        let p = place(&q, &[worker("w", &[], 2)]);
        assert_eq!(p.len(), 2);
        assert!(place(&q, &[worker("w", &[], 0)]).is_empty());
    }

    #[test]
    fn draining_workers_get_nothing() {
        let q = queue(&[("a", 0, 1, &[])]);
        let mut w = worker("w", &[], 4);
        w.draining = true;
        assert!(place(&q, &[w]).is_empty());
    }

    #[test]
    fn load_is_spread_to_the_freest_worker() {
        let q = queue(&[("a", 0, 1, &[]), ("b", 0, 2, &[]), ("c", 0, 3, &[])]);
        let p = place(&q, &[worker("w1", &[], 1), worker("w2", &[], 3)]);
        assert_eq!(pairs(&p), vec![("a", "w2"), ("b", "w2"), ("c", "w1")]);
    }

    #[test]
    fn ties_go_to_the_smallest_worker_id() {
        let q = queue(&[("a", 0, 1, &[])]);
        let p = place(&q, &[worker("wb", &[], 2), worker("wa", &[], 2)]);
        assert_eq!(pairs(&p), vec![("a", "wa")]);
    }

    #[test]
    fn queue_room_is_used_only_for_jobs_that_found_no_free_slot() {
        let q = queue(&[
            ("a", 0, 1, &[]),
            ("b", 0, 2, &[]),
            ("c", 0, 3, &[]),
            ("d", 0, 4, &[]),
        ]);
        let busy = WorkerView {
            queue_room: 2,
            ..worker("busy", &[], 0)
        };
        let idle = WorkerView {
            queue_room: 1,
            ..worker("idle", &[], 1)
        };
        let p = place(&q, &[busy.clone(), idle.clone()]);
        // The free slot first; then the most room; then the rest of it.
        assert_eq!(
            pairs(&p),
            vec![("a", "idle"), ("b", "busy"), ("c", "busy"), ("d", "idle")]
        );
        // Without room, only the free slot.
        let none = [
            WorkerView {
                queue_room: 0,
                ..busy
            },
            WorkerView {
                queue_room: 0,
                ..idle
            },
        ];
        assert_eq!(pairs(&place(&q, &none)), vec![("a", "idle")]);
    }

    #[test]
    fn queue_room_respects_labels_and_draining() {
        let q = queue(&[("gpu", 0, 1, &["gpu"]), ("any", 0, 2, &[])]);
        let draining = WorkerView {
            queue_room: 4,
            draining: true,
            ..worker("gpu-box", &["gpu"], 0)
        };
        let plain = WorkerView {
            queue_room: 4,
            ..worker("plain", &[], 0)
        };
        assert_eq!(
            pairs(&place(&q, &[draining, plain])),
            vec![("any", "plain")]
        );
    }

    #[test]
    fn queue_room_takes_the_jobs_passed_over_first_then_those_not_reached() {
        let q = queue(&[
            ("gpu", 0, 1, &["gpu"]),
            ("any", 0, 2, &[]),
            ("any2", 0, 3, &[]),
        ]);
        let gpu_box = WorkerView {
            queue_room: 2,
            ..worker("gpu-box", &["gpu"], 0)
        };
        let plain = worker("plain", &[], 1);
        // "gpu" finds no free slot and is passed over; "any" takes the one
        // free slot; "any2" is not reached. Then both, in key order.
        assert_eq!(
            pairs(&place(&q, &[gpu_box, plain])),
            vec![("any", "plain"), ("gpu", "gpu-box"), ("any2", "gpu-box")]
        );
    }

    fn waiting(jobs: &[(&str, &[&str])]) -> Vec<QueuedJob> {
        jobs.iter()
            .map(|(id, req)| QueuedJob {
                id: id.to_string(),
                requires: req.iter().map(|s| s.to_string()).collect(),
            })
            .collect()
    }

    /// [`revocations`] over the free slots of `workers`.
    fn take_backs(workers: &[WorkerView], w: &[QueuedJob], back: &[QueuedJob]) -> Vec<String> {
        let (free, _) = rooms_of(workers);
        revocations(&free, w, back)
    }

    #[test]
    fn free_slots_take_back_as_many_waiting_jobs_as_they_can_run() {
        let w = waiting(&[("a", &[]), ("b", &[]), ("c", &[])]);
        let idle = [worker("idle", &[], 2), worker("busy", &[], 0)];
        assert_eq!(take_backs(&idle, &w, &[]), vec!["a", "b"]);
        // Nothing free, nothing taken back.
        assert!(take_backs(&[worker("busy", &[], 0)], &w, &[]).is_empty());
    }

    #[test]
    fn jobs_already_coming_back_fill_the_free_slots_first() {
        let w = waiting(&[("b", &[]), ("c", &[])]);
        let back = waiting(&[("a", &[])]);
        let idle = [worker("idle", &[], 2)];
        assert_eq!(take_backs(&idle, &w, &back), vec!["b"]);
        let idle = [worker("idle", &[], 1)];
        assert!(take_backs(&idle, &w, &back).is_empty());
    }

    #[test]
    fn only_jobs_a_free_slot_fits_are_taken_back() {
        let w = waiting(&[("gpu", &["gpu"]), ("any", &[])]);
        let plain = worker("plain", &[], 1);
        assert_eq!(
            take_backs(std::slice::from_ref(&plain), &w, &[]),
            vec!["any"]
        );
        // A job coming back that needs a GPU does not use the plain slot.
        let back = waiting(&[("gpu2", &["gpu"])]);
        assert_eq!(take_backs(&[plain], &w, &back), vec!["any"]);
        let draining = WorkerView {
            draining: true,
            ..worker("draining", &[], 3)
        };
        assert!(take_backs(&[draining], &w, &[]).is_empty());
    }

    fn line<'a>(labels: &'a BTreeSet<String>, waiting: &[(&str, i32, u64)]) -> Line<'a> {
        Line {
            labels,
            waiting: waiting
                .iter()
                .map(|(id, prio, seq)| {
                    let job = QueuedJob {
                        id: id.to_string(),
                        requires: vec![],
                    };
                    (QueueKey::new(*prio, *seq), job)
                })
                .collect(),
        }
    }

    #[test]
    fn waiting_jobs_ahead_of_a_more_urgent_one_are_taken_back() {
        // On w: low1, urgent, low2. Only low1 is ahead of urgent.
        let none = BTreeSet::new();
        let lines = [line(
            &none,
            &[("low1", 0, 1), ("urgent", 5, 9), ("low2", 0, 2)],
        )];
        assert_eq!(overtaken(&lines, &BTreeMap::new()), vec!["low1"]);
        // All of one priority: nothing to do, however long the queue.
        let lines = [line(&none, &[("a", 0, 1), ("b", 0, 2)])];
        let q = queue(&[("c", 0, 3, &[]), ("d", 0, 4, &[])]);
        assert!(overtaken(&lines, &q).is_empty());
    }

    #[test]
    fn a_more_urgent_queued_job_that_fits_takes_back_the_less_urgent_waiting_ones() {
        let none = BTreeSet::new();
        let lines = [line(&none, &[("mid", 3, 1), ("low", 0, 2)])];
        let q = queue(&[("urgent", 5, 9, &[])]);
        let mut got = overtaken(&lines, &q);
        got.sort();
        assert_eq!(got, vec!["low", "mid"]);
        // One it cannot run there changes nothing.
        let q = queue(&[("urgent", 5, 9, &["gpu"])]);
        assert!(overtaken(&lines, &q).is_empty());
        // Nor does one less urgent than every waiting job.
        let q = queue(&[("later", -1, 9, &[])]);
        assert!(overtaken(&lines, &q).is_empty());
    }
}
