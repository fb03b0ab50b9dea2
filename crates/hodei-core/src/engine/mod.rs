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

mod jobs;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState, Millis, Outcome};
use crate::log::{LogStream, StreamTotal};
use crate::scheduler::{QueueKey, QueuedJob};
use crate::spec::{InvalidInput, JobSpec};

/// Identifies one agent connection (an `Attach` stream).
pub type SessionId = u64;
/// Identifies a caller waiting for a [`Reply`].
pub type RequestId = u64;

/// Timing rules of worker leases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// How often agents send heartbeats.
    pub heartbeat_interval_ms: u64,
    /// How long a worker may be silent (or disconnected) before it is
    /// declared offline and its jobs lost.
    pub lease_grace_ms: u64,
}

impl Default for EngineConfig {
    fn default() -> EngineConfig {
        EngineConfig {
            heartbeat_interval_ms: 5_000,
            lease_grace_ms: 30_000,
        }
    }
}

/// A job attempt an agent says it is running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRef {
    pub job_id: String,
    pub attempt: u32,
}

/// Something that happened, fed to [`Engine::handle`].
#[derive(Debug, Clone)]
pub enum Input {
    /// A user submits a job. `existing` is the store's record of `id` when
    /// the job is not live (the shell looks it up; see [`Engine::needs_lookup`]).
    Submit {
        req: RequestId,
        id: String,
        spec: JobSpec,
        existing: Option<Box<Job>>,
    },
    /// A user cancels a job; `existing` as for `Submit`.
    Cancel {
        req: RequestId,
        id: String,
        reason: String,
        existing: Option<Box<Job>>,
    },
    /// A worker registers through the seed `RegisterWorker` RPC.
    Register {
        req: RequestId,
        worker_id: String,
        labels: Vec<String>,
        slots: u32,
    },
    /// A user asks for the workers and their state.
    ListWorkers {
        req: RequestId,
    },
    /// An agent opened a session.
    Attach {
        session: SessionId,
        worker_id: String,
        labels: Vec<String>,
        slots: u32,
        running: Vec<AttemptRef>,
    },
    /// An agent's session ended (stream closed or broken).
    Detach {
        session: SessionId,
    },
    Heartbeat {
        session: SessionId,
    },
    /// The agent will take no new work.
    Drain {
        session: SessionId,
    },
    Started {
        session: SessionId,
        job_id: String,
        attempt: u32,
    },
    Rejected {
        session: SessionId,
        job_id: String,
        attempt: u32,
        reason: String,
    },
    /// Log bytes. From an agent: `session` and `offset` are set. From the
    /// seed `StreamLogs` RPC: no session, no offset (append at the end),
    /// `req` gets the reply.
    Log {
        session: Option<SessionId>,
        req: Option<RequestId>,
        job_id: String,
        attempt: u32,
        stream: LogStream,
        offset: Option<u64>,
        data: Bytes,
        timestamp_ms: Millis,
    },
    Result {
        session: SessionId,
        job_id: String,
        attempt: u32,
        outcome: Outcome,
        /// What the agent produced on (stdout, stderr), to verify the stored
        /// log against; `None` when the agent did not say.
        totals: Option<[StreamTotal; 2]>,
    },
    /// Time passes: leases are checked.
    Tick,
    /// The orchestrator is stopping: every agent is told to reconnect later.
    Shutdown {
        reconnect_within_ms: u64,
    },
}

/// A message to one agent session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ToAgent {
    Welcome {
        worker_id: String,
    },
    Assign {
        job: Box<Job>,
        stdout_offset: u64,
        stderr_offset: u64,
    },
    Cancel {
        job_id: String,
        attempt: u32,
        reason: String,
    },
    LogAck {
        job_id: String,
        attempt: u32,
        offsets: [u64; 2],
        /// Bytes from `offsets` on are missing: send them again.
        resend: bool,
    },
    ResultAck {
        job_id: String,
        attempt: u32,
    },
    /// The orchestrator is stopping; reconnect within this many ms.
    Shutdown {
        reconnect_within_ms: u64,
    },
}

/// A worker as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub running: Vec<String>,
    /// ready | busy | draining | offline
    pub state: String,
    pub last_seen: Millis,
}

/// The answer to a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The job as submitted; `created` is false when an identical job existed.
    Submitted {
        job: Box<Job>,
        created: bool,
    },
    /// The job after the cancel request.
    Cancelled {
        job: Box<Job>,
    },
    Worker(WorkerInfo),
    Workers(Vec<WorkerInfo>),
    LogAppended,
    Error(EngineError),
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error("job {0} not found")]
    NotFound(String),
    #[error("job {0} already exists with a different spec")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
}

/// A log chunk to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogWrite {
    pub job_id: String,
    pub attempt: u32,
    pub stream: LogStream,
    pub offset: u64,
    pub data: Bytes,
    pub timestamp_ms: Millis,
}

