//! The orchestrator's state machine.
//!
//! The engine holds every job that is not finished, the queue and the
//! workers' sessions, in memory. The orchestrator feeds it a batch of
//! [`Input`]s; for each it records in an [`Output`] what must be written to
//! the store, which messages go to which agent session, which callers get
//! which reply, and what changed (for live followers). The shell commits the
//! writes in one transaction and only then sends messages and replies, so
//! nothing is acknowledged before it is durable, and a batch of many events
//! costs one commit (group commit).
//!
//! Nothing here does I/O or reads a clock: time comes in with each call.

mod authz;
mod fleet;
mod io;
mod jobs;
mod replica;
mod revoke;
mod workers;

pub use io::*;
use workers::Capacity;
pub use workers::MAX_PREFETCH;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use crate::job::{Job, JobState, Millis};
use crate::log::StreamTotal;
use crate::scheduler::{QueueKey, QueuedJob};
use crate::spec::Limits;

/// A job that is not finished, and what of its current attempt's log is
/// stored (size and checksum per stream).
#[derive(Debug, Clone)]
struct LiveJob {
    job: Job,
    stored: [StreamTotal; 2],
    /// The worker of each attempt given since the job was loaded, to tell
    /// a worker's own stale attempt from another worker's.
    holders: BTreeMap<u32, String>,
}

/// A worker known to the engine.
#[derive(Debug, Clone)]
struct Worker {
    labels: BTreeSet<String>,
    slots: u32,
    /// Assignments its agent queues beyond its slots (0 for agents that
    /// do not say: they reject what they cannot start).
    prefetch: u32,
    session: Option<SessionId>,
    /// Job ids of the attempts it holds (assigned or running).
    jobs: BTreeSet<String>,
    draining: bool,
    last_seen: Millis,
}

/// The orchestrator's in-memory state. See the module docs.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// What a submitted spec may hold.
    limits: Limits,
    jobs: HashMap<String, LiveJob>,
    queue: BTreeMap<QueueKey, QueuedJob>,
    workers: fleet::Fleet,
    sessions: HashMap<SessionId, String>,
    next_seq: u64,
    /// With several orchestrators on one database: this one's slot, which
    /// makes its submission sequence numbers unique (see `replica.rs`).
    seq_slot: Option<u16>,
    /// Sessions and jobs whose log acknowledgement is due at the end of the
    /// batch, and whether it asks for a resend.
    pending_acks: BTreeMap<(SessionId, String), bool>,
    /// Jobs that ended in this batch; dropped from memory at its end.
    finished: Vec<String>,
    /// Stale attempts told to stop in this batch.
    fenced: BTreeSet<(SessionId, String, u32)>,
    /// Prefetched attempts being taken back: job id → attempt.
    revoking: BTreeMap<String, u32>,
    /// A slot may have freed, a take-back resolved or a job been queued in
    /// this batch: look for prefetched jobs to take back at its end.
    recheck_waiting: bool,
    /// Jobs were queued since the last dispatch (which placed every job it
    /// could): with [`fleet::Fleet::take_grown`], whether placement can
    /// find anything new.
    queued_since_dispatch: bool,
}

