//! The workers that have room for a job, kept in the order placement picks
//! them, and by label, so that placing a job costs a lookup instead of a
//! walk over the whole fleet.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use super::{Placement, QueueKey, QueuedJob};

/// Pick order: the most room first, then by worker id.
type Order = BTreeSet<(Reverse<u32>, Arc<str>)>;

/// Workers with room for at least one more job, ordered the way placement
/// picks among those a job fits: the most room first (spreads load), then
/// by worker id (reproducible). A worker with no room is not in it.
///
/// The same order is kept per label, over the workers that have it: a job
/// that needs labels is looked for among the workers that have the rarest
/// of them, not among every worker with room (10 `gpu` workers in a fleet
/// of 10,000 cost a `gpu` job 10 looks, not up to 10,000).
///
/// The engine keeps one for free slots and one for prefetch room, updated
/// whenever a worker changes; [`place_in`] takes room as it places jobs.
#[derive(Debug, Clone, Default)]
pub struct Rooms {
    order: Order,
    by_label: HashMap<String, Order>,
    entries: HashMap<Arc<str>, Entry>,
    /// Workers looked at by placement (tests count them).
    #[cfg(test)]
    looked: std::cell::Cell<usize>,
}

#[derive(Debug, Clone)]
struct Entry {
    id: Arc<str>,
    room: u32,
    labels: BTreeSet<String>,
}

impl Rooms {
    /// Sets `id`'s room and labels (room 0 removes it).
    pub fn set(&mut self, id: &str, room: u32, labels: &BTreeSet<String>) {
        let Rooms {
            order,
            by_label,
            entries,
            ..
        } = self;
        match entries.get_mut(id) {
            Some(e) if e.labels == *labels && room > 0 => reposition(order, by_label, e, room),
            // Other labels (or no room left): out of every order, then in
            // again as new.
            Some(_) => {
                self.remove(id);
                self.set(id, room, labels);
            }
            None if room > 0 => {
                let e = Entry {
                    id: Arc::from(id),
                    room,
                    labels: labels.clone(),
                };
                index(order, by_label, &e);
                entries.insert(e.id.clone(), e);
            }
            None => {}
        }
    }

    /// Forgets `id`.
    pub fn remove(&mut self, id: &str) {
        if let Some(e) = self.entries.remove(id) {
            unindex(&mut self.order, &mut self.by_label, &e);
        }
    }

