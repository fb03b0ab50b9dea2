//! The agent's connection to the orchestrator: dial out, `Attach`, say
//! `Hello`, then take assignments and cancels while sending heartbeats, logs
//! and results. When the connection drops the jobs keep running; the agent
//! redials with exponential backoff and full jitter and, once back, resends
//! everything not yet acknowledged. On drain it takes no new work, finishes
//! what it runs, and leaves once every result is acknowledged. When the
//! orchestrator announces its shutdown (`Shutdown`), the session ends, the
//! jobs keep running, and the agent redials after a random delay of up to
//! `reconnect_within_ms` (then with the usual backoff).
//!
//! An agent may be given several orchestrator URLs (replicas): it attaches
//! to one at a time and fails over to the next when a dial fails, a session
//! drops or the orchestrator shuts down; see [`crate::servers`].
//!
//! What is owed to the orchestrator is kept in an on-disk spool
//! ([`crate::spool`]) that outlives the agent: see [`crate::recover`] for
//! what a restarted agent does with it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

pub use crate::config::{AgentConfig, AgentError, DEFAULT_SPOOL_MAX_BYTES, parse_size};
use crate::docker::DockerExecutor;
use crate::executor::{Executor, now_ms};
use crate::outbox::Outbox;
use crate::runner::Runner;
pub use crate::servers::full_jitter;
use crate::servers::{Outcome, Rotation, Target};
use crate::workdir::WorkDirs;

/// Why one session ended.
#[derive(Debug)]
enum SessionEnd {
    /// Drained: nothing left to run or report.
    Done,
    /// Connection failed or dropped; try again.
    Lost(String),
    /// The orchestrator is shutting down: redial within this time.
    Shutdown(Duration),
}

/// Connects to the Docker engine (when configured) and removes the
/// containers an earlier run of this agent left. `None` when there is no
/// engine to use: then the agent does not advertise `docker`.
async fn start_docker(config: &AgentConfig) -> Option<Arc<DockerExecutor>> {
    let docker_config = config.docker.clone()?;
    let docker = match DockerExecutor::connect(docker_config, &config.name).await {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "no Docker engine: jobs with an image will not be sent to this agent");
            return None;
        }
    };
    match docker.remove_leftovers().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            containers = n,
            "removed containers an earlier run of this agent left"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "cannot list the containers an earlier run of this agent left")
        }
    }
    Some(Arc::new(docker))
}

/// The labels the agent advertises: its own, with `docker` exactly when it
/// has an engine to run image jobs on.
pub fn advertised_labels(labels: &[String], docker: bool) -> Vec<String> {
    let cap = hodei_core::spec::DOCKER_CAPABILITY;
    let mut out: Vec<String> = labels.iter().filter(|l| *l != cap).cloned().collect();
    if docker {
        out.push(cap.to_string());
    }
    out
}

/// Runs the agent until it is drained. `drain` turning true means: take no
/// new work, finish the running jobs, report them, then return.
pub async fn run(
    mut config: AgentConfig,
    executor: Arc<dyn Executor>,
    mut drain: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let targets = crate::servers::targets(&config.servers, &config.tls).await?;
    // Creates the work directory and empties its pool of recycled ones.
    let root = config.work_dir.clone();
    let work_dirs = tokio::task::spawn_blocking(move || WorkDirs::open(&root))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)))
        .map_err(|source| AgentError::WorkDir {
            path: config.work_dir.display().to_string(),
            source,
        })?;
    let work_dirs = Arc::new(work_dirs);
    let spool_dir = config.spool_dir();
    let (outbox, recovery) = Outbox::open(spool_dir.clone(), config.spool_max_bytes)
        .await
        .map_err(|source| AgentError::Spool {
            path: spool_dir.display().to_string(),
            source,
        })?;
    for (job, attempt) in &recovery.resumed {
        tracing::info!(job = %job, attempt, "offering the result of an attempt finished before a restart");
    }
    // With the spool locked (no other agent uses it), the containers an
    // earlier run left are removed before their directories are.
    let docker = start_docker(&config).await;
    for (job, attempt, _) in &recovery.abandoned {
        // The job ids come from disk: never let one name another directory.
        if hodei_core::spec::validate_job_id(job).is_err() {
            continue;
        }
        let dir = work_dirs.job_dir(job, *attempt);
        if !config.keep_work_dirs
            && tokio::fs::metadata(&dir).await.is_ok()
            && let Err(e) = tokio::fs::remove_dir_all(&dir).await
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove job directory");
        }
    }
    if docker.is_none()
        && config
            .labels
            .iter()
            .any(|l| l == hodei_core::spec::DOCKER_CAPABILITY)
    {
        tracing::warn!("not advertising the docker label: no Docker engine is reachable");
    }
    config.labels = advertised_labels(&config.labels, docker.is_some());
    let outbox = Arc::new(outbox);
    let runner = Runner {
        slots: Arc::new(crate::slots::Slots::new(config.slots)),
        outbox: outbox.clone(),
        executor,
        docker: docker.map(|d| d as Arc<dyn Executor>),
        work_dirs: work_dirs.clone(),
        keep_work_dirs: config.keep_work_dirs,
    };
    let mut rotation = Rotation::new(targets.len(), config.backoff_min, config.backoff_max);
    loop {
        if *drain.borrow() && outbox.is_empty() {
            close(&outbox, &work_dirs).await;
            return Ok(());
        }
        let target = &targets[rotation.current() % targets.len()];
        let started = Instant::now();
        let end = session(&config, target, &runner, &mut drain).await;
        let outcome = match &end {
            SessionEnd::Done => {
                close(&outbox, &work_dirs).await;
                return Ok(());
            }
            SessionEnd::Shutdown(within) => Outcome::Shutdown(*within),
            // A session that lasted a while resets the backoff.
            SessionEnd::Lost(_) if started.elapsed() > Duration::from_secs(10) => Outcome::Ended,
            SessionEnd::Lost(_) => Outcome::Failed,
        };
        let delay = rotation.advance(outcome);
        let next = &targets[rotation.current() % targets.len()].url;
        match end {
            SessionEnd::Shutdown(_) => {
                tracing::info!(server = %target.url, %next, ?delay, "orchestrator shutting down; reconnecting later");
            }
            SessionEnd::Lost(why) => {
                tracing::warn!(server = %target.url, reason = %why, %next, ?delay, "session lost; reconnecting");
            }
            SessionEnd::Done => {}
        }
        tokio::time::sleep(delay).await;
    }
}

