//! What the engine does differently when several orchestrators (replicas)
//! share one database.
//!
//! Each replica's engine holds the shared queue (every queued job, learnt
//! from its own submissions and from the others' notifications) and the
//! attempts it owns. A claim is a fenced write in the store: when two
//! replicas place the same queued job, one write wins and the loser is told
//! to [`Input::Forget`](super::Input::Forget) the job. Jobs come in with
//! [`Input::Adopt`](super::Input::Adopt). Sequence numbers stay unique
//! across replicas because each replica only hands out numbers congruent to
//! its slot (see [`replica_seq`]).

use std::collections::BTreeMap;

use super::{Adopted, Engine, LiveJob, Output, ToAgent};
use crate::job::{JobEvent, JobState, Millis};

/// Slots: sequence numbers of slot `s` are `s` modulo `SLOT_SPACE`.
pub const SLOT_SPACE: u64 = 4096;
/// Sequence numbers start from this time (2024-01-01 UTC), so the time part
/// fits an `i64` column until about 2093.
const SEQ_EPOCH_MS: Millis = 1_704_067_200_000;
/// Time in milliseconds is shifted this far: below it, 1,024 numbers per
/// millisecond per slot (more borrow from the next millisecond; numbers
/// never repeat).
const TIME_SHIFT: u32 = 22;

/// The first sequence number for `slot` that is at least `floor` and not
/// earlier than `now`: time-ordered across replicas (FIFO across them to
/// the millisecond), strictly increasing within one, and never equal to
/// another slot's.
pub fn replica_seq(floor: u64, now: Millis, slot: u16) -> u64 {
    let since_epoch = u64::try_from(now.saturating_sub(SEQ_EPOCH_MS)).unwrap_or(0);
    let time_based = since_epoch << TIME_SHIFT;
    let base = floor.max(time_based);
    let slot = u64::from(slot) % SLOT_SPACE;
    let rem = base % SLOT_SPACE;
    if rem <= slot {
        base - rem + slot
    } else {
        base - rem + SLOT_SPACE + slot
    }
}

impl Engine {
    /// The same engine, handing out sequence numbers of replica `slot`.
    pub fn with_seq_slot(mut self, slot: Option<u16>) -> Engine {
        self.seq_slot = slot;
        self
    }

    /// The sequence number of a new submission.
    pub(super) fn take_seq(&mut self, now: Millis) -> u64 {
        match self.seq_slot {
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                seq
            }
            Some(slot) => {
                let seq = replica_seq(self.next_seq, now, slot);
                self.next_seq = seq + SLOT_SPACE;
                seq
            }
        }
    }

    /// Whether `job_id` is in memory and waiting in the queue.
    pub fn is_queued(&self, job_id: &str) -> bool {
        self.jobs
            .get(job_id)
            .is_some_and(|l| l.job.state == JobState::Queued)
    }

    /// Whether this engine holds `attempt` of `job_id` on `worker`.
    pub fn holds_attempt(&self, job_id: &str, attempt: u32, worker: &str) -> bool {
        self.jobs.get(job_id).is_some_and(|l| {
            l.job.attempt == attempt
                && l.job.worker.as_deref() == Some(worker)
                && matches!(l.job.state, JobState::Assigned | JobState::Running)
        })
    }

    /// Takes jobs into memory (see [`Input::Adopt`](super::Input::Adopt)).
    /// A version already in memory is replaced. Finished jobs are dropped.
    /// An adopted attempt's worker, if it is not attached here, gets the
    /// lease grace from `now` to attach.
    pub(super) fn adopt(
        &mut self,
        jobs: Vec<Adopted>,
        orphans: bool,
        now: Millis,
        out: &mut Output,
    ) {
        for Adopted { job, stored } in jobs {
            let requeue = (orphans && job.state == JobState::Assigned).then_some(job.attempt);
            self.drop_live(&job.id);
            if job.state.is_terminal() {
                continue;
            }
            let mut holders = BTreeMap::new();
            match job.state {
                JobState::Queued => self.enqueue(&job),
                _ => {
                    let worker_id = job.worker.clone().unwrap_or_default();
                    holders.insert(job.attempt, worker_id.clone());
                    let session = self.workers.upsert(&worker_id, now, |worker| {
                        worker.jobs.insert(job.id.clone());
                        if worker.session.is_none() {
                            worker.last_seen = now;
                        }
                        worker.session
                    });
                    if job.cancel_requested
                        && let Some(session) = session
                    {
                        out.messages.push((
                            session,
                            ToAgent::Cancel {
                                job_id: job.id.clone(),
                                attempt: job.attempt,
                                reason: job.reason.clone().unwrap_or_else(|| "cancelled".into()),
                            },
                        ));
                    }
                }
            }
            let id = job.id.clone();
            self.jobs.insert(
                id.clone(),
                LiveJob {
                    job,
                    stored,
                    holders,
                },
            );
            if let Some(attempt) = requeue {
                let reason = "its orchestrator replica stopped before the agent started it".into();
                let _ = self.apply(&id, JobEvent::Rejected { attempt, reason }, now, out);
            }
        }
    }

    /// Drops jobs from memory (see [`Input::Forget`](super::Input::Forget)).
    pub(super) fn forget(&mut self, job_ids: &[String]) {
        for id in job_ids {
            self.drop_live(id);
        }
    }

    /// Removes a live job and every reference to it (queue, worker).
    fn drop_live(&mut self, job_id: &str) {
        let Some(live) = self.jobs.remove(job_id) else {
            return;
        };
        match live.job.state {
            JobState::Queued => self.dequeue(&live.job),
            _ => {
                if let Some(worker) = live.job.worker.as_ref() {
                    self.workers.update(worker, |w| w.jobs.remove(job_id));
                }
            }
        }
        self.pending_acks.retain(|(_, id), _| id != job_id);
    }
}

