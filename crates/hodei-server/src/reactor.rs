//! The reactor: the one task that owns the [`Engine`].
//!
//! Everything that changes state (submissions, cancels, agent reports, lease
//! ticks) arrives here as a command. The reactor takes all commands waiting
//! in its queue as one batch, looks up in the store the jobs the engine does
//! not hold, feeds the batch to the engine, commits the engine's writes in
//! one transaction, and only then sends messages to agents, replies to
//! callers and notices to followers. A busy orchestrator therefore commits
//! many events per fsync (group commit), and nothing is acknowledged before
//! it is on disk.
//!
//! When several replicas share the store, `replication` adds what they
//! need: adopting and forgetting shared jobs, fenced commits, take-overs.

mod replication;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hodei_core::Millis;
use hodei_core::engine::{Engine, Input, Notice, Reply, RequestId, SessionId, ToAgent};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::store::{Store, StoreError};

/// Most commands taken into one batch.
const MAX_BATCH: usize = 4096;
/// Most log bytes taken into one batch.
const MAX_BATCH_LOG_BYTES: usize = 32 * 1024 * 1024;
/// How often commits are retried before the reactor gives up on its state.
const COMMIT_ATTEMPTS: u32 = 3;
/// How often the store is probed while it is unavailable (doubling).
const OUTAGE_RETRY_MIN: Duration = Duration::from_millis(100);
const OUTAGE_RETRY_MAX: Duration = Duration::from_secs(2);

/// A command for the reactor. Inputs are moved through the channel once;
/// boxing them would add an allocation per event for no gain.
#[allow(clippy::large_enum_variant)]
enum Command {
    Input(Input, Option<oneshot::Sender<Reply>>),
    /// Requests answered together: always in one batch (one transaction),
    /// the replies in the order of the inputs.
    Inputs(Vec<Input>, oneshot::Sender<Vec<Reply>>),
    /// Registers the channel of a new agent session; sent before its `Attach`.
    OpenSession(SessionId, mpsc::UnboundedSender<ToAgent>),
    /// From the replica machinery's background tasks.
    Cluster(replication::ClusterCommand),
}

/// Why a request got no reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    #[error("the orchestrator is shutting down or failed; try again")]
    Unavailable,
}

/// A cheap, cloneable handle to the reactor.
#[derive(Clone)]
pub struct Hub {
    tx: mpsc::Sender<Command>,
    notices: broadcast::Sender<Notice>,
    ids: Arc<AtomicU64>,
}

impl Hub {
    /// A new request id, unique for this process.
    pub fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `make(req)` and waits for its reply.
    pub async fn request(&self, make: impl FnOnce(RequestId) -> Input) -> Result<Reply, HubError> {
        let req = self.next_id();
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Input(make(req), Some(tx)))
            .await
            .map_err(|_| HubError::Unavailable)?;
        rx.await.map_err(|_| HubError::Unavailable)
    }

    /// Sends requests made with ids from [`Hub::next_id`] as one command:
    /// they are applied in one batch and committed in one transaction.
    /// Returns their replies in order.
    pub async fn request_all(&self, inputs: Vec<Input>) -> Result<Vec<Reply>, HubError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Command::Inputs(inputs, tx))
            .await
            .map_err(|_| HubError::Unavailable)?;
        rx.await.map_err(|_| HubError::Unavailable)
    }

    /// Sends an input that needs no reply (agent reports).
    pub async fn send(&self, input: Input) -> Result<(), HubError> {
        self.tx
            .send(Command::Input(input, None))
            .await
            .map_err(|_| HubError::Unavailable)
    }

    /// Opens an agent session: returns its id and the receiver of the
    /// messages the engine sends it. Send `Input::Attach` next.
    pub async fn open_session(
        &self,
    ) -> Result<(SessionId, mpsc::UnboundedReceiver<ToAgent>), HubError> {
        let session = self.next_id();
        let (tx, rx) = mpsc::unbounded_channel();
        self.tx
            .send(Command::OpenSession(session, tx))
            .await
            .map_err(|_| HubError::Unavailable)?;
        Ok((session, rx))
    }

    /// Subscribes to job and log changes, for live followers.
    pub fn subscribe(&self) -> broadcast::Receiver<Notice> {
        self.notices.subscribe()
    }
}

/// The current time in Unix milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// Starts the reactor over a recovered engine. It runs until every [`Hub`]
/// is dropped. If the store cannot commit, in-memory state that is not
/// durable must not be acted upon: the reactor refuses work until the store
/// is back, then rebuilds its state from it (see `Reactor::outage`).
pub fn start(
    engine: Engine,
    store: Arc<dyn Store>,
) -> (Hub, tokio::task::JoinHandle<Result<(), StoreError>>) {
    let (tx, rx) = mpsc::channel(16 * 1024);
    let (notices, _) = broadcast::channel(16 * 1024);
    let hub = Hub {
        tx,
        notices: notices.clone(),
        ids: Arc::new(AtomicU64::new(1)),
    };
    let tick_every = Duration::from_millis((engine.config().lease_grace_ms / 10).clamp(50, 1000));
    if store.cluster().is_some() {
        replication::spawn(store.clone(), hub.tx.downgrade());
    }
    let reactor = Reactor {
        engine,
        store,
        notices,
        sessions: HashMap::new(),
        retry: Vec::new(),
        remote_notices: Vec::new(),
    };
    let task = tokio::spawn(reactor.run(rx, hub.tx.downgrade(), tick_every));
    (hub, task)
}