/// The agent is leaving: deletes the pools of emptied directories.
async fn close(outbox: &Outbox, work_dirs: &Arc<WorkDirs>) {
    outbox.close().await;
    let dirs = work_dirs.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || dirs.clear()).await {
        tracing::warn!(error = %e, "cannot delete the recycled job directories");
    }
}

fn message(body: Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

async fn session(
    config: &AgentConfig,
    target: &Target,
    runner: &Runner,
    drain: &mut watch::Receiver<bool>,
) -> SessionEnd {
    let channel = match crate::tls::connect(&target.endpoint, &target.url, &config.tls).await {
        Ok(c) => c,
        Err(e) => return SessionEnd::Lost(format!("connect: {e}")),
    };
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024);
    let outbox = &runner.outbox;
    // Log messages are up to 1 MiB: this bounds what waits for the network.
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(32);
    let hello = pb::Hello {
        registration: Some(pb::WorkerRegistration {
            worker_id: config.name.clone(),
            capabilities: config.labels.clone(),
            slots: config.slots,
            hostname: config.name.clone(),
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        labels: Vec::new(),
        running: outbox.attempts(),
        protocol_version: hwp_proto::PROTOCOL_VERSION,
        prefetch: config.prefetch(),
    };
    if tx.send(message(Body::Hello(hello))).await.is_err() {
        return SessionEnd::Lost("session closed before Hello".into());
    }
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &config.token {
        match format!("Bearer {}", token.expose()).parse() {
            Ok(value) => {
                request.metadata_mut().insert("authorization", value);
            }
            Err(_) => return SessionEnd::Lost("the join token is not a valid header value".into()),
        }
    }
    let mut inbound = match client.attach(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => {
            // A transport failure's cause (e.g. the server refused our
            // certificate) is in the source chain, not in the message.
            let cause = std::error::Error::source(&status)
                .map(|e| format!(": {}", crate::tls::error_chain(e)))
                .unwrap_or_default();
            return SessionEnd::Lost(format!("attach refused: {}{cause}", status.message()));
        }
    };
    let heartbeat = match inbound.message().await {
        Ok(Some(pb::ServerMessage {
            body: Some(pb::server_message::Body::Welcome(w)),
        })) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
        Ok(_) => return SessionEnd::Lost("server did not answer Hello with Welcome".into()),
        Err(status) => return SessionEnd::Lost(format!("attach failed: {}", status.message())),
    };
    tracing::info!(server = %target.url, worker = %config.name, "attached");
    outbox.rewind();
    let sender = tokio::spawn(send_due(outbox.clone(), tx.clone()));
    let beats = tokio::spawn(send_heartbeats(outbox.clone(), tx.clone(), heartbeat));
    let mut told_drain = false;
    let mut drain_open = true;
    let end = loop {
        if *drain.borrow() {
            if !told_drain {
                told_drain = true;
                let _ = tx
                    .send(message(Body::Drain(pb::Drain {
                        reason: "agent is shutting down".into(),
                    })))
                    .await;
            }
            if outbox.is_empty() {
                break SessionEnd::Done;
            }
        }
        tokio::select! {
            msg = inbound.message() => match msg {
                Ok(Some(msg)) => {
                    let draining = *drain.borrow();
                    if let Some(end) = handle(msg, config, runner, &tx, draining).await {
                        break end;
                    }
                }
                Ok(None) => break SessionEnd::Lost("server closed the session".into()),
                Err(status) => break SessionEnd::Lost(status.message().to_string()),
            },
            changed = drain.changed(), if drain_open && !*drain.borrow() => {
                drain_open = changed.is_ok();
            }
        }
    };
    outbox.detach();
    sender.abort();
    beats.abort();
    if matches!(end, SessionEnd::Done) {
        // A drained agent ends its side of the stream and lets the
        // orchestrator end its own: closing the connection at once could
        // drop the `Drain` still queued for the wire. Bounded, for a
        // server that no longer answers.
        let _ = sender.await;
        let _ = beats.await;
        drop(tx);
        let closed = async { while let Ok(Some(_)) = inbound.message().await {} };
        if tokio::time::timeout(CLOSE_WAIT, closed).await.is_err() {
            tracing::warn!(server = %target.url, "the orchestrator did not close the drained session in time");
        }
    }
    end
}

/// How long a drained agent waits for the orchestrator to close the session.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

async fn handle(
    msg: pb::ServerMessage,
    config: &AgentConfig,
    runner: &Runner,
    tx: &mpsc::Sender<pb::AgentMessage>,
    draining: bool,
) -> Option<SessionEnd> {
    use pb::server_message::Body as S;
    let body = msg.body?;
    match body {
        S::Assign(a) => {
            let (job_id, attempt) = (a.job_id.clone(), a.attempt);
            let refused = if draining {
                Err("agent is draining".to_string())
            } else if runner.outbox.running()
                >= config.slots.saturating_add(config.prefetch()) as usize
            {
                Err("no free slot".to_string())
            } else {
                tracing::info!(job = %job_id, attempt, command = ?a.command, "starting job");
                runner.start(a)
            };
            if let Err(reason) = refused {
                tracing::info!(job = %job_id, %reason, "rejecting assignment");
                let rejected = pb::JobRejected {
                    job_id,
                    attempt,
                    reason,
                };
                let _ = tx.send(message(Body::Rejected(rejected))).await;
            }
        }
        S::Cancel(c) => {
            if runner.outbox.cancel(&c.job_id, c.attempt) {
                tracing::info!(job = %c.job_id, reason = %c.reason, "cancelling job");
            }
        }
        S::Revoke(r) => {
            if runner.outbox.revoke(&r.job_id, r.attempt) {
                tracing::info!(job = %r.job_id, attempt = r.attempt, reason = %r.reason, "giving back a job that had not started");
                let rejected = pb::JobRejected {
                    job_id: r.job_id,
                    attempt: r.attempt,
                    reason: format!("revoked: {}", r.reason),
                };
                let _ = tx.send(message(Body::Rejected(rejected))).await;
            }
        }
        S::LogAck(ack) => runner.outbox.ack_logs(&ack).await,
        S::ResultAck(ack) => {
            runner.outbox.ack_result(&ack);
        }
        S::Welcome(_) => {}
        S::Shutdown(s) => {
            tracing::info!(reason = %s.reason, within_ms = s.reconnect_within_ms, "orchestrator is shutting down");
            return Some(SessionEnd::Shutdown(Duration::from_millis(
                s.reconnect_within_ms,
            )));
        }
    }
    None
}

/// Sends what the outbox has due, as soon as it has it.
async fn send_due(outbox: Arc<Outbox>, tx: mpsc::Sender<pb::AgentMessage>) {
    loop {
        let due = outbox.next_batch(4 * 1024 * 1024).await;
        if due.is_empty() {
            outbox.ready.notified().await;
            continue;
        }
        for body in due {
            if tx.send(message(body)).await.is_err() {
                return;
            }
        }
    }
}

async fn send_heartbeats(outbox: Arc<Outbox>, tx: mpsc::Sender<pb::AgentMessage>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    interval.tick().await;
    loop {
        interval.tick().await;
        let beat = pb::Heartbeat {
            timestamp_ms: now_ms(),
            running: outbox.attempts(),
        };
        if tx.send(message(Body::Heartbeat(beat))).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_is_advertised_exactly_when_an_engine_answered() {
        let asked = vec!["linux".to_string(), "docker".to_string()];
        assert_eq!(advertised_labels(&asked, false), vec!["linux".to_string()]);
        assert_eq!(
            advertised_labels(&["linux".to_string()], true),
            vec!["linux".to_string(), "docker".to_string()]
        );
        assert_eq!(advertised_labels(&asked, true), asked);
    }
}
