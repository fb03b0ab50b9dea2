//! The workers that have room for a job, kept in the order placement picks
//! them, so that placing a job costs a lookup instead of a walk over the
//! whole fleet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::{Placement, QueueKey, QueuedJob};

/// Workers with room for at least one more job, ordered the way placement
/// picks among those a job fits: the most room first (spreads load), then
/// by worker id (reproducible). A worker with no room is not in it.
///
/// The engine keeps one for free slots and one for prefetch room, updated
/// whenever a worker changes; [`place_in`] takes room as it places jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rooms {
    order: BTreeSet<(Reverse<u32>, String)>,
    room: HashMap<String, u32>,
}

impl Rooms {
    /// Sets `id`'s room (0 removes it).
    pub fn set(&mut self, id: &str, room: u32) {
        let old = self.room(id);
        if old == room {
            return;
        }
        if old > 0 {
            self.order.remove(&(Reverse(old), id.to_string()));
        }
        if room > 0 {
            self.order.insert((Reverse(room), id.to_string()));
            self.room.insert(id.to_string(), room);
        } else {
            self.room.remove(id);
        }
    }

    /// `id`'s room (0 when it has none or is unknown).
    pub fn room(&self, id: &str) -> u32 {
        self.room.get(id).copied().unwrap_or(0)
    }

    pub fn len(&self) -> usize {
        self.room.len()
    }

    pub fn is_empty(&self) -> bool {
        self.room.is_empty()
    }

    /// The workers and their room, in pick order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u32)> {
        self.order.iter().map(|(r, id)| (id.as_str(), r.0))
    }

    /// The first worker in pick order that `fits`.
    fn pick(&self, fits: impl Fn(&str) -> bool) -> Option<String> {
        self.order
            .iter()
            .map(|(_, id)| id)
            .find(|id| fits(id))
            .cloned()
    }

    /// Takes one unit of `id`'s room.
    fn take_one(&mut self, id: &str) {
        let left = self.room(id).saturating_sub(1);
        self.set(id, left);
    }
}

/// Places as many queued jobs as the free slots in `slots` allow, then, for
/// the jobs left, as many as the prefetch room in `queue_room` allows
/// (the rules are those of [`super::place`]). Takes the room it uses from
/// both indexes; `labels` gives a worker's labels (`None`: unknown, fits
/// nothing).
///
/// A job costs one lookup when the first worker in pick order fits it, and
/// a walk only over the workers with room that do not. Room only shrinks
/// during a walk, so once no worker fits a set of required labels, the
/// walk passes over the other jobs that require the same set without
/// looking at the workers again: a backlog that fits none of the workers
/// with room costs one step per job, not one per job and worker.
pub fn place_in<'a>(
    queue: &BTreeMap<QueueKey, QueuedJob>,
    slots: &mut Rooms,
    queue_room: &mut Rooms,
    labels: impl Fn(&str) -> Option<&'a BTreeSet<String>>,
) -> Vec<Placement> {
    let mut out = Vec::new();
    let mut walk = queue.values();
    let mut skipped = Vec::new();
    let mut unfit = HashSet::new();
    while !slots.is_empty() {
        let Some(job) = walk.next() else { break };
        if !take(slots, job, &labels, &mut unfit, &mut out) {
            skipped.push(job);
        }
    }
    // The jobs the first walk passed over, then those it did not reach,
    // still in key order. None of them fits a worker with a free slot left,
    // so this room is only that of busy workers.
    let mut unfit = HashSet::new();
    for job in skipped.into_iter().chain(walk) {
        if queue_room.is_empty() {
            break;
        }
        take(queue_room, job, &labels, &mut unfit, &mut out);
    }
    out
}