impl Engine {
    /// An engine with nothing in it.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            limits: Limits::default(),
            jobs: HashMap::new(),
            queue: BTreeMap::new(),
            workers: fleet::Fleet::default(),
            sessions: HashMap::new(),
            next_seq: 1,
            seq_slot: None,
            pending_acks: BTreeMap::new(),
            finished: Vec::new(),
            fenced: BTreeSet::new(),
            revoking: BTreeMap::new(),
            recheck_waiting: false,
            queued_since_dispatch: false,
        }
    }

    /// Rebuilds the engine from the store after a start: every unfinished
    /// job, the stored log ends of their current attempts, the known workers
    /// and the highest submission sequence. Jobs that were assigned or
    /// running keep their worker, which has `lease_grace_ms` from `now` to
    /// come back.
    pub fn recover(
        config: EngineConfig,
        unfinished: Vec<Job>,
        log_ends: &HashMap<(String, u32), [StreamTotal; 2]>,
        workers: Vec<WorkerRecord>,
        max_seq: u64,
        now: Millis,
    ) -> Engine {
        let mut engine = Engine::new(config);
        engine.next_seq = max_seq + 1;
        for w in workers {
            engine.workers.upsert(&w.id, now, |worker| {
                worker.labels = w.labels.into_iter().collect();
                worker.slots = w.slots;
            });
        }
        for job in unfinished {
            let stored = log_ends
                .get(&(job.id.clone(), job.attempt))
                .copied()
                .unwrap_or_default();
            let mut holders = BTreeMap::new();
            if let Some(w) = job.worker.clone().filter(|_| job.attempt > 0) {
                holders.insert(job.attempt, w);
            }
            match job.state {
                JobState::Queued => engine.enqueue(&job),
                _ => {
                    let worker_id = job.worker.clone().unwrap_or_default();
                    engine.workers.upsert(&worker_id, now, |worker| {
                        worker.jobs.insert(job.id.clone());
                        worker.last_seen = now;
                    });
                }
            }
            engine.jobs.insert(
                job.id.clone(),
                LiveJob {
                    job,
                    stored,
                    holders,
                },
            );
        }
        engine
    }

    /// The same engine, checking submissions against `limits` (the default
    /// is [`Limits::default`]).
    pub fn with_limits(mut self, limits: Limits) -> Engine {
        self.limits = limits;
        self
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// What a submitted spec may hold.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Whether the shell must look `job_id` up in the store before a
    /// `Submit` or `Cancel` input: true when the job is not in memory and
    /// the id is valid. An invalid id names no job (the engine refuses it),
    /// and looking it up could fail in the store (PostgreSQL refuses NUL
    /// bytes) and be taken for an outage.
    pub fn needs_lookup(&self, job_id: &str) -> bool {
        !self.jobs.contains_key(job_id) && crate::spec::validate_job_id(job_id).is_ok()
    }

    /// The live job with this id, if it is not finished.
    pub fn live_job(&self, job_id: &str) -> Option<&Job> {
        self.jobs.get(job_id).map(|l| &l.job)
    }

    /// Number of jobs waiting for a worker.
    pub fn queue_len(&self) -> usize {
        self.queue.len()
    }

    /// Applies one input.
    pub fn handle(&mut self, input: Input, now: Millis, out: &mut Output) {
        match input {
            Input::Submit {
                req,
                id,
                spec,
                submitter,
                fresh: _,
                existing,
            } => self.submit(req, id, spec, submitter, existing, now, out),
            Input::Cancel {
                req,
                id,
                reason,
                existing,
            } => self.cancel(req, id, reason, existing, now, out),
            Input::Register {
                req,
                worker_id,
                labels,
                slots,
            } => self.register(req, worker_id, labels, slots, now, out),
            Input::ListWorkers { req } => {
                let list = self.workers.keys().map(|id| self.worker_info(id)).collect();
                out.replies.push((req, Reply::Workers(list)));
            }
            Input::Attach {
                session,
                worker_id,
                labels,
                slots,
                prefetch,
                running,
            } => {
                let capacity = Capacity { slots, prefetch };
                self.attach(session, worker_id, labels, capacity, running, now, out)
            }
            Input::Detach { session } => self.detach(session, now, out),
            Input::Heartbeat { session } => self.touch(session, now),
            Input::Drain { session } => self.drain(session, now, out),
            Input::Started {
                session,
                job_id,
                attempt,
            } => self.started(session, job_id, attempt, now, out),
            Input::Rejected {
                session,
                job_id,
                attempt,
                reason,
            } => self.rejected(session, job_id, attempt, reason, now, out),
            Input::Log {
                session,
                req,
                job_id,
                attempt,
                stream,
                offset,
                data,
                timestamp_ms,
                only_workers,
            } => {
                if let Some(req) = req
                    && let Err(e) = self.seed_may_log(&job_id, only_workers.as_deref())
                {
                    out.replies.push((req, Reply::Error(e)));
                    return;
                }
                self.log(
                    session,
                    req,
                    job_id,
                    attempt,
                    stream,
                    offset,
                    data,
                    timestamp_ms,
                    out,
                )
            }
            Input::Running { session, running } => self.running(session, running, now, out),
            Input::Result {
                session,
                job_id,
                attempt,
                outcome,
                totals,
            } => self.result(session, job_id, attempt, outcome, totals, now, out),
            Input::Tick => self.expire_leases(now, out),
            Input::Adopt { jobs, orphans } => self.adopt(jobs, orphans, now, out),
            Input::Forget { job_ids } => self.forget(&job_ids),
            Input::Shutdown {
                reconnect_within_ms,
            } => {
                for session in self.sessions.keys() {
                    out.messages.push((
                        *session,
                        ToAgent::Shutdown {
                            reconnect_within_ms,
                        },
                    ));
                    out.close_sessions.push(*session);
                }
            }
        }
    }

    /// Ends a batch: places queued jobs on free workers, takes back
    /// prefetched jobs that a slot left free can run, queues the log
    /// acknowledgements and drops finished jobs from memory.
    pub fn end_batch(&mut self, now: Millis, out: &mut Output) {
        self.dispatch(now, out);
        if std::mem::take(&mut self.recheck_waiting) {
            self.revoke_waiting(out);
        }
        for ((session, job_id), resend) in std::mem::take(&mut self.pending_acks) {
            if let Some(live) = self.jobs.get(&job_id) {
                out.messages.push((
                    session,
                    ToAgent::LogAck {
                        job_id,
                        attempt: live.job.attempt,
                        offsets: [live.stored[0].bytes, live.stored[1].bytes],
                        resend,
                    },
                ));
            }
        }
        self.fenced.clear();
        for id in std::mem::take(&mut self.finished) {
            if self
                .jobs
                .get(&id)
                .is_some_and(|l| l.job.state.is_terminal())
            {
                self.jobs.remove(&id);
            }
        }
    }

    fn enqueue(&mut self, job: &Job) {
        self.recheck_waiting = true;
        self.queued_since_dispatch = true;
        self.queue.insert(queue_key(job), queued_job(job));
    }

    fn dequeue(&mut self, job: &Job) {
        self.queue.remove(&queue_key(job));
    }
}

/// Where `job` stands in the queue: priority, then submission order.
fn queue_key(job: &Job) -> QueueKey {
    QueueKey::new(job.spec.priority, job.seq)
}

/// `job` as the scheduler sees it.
fn queued_job(job: &Job) -> QueuedJob {
    QueuedJob {
        id: job.id.clone(),
        requires: job.spec.required_labels().map(str::to_string).collect(),
    }
}

#[cfg(test)]
mod tests;