struct Reactor {
    engine: Engine,
    store: Arc<dyn Store>,
    notices: broadcast::Sender<Notice>,
    sessions: HashMap<SessionId, mpsc::UnboundedSender<ToAgent>>,
    /// Requests to apply again in the next batch: the job they named turned
    /// out to belong to another replica.
    retry: Vec<Command>,
    /// Changes other replicas announced, for live followers here.
    remote_notices: Vec<Notice>,
}

impl Reactor {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        ticker: mpsc::WeakSender<Command>,
        tick_every: Duration,
    ) -> Result<(), StoreError> {
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(tick_every);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                interval.tick().await;
                let Some(tx) = ticker.upgrade() else { return };
                if tx.send(Command::Input(Input::Tick, None)).await.is_err() {
                    return;
                }
            }
        });
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            if self.retry.is_empty() {
                match rx.recv().await {
                    Some(first) => batch.push(first),
                    None => break,
                }
            } else {
                batch.append(&mut self.retry);
            }
            // Let the tasks that are ready to run (agent sessions, API
            // handlers) queue what they have before the batch is closed:
            // a busy orchestrator then commits more events per fsync. It
            // costs an idle one a trip through the scheduler, microseconds.
            tokio::task::yield_now().await;
            let mut log_bytes = 0;
            while batch.len() < MAX_BATCH && log_bytes < MAX_BATCH_LOG_BYTES {
                match rx.try_recv() {
                    Ok(cmd) => {
                        if let Command::Input(Input::Log { data, .. }, _) = &cmd {
                            log_bytes += data.len();
                        }
                        batch.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            if let Err(e) = self.process(&mut batch).await {
                batch.clear();
                self.outage(e, &mut rx).await;
            }
        }
        Ok(())
    }

    /// The store failed a commit or a read the batch needed: the engine's
    /// state may now be ahead of what is durable, so it is thrown away.
    /// Every agent session is closed (agents redial and resend what was not
    /// acknowledged) and every command is refused (callers are told to try
    /// again) until the store answers; then the engine is rebuilt from the
    /// store, as at a restart. Nothing acknowledged is lost: replies and
    /// acknowledgements are only ever sent after a commit.
    async fn outage(&mut self, error: StoreError, rx: &mut mpsc::Receiver<Command>) {
        tracing::error!(%error, "the store failed; refusing work until it is back");
        crate::metrics::on_store_outage(true);
        self.sessions.clear();
        self.retry.clear();
        self.remote_notices.clear();
        let mut retry = OUTAGE_RETRY_MIN;
        loop {
            let wait = tokio::time::sleep(retry);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    () = &mut wait => break,
                    // Dropping a command drops its reply sender: the caller
                    // gets "unavailable". A new session is closed at once.
                    cmd = rx.recv() => if cmd.is_none() { return },
                }
            }
            match self.store.ping().await {
                Ok(()) => {
                    match crate::recovery::recover_engine(self.store.as_ref(), self.engine.config())
                        .await
                    {
                        Ok(engine) => {
                            self.engine = engine.with_limits(*self.engine.limits());
                            crate::metrics::on_store_outage(false);
                            tracing::info!("the store is back; state rebuilt from it");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "the store answers but recovery failed; retrying")
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "the store is still unavailable"),
            }
            retry = (retry * 2).min(OUTAGE_RETRY_MAX);
        }
    }

    async fn process(&mut self, batch: &mut Vec<Command>) -> Result<(), StoreError> {
        let first = self.before_batch(batch).await?;
        let stored = self.lookup(batch).await?;
        let now = now_ms();
        let mut out = hodei_core::engine::Output::default();
        for input in first {
            self.engine.handle(input, now, &mut out);
        }
        let replicated = self.store.cluster().is_some();
        // With replicas, the requests naming a job, to retry if it is lost.
        let mut named: HashMap<RequestId, Input> = HashMap::new();
        let mut waiting: Vec<(RequestId, oneshot::Sender<Reply>)> = Vec::new();
        let mut waiting_all: Vec<(Vec<RequestId>, oneshot::Sender<Vec<Reply>>)> = Vec::new();
        for cmd in batch.drain(..) {
            match cmd {
                Command::Inputs(inputs, reply) => {
                    let mut reqs = Vec::with_capacity(inputs.len());
                    for mut input in inputs {
                        reqs.extend(request_id(&input));
                        fill_existing(&mut input, &stored);
                        crate::metrics::on_input(&input);
                        self.engine.handle(input, now, &mut out);
                    }
                    waiting_all.push((reqs, reply));
                }
                Command::OpenSession(id, tx) => {
                    self.sessions.insert(id, tx);
                }
                // Taken out by `before_batch`.
                Command::Cluster(_) => {}
                Command::Input(mut input, reply) => {
                    if let Some(reply) = reply
                        && let Some(req) = request_id(&input)
                    {
                        waiting.push((req, reply));
                        if replicated && replication::job_named(&input).is_some() {
                            named.insert(req, input.clone());
                        }
                    }
                    fill_existing(&mut input, &stored);
                    crate::metrics::on_input(&input);
                    self.engine.handle(input, now, &mut out);
                }
            }
        }
        self.engine.end_batch(now, &mut out);
        if !out.writes.is_empty() {
            let started = std::time::Instant::now();
            let lost: HashSet<String> = self.commit(&out.writes).await?.into_iter().collect();
            tracing::debug!(
                jobs = out.writes.jobs.len(),
                logs = out.writes.logs.len(),
                micros = started.elapsed().as_micros() as u64,
                "batch committed"
            );
            if !lost.is_empty() {
                self.forget_lost(&lost, &mut out, now);
                // Their answers were computed on a job another replica owns:
                // apply them again, against the store's version.
                let (again, rest): (Vec<_>, Vec<_>) = waiting.into_iter().partition(|(req, _)| {
                    named
                        .get(req)
                        .and_then(replication::job_named)
                        .is_some_and(|id| lost.contains(id))
                });
                waiting = rest;
                for (req, tx) in again {
                    if let Some(input) = named.remove(&req) {
                        self.retry.push(Command::Input(input, Some(tx)));
                    }
                }
            }
        }
        crate::metrics::on_batch(&out, self.engine.queue_len());
        for (session, msg) in out.messages {
            if let Some(tx) = self.sessions.get(&session)
                && tx.send(msg).is_err()
            {
                self.sessions.remove(&session);
            }
        }
        let mut replies: HashMap<RequestId, Reply> = out.replies.into_iter().collect();
        for (req, tx) in waiting {
            if let Some(reply) = replies.remove(&req) {
                let _ = tx.send(reply);
            }
        }
        for (reqs, tx) in waiting_all {
            // A request without a reply drops the sender: the caller is told.
            let all: Option<Vec<Reply>> = reqs.iter().map(|r| replies.remove(r)).collect();
            if let Some(all) = all {
                let _ = tx.send(all);
            }
        }
        for notice in out.notices.into_iter().chain(self.remote_notices.drain(..)) {
            // No subscriber is fine.
            let _ = self.notices.send(notice);
        }
        for session in out.close_sessions {
            self.sessions.remove(&session);
        }
        Ok(())
    }

    /// Reads from the store the jobs that submissions and cancels in this
    /// batch name but the engine does not hold.
    async fn lookup(
        &self,
        batch: &[Command],
    ) -> Result<HashMap<String, hodei_core::Job>, StoreError> {
        let inputs = batch.iter().flat_map(|cmd| match cmd {
            Command::Input(input, _) => std::slice::from_ref(input),
            Command::Inputs(inputs, _) => inputs.as_slice(),
            Command::OpenSession(..) | Command::Cluster(_) => &[],
        });
        let ids: Vec<String> = inputs
            .filter_map(|input| match input {
                Input::Submit {
                    id, fresh: false, ..
                }
                | Input::Cancel { id, .. }
                    if self.engine.needs_lookup(id) =>
                {
                    Some(id.clone())
                }
                _ => None,
            })
            .collect();
        if ids.is_empty() {
            return Ok(HashMap::new());
        }
        let jobs = self.store.get_jobs(&ids).await?;
        Ok(jobs.into_iter().map(|j| (j.id.clone(), j)).collect())
    }

    /// Commits `writes`; returns the jobs that turned out to be another
    /// replica's (fenced, not written).
    async fn commit(&self, writes: &hodei_core::engine::Writes) -> Result<Vec<String>, StoreError> {
        let mut attempt = 1;
        loop {
            let started = std::time::Instant::now();
            let committed = match self.store.cluster() {
                Some(cluster) => cluster.commit_fenced(writes).await,
                None => self.store.commit(writes).await.map(|()| Vec::new()),
            };
            crate::metrics::on_commit(started.elapsed(), committed.is_ok());
            match committed {
                Ok(lost) => return Ok(lost),
                Err(e) if attempt < COMMIT_ATTEMPTS => {
                    tracing::warn!(error = %e, attempt, "store commit failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                    attempt += 1;
                }
                Err(e) => {
                    tracing::error!(error = %e, "store commit failed");
                    return Err(e);
                }
            }
        }
    }
}

fn request_id(input: &Input) -> Option<RequestId> {
    match input {
        Input::Submit { req, .. }
        | Input::Cancel { req, .. }
        | Input::Register { req, .. }
        | Input::ListWorkers { req } => Some(*req),
        Input::Log { req, .. } => *req,
        _ => None,
    }
}

fn fill_existing(input: &mut Input, stored: &HashMap<String, hodei_core::Job>) {
    match input {
        Input::Submit { id, existing, .. } | Input::Cancel { id, existing, .. } => {
            *existing = stored.get(id.as_str()).cloned().map(Box::new);
        }
        _ => {}
    }
}