/// A worker's durable record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: String,
    pub labels: Vec<String>,
    pub slots: u32,
    pub last_seen: Millis,
}

/// What changed, for live followers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    JobChanged {
        job_id: String,
        state: JobState,
    },
    LogAppended {
        job_id: String,
    },
    /// A worker attached, detached, registered, started draining or went
    /// offline. (Its running jobs change with `JobChanged` notices.)
    WorkerChanged {
        worker_id: String,
    },
}

/// What one batch must make durable, in one transaction.
#[derive(Debug, Default)]
pub struct Writes {
    /// Job records to upsert (the latest version of each).
    pub jobs: BTreeMap<String, Job>,
    /// Log chunks to append, in arrival order.
    pub logs: Vec<LogWrite>,
    pub workers: BTreeMap<String, WorkerRecord>,
}

impl Writes {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.logs.is_empty() && self.workers.is_empty()
    }
}

/// Everything one batch of inputs asks the shell to do, in this order:
/// commit `writes` in one transaction; then send `messages`, `replies` and
/// `notices`; then close `close_sessions`.
#[derive(Debug, Default)]
pub struct Output {
    pub writes: Writes,
    pub messages: Vec<(SessionId, ToAgent)>,
    pub replies: Vec<(RequestId, Reply)>,
    pub notices: Vec<Notice>,
    pub close_sessions: Vec<SessionId>,
}

/// A job that is not finished, and what of its current attempt's log is
/// stored (size and checksum per stream).
#[derive(Debug, Clone)]
struct LiveJob {
    job: Job,
    stored: [StreamTotal; 2],
}

/// A worker known to the engine.
#[derive(Debug, Clone)]
struct Worker {
    labels: BTreeSet<String>,
    slots: u32,
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
    jobs: HashMap<String, LiveJob>,
    queue: BTreeMap<QueueKey, QueuedJob>,
    workers: BTreeMap<String, Worker>,
    sessions: HashMap<SessionId, String>,
    next_seq: u64,
    /// Sessions and jobs whose log acknowledgement is due at the end of the
    /// batch, and whether it asks for a resend.
    pending_acks: BTreeMap<(SessionId, String), bool>,
    /// Jobs that ended in this batch; dropped from memory at its end.
    finished: Vec<String>,
}

impl Engine {
    /// An engine with nothing in it.
    pub fn new(config: EngineConfig) -> Engine {
        Engine {
            config,
            jobs: HashMap::new(),
            queue: BTreeMap::new(),
            workers: BTreeMap::new(),
            sessions: HashMap::new(),
            next_seq: 1,
            pending_acks: BTreeMap::new(),
            finished: Vec::new(),
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
            let worker = engine.worker_entry(&w.id, now);
            worker.labels = w.labels.into_iter().collect();
            worker.slots = w.slots;
        }
        for job in unfinished {
            let stored = log_ends
                .get(&(job.id.clone(), job.attempt))
                .copied()
                .unwrap_or_default();
            match job.state {
                JobState::Queued => engine.enqueue(&job),
                _ => {
                    let worker_id = job.worker.clone().unwrap_or_default();
                    let worker = engine.worker_entry(&worker_id, now);
                    worker.jobs.insert(job.id.clone());
                    worker.last_seen = now;
                }
            }
            engine.jobs.insert(job.id.clone(), LiveJob { job, stored });
        }
        engine
    }

    pub fn config(&self) -> EngineConfig {
        self.config
    }

    /// Whether the shell must look `job_id` up in the store before a
    /// `Submit` or `Cancel` input: true when the job is not in memory.
    pub fn needs_lookup(&self, job_id: &str) -> bool {
        !self.jobs.contains_key(job_id)
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
                existing,
            } => self.submit(req, id, spec, existing, now, out),
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
                running,
            } => self.attach(session, worker_id, labels, slots, running, now, out),
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
            } => self.log(
                session,
                req,
                job_id,
                attempt,
                stream,
                offset,
                data,
                timestamp_ms,
                out,
            ),
            Input::Result {
                session,
                job_id,
                attempt,
                outcome,
                totals,
            } => self.result(session, job_id, attempt, outcome, totals, now, out),
            Input::Tick => self.expire_leases(now, out),
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

    /// Ends a batch: places queued jobs on free workers, queues the log
    /// acknowledgements and drops finished jobs from memory.
    pub fn end_batch(&mut self, now: Millis, out: &mut Output) {
        self.dispatch(now, out);
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
        self.queue.insert(
            QueueKey::new(job.spec.priority, job.seq),
            QueuedJob {
                id: job.id.clone(),
                requires: job.spec.required_labels().map(str::to_string).collect(),
            },
        );
    }

    fn dequeue(&mut self, job: &Job) {
        self.queue
            .remove(&QueueKey::new(job.spec.priority, job.seq));
    }
}

#[cfg(test)]
mod tests;