#[cfg(test)]
mod tests {
    use super::super::{EngineConfig, Input};
    use super::*;
    use crate::job::Job;
    use crate::spec::JobSpec;

    fn engine_with_worker(slots: u32) -> Engine {
        let mut engine = Engine::new(EngineConfig::default());
        let mut out = Output::default();
        engine.handle(
            Input::Attach {
                session: 1,
                worker_id: "w".into(),
                labels: vec![],
                slots,
                prefetch: 0,
                running: vec![],
            },
            0,
            &mut out,
        );
        engine
    }

    fn job(id: &str, seq: u64, state: JobState) -> Adopted {
        let mut job = Job::new(id.into(), JobSpec::command(["true"]).normalized(), seq, 0);
        job.state = state;
        if state != JobState::Queued {
            job.attempt = 1;
            job.worker = Some("w".into());
        }
        Adopted {
            job,
            stored: Default::default(),
        }
    }

    fn assigned(out: &Output) -> Vec<String> {
        out.messages
            .iter()
            .filter_map(|(_, m)| match m {
                ToAgent::Assign { job, .. } => Some(job.id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_adopted_queued_job_is_dispatched_and_a_forgotten_one_frees_its_slot() {
        let mut engine = engine_with_worker(1);
        let mut out = Output::default();
        let jobs = vec![
            job("r", 1, JobState::Running),
            job("q", 2, JobState::Queued),
        ];
        engine.handle(
            Input::Adopt {
                jobs,
                orphans: false,
            },
            10,
            &mut out,
        );
        engine.end_batch(10, &mut out);
        assert!(
            assigned(&out).is_empty(),
            "the one slot holds the adopted attempt"
        );
        assert!(out.writes.is_empty(), "adopting writes nothing");
        assert!(engine.holds_attempt("r", 1, "w"));
        assert!(engine.is_queued("q"));

        let mut out = Output::default();
        engine.handle(
            Input::Forget {
                job_ids: vec!["r".into()],
            },
            20,
            &mut out,
        );
        engine.end_batch(20, &mut out);
        assert_eq!(assigned(&out), ["q"]);
        assert!(!engine.holds_attempt("r", 1, "w"));
        assert!(engine.needs_lookup("r"));
    }

    #[test]
    fn an_orphaned_attempt_that_never_started_is_queued_again() {
        let mut engine = Engine::new(EngineConfig::default());
        let mut out = Output::default();
        let jobs = vec![
            job("a", 1, JobState::Assigned),
            job("r", 2, JobState::Running),
        ];
        engine.handle(
            Input::Adopt {
                jobs,
                orphans: true,
            },
            10,
            &mut out,
        );
        assert_eq!(out.writes.jobs["a"].state, JobState::Queued);
        assert!(
            !out.writes.jobs.contains_key("r"),
            "a running attempt waits for its worker"
        );
        assert!(engine.is_queued("a"));
    }

    #[test]
    fn replica_engines_hand_out_their_own_seqs() {
        let mut a = Engine::new(EngineConfig::default()).with_seq_slot(Some(1));
        let mut b = Engine::new(EngineConfig::default()).with_seq_slot(Some(2));
        let now = SEQ_EPOCH_MS + 5;
        let sa: Vec<u64> = (0..5).map(|_| a.take_seq(now)).collect();
        let sb: Vec<u64> = (0..5).map(|_| b.take_seq(now)).collect();
        assert!(sa.windows(2).all(|w| w[0] < w[1]));
        assert!(sa.iter().all(|s| !sb.contains(s)));
    }

    #[test]
    fn replica_seqs_are_unique_across_slots_and_increasing_within_one() {
        let now = SEQ_EPOCH_MS + 1_000;
        let mut seen = std::collections::BTreeSet::new();
        for slot in [0u16, 1, 7, 4095] {
            let mut next = 0;
            for _ in 0..3000 {
                let seq = replica_seq(next, now, slot);
                assert!(seq >= next, "never goes back");
                assert_eq!(seq % SLOT_SPACE, u64::from(slot));
                assert!(seen.insert(seq), "seq {seq} handed out twice");
                next = seq + SLOT_SPACE;
            }
        }
    }

    #[test]
    fn replica_seqs_follow_time_and_a_higher_floor() {
        let a = replica_seq(0, SEQ_EPOCH_MS + 10, 3);
        let b = replica_seq(0, SEQ_EPOCH_MS + 11, 2);
        assert!(b > a, "a later millisecond sorts later whatever the slot");
        // A floor from an older numbering (1, 2, 3 …) or a later time wins.
        let c = replica_seq(b + 1, SEQ_EPOCH_MS, 2);
        assert!(c > b);
        assert_eq!(c % SLOT_SPACE, 2);
        // Fits a signed 64-bit column for decades.
        let far = replica_seq(0, SEQ_EPOCH_MS + 60 * 365 * 86_400_000, 4095);
        assert!(i64::try_from(far).is_ok());
    }

    #[test]
    fn before_the_epoch_still_counts_up() {
        let a = replica_seq(0, 0, 5);
        assert_eq!(a, 5);
        assert_eq!(replica_seq(a + SLOT_SPACE, 0, 5), a + SLOT_SPACE);
    }
}