/// Places `job` on the first worker in `rooms` it fits; whether it could.
/// `unfit` holds the label sets known to fit no worker in `rooms`.
fn take<'a, 'q>(
    rooms: &mut Rooms,
    job: &'q QueuedJob,
    labels: &impl Fn(&str) -> Option<&'a BTreeSet<String>>,
    unfit: &mut HashSet<&'q [String]>,
    out: &mut Vec<Placement>,
) -> bool {
    if unfit.contains(job.requires.as_slice()) {
        return false;
    }
    let Some(worker) = rooms.pick(|id| labels(id).is_some_and(|l| job.fits(l))) else {
        unfit.insert(job.requires.as_slice());
        return false;
    };
    rooms.take_one(&worker);
    out.push(Placement {
        job: job.id.clone(),
        worker,
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_are_ordered_by_room_then_id_and_forget_the_empty() {
        let mut r = Rooms::default();
        r.set("b", 2);
        r.set("a", 2);
        r.set("c", 3);
        r.set("d", 1);
        let order: Vec<(&str, u32)> = r.iter().collect();
        assert_eq!(order, vec![("c", 3), ("a", 2), ("b", 2), ("d", 1)]);
        r.set("c", 0);
        r.take_one("a");
        assert_eq!(r.room("c"), 0);
        let order: Vec<(&str, u32)> = r.iter().collect();
        assert_eq!(order, vec![("b", 2), ("a", 1), ("d", 1)]);
        r.take_one("d");
        assert_eq!(r.len(), 2);
        assert!(r.iter().all(|(id, _)| id != "d"));
    }

    #[test]
    fn placing_takes_the_room_it_uses_from_the_index() {
        let labels: BTreeMap<String, BTreeSet<String>> = [
            ("gpu".to_string(), ["gpu".to_string()].into()),
            ("plain".to_string(), BTreeSet::new()),
        ]
        .into();
        let mut slots = Rooms::default();
        slots.set("gpu", 1);
        slots.set("plain", 2);
        let mut queue_room = Rooms::default();
        queue_room.set("gpu", 1);
        queue_room.set("plain", 1);
        let q: BTreeMap<QueueKey, QueuedJob> = ["a", "b", "c", "d"]
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let requires = if *id == "d" {
                    vec!["gpu".to_string()]
                } else {
                    vec![]
                };
                let job = QueuedJob {
                    id: id.to_string(),
                    requires,
                };
                (QueueKey::new(0, i as u64), job)
            })
            .collect();
        let p = place_in(&q, &mut slots, &mut queue_room, |id| labels.get(id));
        let pairs: Vec<(&str, &str)> = p
            .iter()
            .map(|p| (p.job.as_str(), p.worker.as_str()))
            .collect();
        // a → plain (most room), b → gpu (tie, smaller id), c → plain;
        // d needs the gpu worker, whose slot is taken: its queue room.
        assert_eq!(
            pairs,
            vec![("a", "plain"), ("b", "gpu"), ("c", "plain"), ("d", "gpu")]
        );
        assert!(slots.is_empty());
        assert_eq!(queue_room.room("gpu"), 0);
        assert_eq!(queue_room.room("plain"), 1);
    }

    #[test]
    fn a_backlog_no_worker_fits_is_passed_over_without_looking_at_every_worker_again() {
        let plain: BTreeSet<String> = BTreeSet::new();
        let mut slots = Rooms::default();
        for i in 0..100 {
            slots.set(&format!("w{i:03}"), 1);
        }
        let mut q: BTreeMap<QueueKey, QueuedJob> = (0..1_000)
            .map(|i| {
                let job = QueuedJob {
                    id: format!("gpu{i}"),
                    requires: vec!["gpu".into()],
                };
                (QueueKey::new(0, i), job)
            })
            .collect();
        q.insert(
            QueueKey::new(0, 1_000),
            QueuedJob {
                id: "plain".into(),
                requires: vec![],
            },
        );
        let looked = std::cell::Cell::new(0);
        let p = place_in(&q, &mut slots, &mut Rooms::default(), |_| {
            looked.set(looked.get() + 1);
            Some(&plain)
        });
        assert_eq!(
            p,
            [Placement {
                job: "plain".into(),
                worker: "w000".into()
            }]
        );
        // One look at each worker for the first gpu job, one for the plain
        // job: not one per job and worker.
        assert_eq!(looked.get(), 101);
    }

    #[test]
    fn an_unknown_worker_fits_nothing() {
        let mut slots = Rooms::default();
        slots.set("gone", 1);
        let q: BTreeMap<QueueKey, QueuedJob> = [(
            QueueKey::new(0, 1),
            QueuedJob {
                id: "j".into(),
                requires: vec![],
            },
        )]
        .into();
        let p = place_in(&q, &mut slots, &mut Rooms::default(), |_| None);
        assert!(p.is_empty());
        assert_eq!(slots.room("gone"), 1);
    }
}
