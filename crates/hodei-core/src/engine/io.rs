//! The engine's inputs and outputs: plain data exchanged with the shell.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState, Millis, Outcome};
use crate::log::{LogStream, StreamTotal};
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

/// A job taken into memory with [`Input::Adopt`], with what of its current
/// attempt's log is stored (size and checksum per stream).
#[derive(Debug, Clone)]
pub struct Adopted {
    pub job: Job,
    pub stored: [StreamTotal; 2],
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
        /// The id of the submitting token, recorded on a new job (`None` when auth is off).
        submitter: Option<String>,
        /// The orchestrator made `id` (a new UUIDv7) for this submission:
        /// no stored job can have it, so the shell does not look it up.
        fresh: bool,
        existing: Option<Box<Job>>,
    },
    /// Jobs this orchestrator takes into memory when several share one
    /// database: queued jobs another replica put in the shared queue, or
    /// attempts it now owns (their agent attached here, or their replica
    /// died). With `orphans` (their replica died), an attempt that never
    /// started goes back to the queue: its agent attached elsewhere without
    /// it, or has not come back. Otherwise nothing is written.
    Adopt {
        jobs: Vec<Adopted>,
        orphans: bool,
    },
    /// Jobs that are no longer this orchestrator's (another replica claimed
    /// or finished them): dropped from memory, nothing written or sent.
    Forget {
        job_ids: Vec<String>,
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
        /// Assignments it takes beyond its slots, queued until one frees.
        prefetch: u32,
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
        /// Seed `StreamLogs` from an agent (not admin) credential: the job's
        /// current attempt must be held by one of these workers (those bound
        /// to the caller's identity), else `PermissionDenied`. `None`: no
        /// such restriction (admin; agent sessions are judged by session).
        only_workers: Option<Vec<String>>,
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
    /// The attempts an agent says it runs (its heartbeat): each must be its
    /// own, else the session is refused.
    Running {
        session: SessionId,
        running: Vec<AttemptRef>,
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
    /// Take back an attempt the agent holds beyond its slots and has not
    /// started; it answers `Rejected` if so, else ignores this.
    Revoke {
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
    /// The agent reported on an attempt that is not its own: its session
    /// ends with PERMISSION_DENIED (and is closed by the same batch).
    Denied {
        reason: String,
    },
}

/// A worker as users see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerInfo {
    pub id: String,
    pub labels: Vec<String>,
    pub slots: u32,
    /// Assignments it takes beyond its slots, each waiting on the agent
    /// for a slot to free (0 when the agent did not ask for any).
    #[serde(default)]
    pub prefetch: u32,
    /// The jobs it holds: at most `slots` run, the rest wait for a slot.
    pub running: Vec<String>,
    /// ready | busy | draining | offline
    pub state: String,
    pub last_seen: Millis,
}

impl WorkerInfo {
    /// Slots in use, and the jobs it holds beyond them (prefetched), each
    /// waiting on the agent for a slot.
    pub fn slots_in_use(&self) -> (usize, usize) {
        let held = self.running.len();
        let used = held.min(self.slots as usize);
        (used, held - used)
    }
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
    #[error("permission denied: {0}")]
    PermissionDenied(String),
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
    /// Another replica changed the job's record or stored some of its log
    /// (it does not say which): followers here read both again.
    JobTouched {
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
