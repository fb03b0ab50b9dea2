//! The workers the engine knows, with the indexes that keep placement and
//! take-backs from walking the whole fleet: the workers with free slots and
//! those with prefetch room (by room, as placement picks them), and those
//! with jobs waiting beyond their slots.
//!
//! Every change to a worker goes through [`Fleet::update`] or
//! [`Fleet::upsert`], which bring the indexes up to date from the worker's
//! record afterwards: they are derived, never edited by hand, so they
//! cannot drift from the workers.

use std::collections::{BTreeMap, BTreeSet, btree_map};

use super::Worker;
use crate::job::Millis;
use crate::scheduler::{Placement, QueueKey, QueuedJob, Rooms, place_in};

#[derive(Debug, Default)]
pub(super) struct Fleet {
    workers: BTreeMap<String, Worker>,
    /// Attached, not draining, with free slots: how many.
    free: Rooms,
    /// Attached, not draining: prefetch room not yet taken.
    queue_room: Rooms,
    /// Attached, with jobs held beyond their slots.
    waiting: BTreeSet<String>,
    /// Some worker gained room or changed labels since [`Fleet::take_grown`]
    /// was last called: a queued job that fit nowhere may fit now.
    grown: bool,
}

impl Fleet {
    pub fn get(&self, id: &str) -> Option<&Worker> {
        self.workers.get(id)
    }

    pub fn iter(&self) -> btree_map::Iter<'_, String, Worker> {
        self.workers.iter()
    }

    pub fn keys(&self) -> btree_map::Keys<'_, String, Worker> {
        self.workers.keys()
    }

    /// Changes worker `id` with `f`; `None` if it is unknown.
    pub fn update<R>(&mut self, id: &str, f: impl FnOnce(&mut Worker) -> R) -> Option<R> {
        let w = self.workers.get_mut(id)?;
        let r = f(w);
        self.reindex(id);
        Some(r)
    }

    /// Changes worker `id` with `f`, adding it first (offline, no slots) if
    /// it is unknown.
    pub fn upsert<R>(&mut self, id: &str, now: Millis, f: impl FnOnce(&mut Worker) -> R) -> R {
        let w = self
            .workers
            .entry(id.to_string())
            .or_insert_with(|| Worker {
                labels: BTreeSet::new(),
                slots: 0,
                prefetch: 0,
                session: None,
                jobs: BTreeSet::new(),
                draining: false,
                last_seen: now,
            });
        let r = f(w);
        self.reindex(id);
        // Its labels may have changed (a new session, a registration).
        self.grown = true;
        r
    }

    /// Renews worker `id`'s lease: the one change that leaves the indexes
    /// as they are, and the most frequent (every heartbeat).
    pub fn touch(&mut self, id: &str, now: Millis) {
        if let Some(w) = self.workers.get_mut(id) {
            w.last_seen = now;
        }
    }

    /// Places queued jobs on the workers with room (see
    /// [`crate::scheduler::place`]). The room placed jobs take is taken from
    /// the indexes at once; giving the jobs to the workers
    /// ([`Fleet::update`]) leaves it as it is, and [`Fleet::reindex`] puts it
    /// back for a placement that is not carried out.
    pub fn place(&mut self, queue: &BTreeMap<QueueKey, QueuedJob>) -> Vec<Placement> {
        place_in(queue, &mut self.free, &mut self.queue_room)
    }

    /// Whether some worker gained room or changed labels since the last
    /// call.
    pub fn take_grown(&mut self) -> bool {
        std::mem::take(&mut self.grown)
    }

    /// The workers with free slots, most first.
    pub fn free(&self) -> &Rooms {
        &self.free
    }

    /// The attached workers with jobs held beyond their slots.
    pub fn waiting(&self) -> impl Iterator<Item = &Worker> {
        self.waiting.iter().filter_map(|id| self.workers.get(id))
    }

    /// Brings `id`'s entries in the indexes in line with its record.
    pub fn reindex(&mut self, id: &str) {
        let Some(w) = self.workers.get(id) else {
            self.free.remove(id);
            self.queue_room.remove(id);
            self.waiting.remove(id);
            return;
        };
        let held = w.jobs.len() as u32;
        let attached = w.session.is_some();
        let open = attached && !w.draining;
        let free = if open {
            w.slots.saturating_sub(held)
        } else {
            0
        };
        // Prefetch not taken yet by the jobs held beyond the slots.
        let room = w.prefetch.saturating_sub(held.saturating_sub(w.slots));
        let room = if open { room } else { 0 };
        self.grown |= free > self.free.room(id) || room > self.queue_room.room(id);
        self.free.set(id, free, &w.labels);
        self.queue_room.set(id, room, &w.labels);
        if attached && held > w.slots {
            if !self.waiting.contains(id) {
                self.waiting.insert(id.to_string());
            }
        } else {
            self.waiting.remove(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached(fleet: &mut Fleet, id: &str, slots: u32, prefetch: u32) {
        fleet.upsert(id, 0, |w| {
            w.session = Some(1);
            w.slots = slots;
            w.prefetch = prefetch;
        });
    }

    #[test]
    fn the_indexes_follow_every_change_to_a_worker() {
        let mut fleet = Fleet::default();
        attached(&mut fleet, "w", 2, 1);
        assert_eq!((fleet.free.room("w"), fleet.queue_room.room("w")), (2, 1));
        fleet.update("w", |w| w.jobs.extend(["a".into(), "b".into()]));
        assert_eq!((fleet.free.room("w"), fleet.queue_room.room("w")), (0, 1));
        assert_eq!(fleet.waiting().count(), 0);
        fleet.update("w", |w| w.jobs.insert("c".into()));
        assert_eq!(fleet.queue_room.room("w"), 0);
        assert_eq!(fleet.waiting().count(), 1);
        assert!(fleet.waiting.contains("w"));
        fleet.update("w", |w| w.draining = true);
        assert_eq!(fleet.queue_room.room("w"), 0);
        // Draining: no room at all, even with its slots free.
        fleet.update("w", |w| w.jobs.clear());
        assert!(fleet.free.is_empty() && fleet.queue_room.is_empty());
        fleet.update("w", |w| w.draining = false);
        assert_eq!((fleet.free.room("w"), fleet.queue_room.room("w")), (2, 1));
        assert_eq!(fleet.waiting().count(), 0);
        fleet.update("w", |w| w.session = None);
        assert!(fleet.free.is_empty() && fleet.queue_room.is_empty());
    }

    #[test]
    fn placing_takes_room_and_reindexing_restores_what_was_not_given() {
        let mut fleet = Fleet::default();
        attached(&mut fleet, "w", 1, 0);
        let queue: BTreeMap<QueueKey, QueuedJob> = [(
            QueueKey::new(0, 1),
            QueuedJob {
                id: "j".into(),
                requires: vec![],
            },
        )]
        .into();
        let placed = fleet.place(&queue);
        assert_eq!(placed.len(), 1);
        assert!(fleet.free.is_empty());
        // Not carried out (say the job went away): the slot is free again.
        fleet.reindex("w");
        assert_eq!(fleet.free.room("w"), 1);
        // Carried out: the job is the worker's, the slot stays taken.
        fleet.place(&queue);
        fleet.update("w", |w| w.jobs.insert("j".into()));
        assert!(fleet.free.is_empty());
    }
}