    /// `id`'s room (0 when it has none or is unknown).
    pub fn room(&self, id: &str) -> u32 {
        self.entries.get(id).map_or(0, |e| e.room)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The first worker in pick order that `job` fits: among the workers
    /// with the rarest label it needs (each worker it fits has that label),
    /// or among all when it needs none.
    fn pick(&self, job: &QueuedJob) -> Option<Arc<str>> {
        self.first_fit(job, |_, _| true)
    }

    /// Like [`Rooms::pick`], skipping the workers for which `usable(id,
    /// room)` is false.
    pub fn first_fit(
        &self,
        job: &QueuedJob,
        usable: impl Fn(&str, u32) -> bool,
    ) -> Option<Arc<str>> {
        let mut among = &self.order;
        for (i, label) in job.requires.iter().enumerate() {
            // No worker with room has it: none fits.
            let with = self.by_label.get(label)?;
            if i == 0 || with.len() < among.len() {
                among = with;
            }
        }
        among
            .iter()
            .find(|(room, id)| {
                #[cfg(test)]
                self.looked.set(self.looked.get() + 1);
                usable(id, room.0) && self.entries.get(&**id).is_some_and(|e| job.fits(&e.labels))
            })
            .map(|(_, id)| id.clone())
    }

    /// Takes one unit of `id`'s room.
    fn take_one(&mut self, id: &str) {
        let Rooms {
            order,
            by_label,
            entries,
            ..
        } = self;
        let Some(e) = entries.get_mut(id) else {
            return;
        };
        if e.room > 1 {
            reposition(order, by_label, e, e.room - 1);
        } else {
            self.remove(id);
        }
    }
}

fn index(order: &mut Order, by_label: &mut HashMap<String, Order>, e: &Entry) {
    let key = (Reverse(e.room), e.id.clone());
    for label in &e.labels {
        match by_label.get_mut(label) {
            Some(with) => {
                with.insert(key.clone());
            }
            None => {
                by_label.insert(label.clone(), BTreeSet::from([key.clone()]));
            }
        }
    }
    order.insert(key);
}

/// Moves `e` to its place for `room` (not 0) in every order it is in.
fn reposition(order: &mut Order, by_label: &mut HashMap<String, Order>, e: &mut Entry, room: u32) {
    if e.room == room {
        return;
    }
    let old = (Reverse(e.room), e.id.clone());
    let new = (Reverse(room), e.id.clone());
    for label in &e.labels {
        if let Some(with) = by_label.get_mut(label) {
            with.remove(&old);
            with.insert(new.clone());
        }
    }
    order.remove(&old);
    order.insert(new);
    e.room = room;
}

fn unindex(order: &mut Order, by_label: &mut HashMap<String, Order>, e: &Entry) {
    let key = (Reverse(e.room), e.id.clone());
    for label in &e.labels {
        if let Some(with) = by_label.get_mut(label) {
            with.remove(&key);
            if with.is_empty() {
                by_label.remove(label);
            }
        }
    }
    order.remove(&key);
}

/// Places as many queued jobs as the free slots in `slots` allow, then, for
/// the jobs left, as many as the prefetch room in `queue_room` allows
/// (the rules are those of [`super::place`]). Takes the room it uses from
/// both indexes.
///
/// A job costs one lookup when the first worker in pick order (among those
/// with the labels it needs) fits it, and a walk only over the workers
/// with room and its rarest label that do not. Room only shrinks during a
/// walk, so once no worker fits a set of required labels, the walk passes
/// over the other jobs that require the same set without looking at the
/// workers again: a backlog that fits none of the workers with room costs
/// one step per job, not one per job and worker.
pub fn place_in(
    queue: &BTreeMap<QueueKey, QueuedJob>,
    slots: &mut Rooms,
    queue_room: &mut Rooms,
) -> Vec<Placement> {
    let mut out = Vec::new();
    let mut walk = queue.values();
    let mut skipped = Vec::new();
    let mut unfit = HashSet::new();
    while !slots.is_empty() {
        let Some(job) = walk.next() else { break };
        if !take(slots, job, &mut unfit, &mut out) {
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
        take(queue_room, job, &mut unfit, &mut out);
    }
    out
}

/// Places `job` on the first worker in `rooms` it fits; whether it could.
/// `unfit` holds the label sets known to fit no worker in `rooms`.
fn take<'q>(
    rooms: &mut Rooms,
    job: &'q QueuedJob,
    unfit: &mut HashSet<&'q [String]>,
    out: &mut Vec<Placement>,
) -> bool {
    if unfit.contains(job.requires.as_slice()) {
        return false;
    }
    let Some(worker) = rooms.pick(job) else {
        unfit.insert(job.requires.as_slice());
        return false;
    };
    rooms.take_one(&worker);
    out.push(Placement {
        job: job.id.clone(),
        worker: worker.to_string(),
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn job(id: &str, requires: &[&str]) -> QueuedJob {
        QueuedJob {
            id: id.to_string(),
            requires: requires.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn queue(jobs: Vec<QueuedJob>) -> BTreeMap<QueueKey, QueuedJob> {
        jobs.into_iter()
            .enumerate()
            .map(|(i, j)| (QueueKey::new(0, i as u64), j))
            .collect()
    }

    /// The workers and their room, in pick order.
    fn order(r: &Rooms) -> Vec<(&str, u32)> {
        r.order.iter().map(|(room, id)| (&**id, room.0)).collect()
    }

    fn pairs(p: &[Placement]) -> Vec<(&str, &str)> {
        p.iter()
            .map(|p| (p.job.as_str(), p.worker.as_str()))
            .collect()
    }

    #[test]
    fn rooms_are_ordered_by_room_then_id_and_forget_the_empty() {
        let mut r = Rooms::default();
        let none = labels(&[]);
        r.set("b", 2, &none);
        r.set("a", 2, &none);
        r.set("c", 3, &none);
        r.set("d", 1, &none);
        assert_eq!(order(&r), vec![("c", 3), ("a", 2), ("b", 2), ("d", 1)]);
        r.set("c", 0, &none);
        r.take_one("a");
        assert_eq!(r.room("c"), 0);
        assert_eq!(order(&r), vec![("b", 2), ("a", 1), ("d", 1)]);
        r.take_one("d");
        assert_eq!(r.len(), 2);
        assert!(order(&r).iter().all(|(id, _)| *id != "d"));
    }

    #[test]
    fn placing_takes_the_room_it_uses_from_the_index() {
        let (gpu, plain) = (labels(&["gpu"]), labels(&[]));
        let mut slots = Rooms::default();
        slots.set("gpu", 1, &gpu);
        slots.set("plain", 2, &plain);
        let mut queue_room = Rooms::default();
        queue_room.set("gpu", 1, &gpu);
        queue_room.set("plain", 1, &plain);
        let q = queue(vec![
            job("a", &[]),
            job("b", &[]),
            job("c", &[]),
            job("d", &["gpu"]),
        ]);
        let p = place_in(&q, &mut slots, &mut queue_room);
        // a → plain (most room), b → gpu (tie, smaller id), c → plain;
        // d needs the gpu worker, whose slot is taken: its queue room.
        assert_eq!(
            pairs(&p),
            vec![("a", "plain"), ("b", "gpu"), ("c", "plain"), ("d", "gpu")]
        );
        assert!(slots.is_empty());
        assert_eq!(queue_room.room("gpu"), 0);
        assert_eq!(queue_room.room("plain"), 1);
    }

    #[test]
    fn a_job_needing_a_rare_label_looks_only_at_the_workers_that_have_it() {
        let (linux, gpu) = (labels(&["linux"]), labels(&["linux", "gpu"]));
        let mut slots = Rooms::default();
        for i in 0..10_000 {
            slots.set(&format!("w{i:05}"), 2, &linux);
        }
        // Less room than the others: last in pick order.
        for id in ["g2", "g1", "g3"] {
            slots.set(id, 1, &gpu);
        }
        let q = queue(vec![
            job("t1", &["gpu", "linux"]),
            job("t2", &["linux", "gpu"]),
            job("t3", &["gpu"]),
            job("any", &[]),
        ]);
        let p = place_in(&q, &mut slots, &mut Rooms::default());
        assert_eq!(
            pairs(&p),
            vec![("t1", "g1"), ("t2", "g2"), ("t3", "g3"), ("any", "w00000")]
        );
        // One look per job: not a walk past 10,000 workers without `gpu`.
        assert_eq!(slots.looked.get(), 4);
        assert_eq!(slots.room("g1"), 0);
        assert!(!slots.by_label.contains_key("gpu"));
        // No worker with room has `gpu` now: no look at all.
        let more = queue(vec![job("t4", &["gpu"])]);
        assert!(place_in(&more, &mut slots, &mut Rooms::default()).is_empty());
        assert_eq!(slots.looked.get(), 4);
    }

    #[test]
    fn a_backlog_no_worker_fits_is_passed_over_without_looking_at_every_worker_again() {
        let mut slots = Rooms::default();
        for i in 0..100 {
            let has = if i % 2 == 0 { "gpu" } else { "arm" };
            slots.set(&format!("w{i:03}"), 1, &labels(&[has]));
        }
        // Each label is on 50 workers with room, both on none.
        let mut jobs: Vec<QueuedJob> = (0..1_000)
            .map(|i| job(&format!("both{i}"), &["gpu", "arm"]))
            .collect();
        jobs.push(job("plain", &[]));
        let p = place_in(&queue(jobs), &mut slots, &mut Rooms::default());
        assert_eq!(pairs(&p), vec![("plain", "w000")]);
        // The 50 workers of one label for the first such job, one look for
        // the plain job: not one per job and worker.
        assert_eq!(slots.looked.get(), 51);
    }

    #[test]
    fn a_worker_moves_between_the_label_indexes_as_its_labels_and_room_change() {
        let mut slots = Rooms::default();
        slots.set("w", 1, &labels(&["gpu"]));
        let gpu_job = queue(vec![job("j", &["gpu"])]);
        // Its labels changed: a `gpu` job no longer fits it.
        slots.set("w", 1, &labels(&["arm"]));
        assert_eq!(slots.entries["w"].labels, labels(&["arm"]));
        assert!(place_in(&gpu_job, &mut slots.clone(), &mut Rooms::default()).is_empty());
        // Back, with more room: it does.
        slots.set("w", 2, &labels(&["gpu"]));
        let p = place_in(&gpu_job, &mut slots.clone(), &mut Rooms::default());
        assert_eq!(pairs(&p), vec![("j", "w")]);
        // No room: gone from every index.
        slots.set("w", 0, &labels(&["gpu"]));
        assert!(slots.is_empty() && slots.order.is_empty() && slots.by_label.is_empty());
        slots.set("w", 1, &labels(&["gpu"]));
        slots.remove("w");
        assert!(slots.is_empty() && slots.order.is_empty() && slots.by_label.is_empty());
    }
}
