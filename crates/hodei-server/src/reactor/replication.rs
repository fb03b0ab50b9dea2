//! The reactor's part when several replicas share the store (see
//! `store/cluster.rs`): before a batch, it takes in what other replicas
//! announced (queued jobs to adopt, jobs they claimed to forget, cancels
//! for jobs this replica owns), takes over the attempts of agents that
//! attach here, and sends cancels of jobs other replicas own to their
//! owner. After the commit, jobs whose fenced writes lost are forgotten,
//! their messages dropped and their requests retried. Background tasks
//! listen for notifications, sweep dead replicas and poll the shared queue.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use hodei_core::JobState;
use hodei_core::engine::{Adopted, AttemptRef, Input, Notice, Reply, ToAgent};
use hodei_core::spec::validate_job_id;
use tokio::sync::mpsc;

use super::{Command, Reactor};
use crate::store::{ClusterEvent, Store, StoreError};

/// How often the sweep of dead replicas runs on each replica.
const SWEEP_EVERY: Duration = Duration::from_secs(2);
/// How often the shared queue is read in case a notification was missed.
const POLL_EVERY: Duration = Duration::from_secs(5);
/// Queued jobs read per poll.
const POLL_LIMIT: u32 = 1000;

/// What the background tasks hand the reactor.
pub(super) enum ClusterCommand {
    Event(ClusterEvent),
    /// Attempts this replica took over from a dead one.
    Adopt(Vec<Adopted>),
}

/// Starts the background tasks of a replica; they stop when the reactor's
/// queue is gone.
pub(super) fn spawn(store: Arc<dyn Store>, tx: mpsc::WeakSender<Command>) {
    tokio::spawn(forward_notifications(store.clone(), tx.clone()));
    tokio::spawn(sweep_and_poll(store, tx));
}

async fn forward_notifications(store: Arc<dyn Store>, tx: mpsc::WeakSender<Command>) {
    let Some(cluster) = store.cluster() else {
        return;
    };
    let mut events = loop {
        match cluster.listen().await {
            Ok(events) => break events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for replica notifications; retrying");
                if tx.upgrade().is_none() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    while let Some(event) = events.recv().await {
        let Some(tx) = tx.upgrade() else { return };
        if tx
            .send(Command::Cluster(ClusterCommand::Event(event)))
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn sweep_and_poll(store: Arc<dyn Store>, tx: mpsc::WeakSender<Command>) {
    let Some(cluster) = store.cluster() else {
        return;
    };
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let command = tokio::select! {
            _ = sweep.tick() => match cluster.sweep().await {
                Ok(jobs) if jobs.is_empty() => continue,
                Ok(jobs) => match adopted(store.as_ref(), jobs).await {
                    Ok(jobs) => ClusterCommand::Adopt(jobs),
                    Err(e) => {
                        // They are this replica's now: rebuilding from the
                        // store (a restart, or the reactor's outage) finds them.
                        tracing::error!(error = %e, "cannot read the logs of jobs taken over");
                        continue;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping dead replicas failed");
                    continue;
                }
            },
            _ = poll.tick() => ClusterCommand::Event(ClusterEvent::Resync),
        };
        let Some(tx) = tx.upgrade() else { return };
        if tx.send(Command::Cluster(command)).await.is_err() {
            return;
        }
    }
}

/// `jobs` with the size and checksum of their current attempts' stored logs.
async fn adopted(
    store: &dyn Store,
    jobs: Vec<hodei_core::Job>,
) -> Result<Vec<Adopted>, StoreError> {
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        let stored = if job.attempt > 0 {
            crate::recovery::attempt_totals(store, &job.id, job.attempt, None).await?
        } else {
            Default::default()
        };
        out.push(Adopted { job, stored });
    }
    Ok(out)
}

/// The job a message to an agent is about.
fn job_of(message: &ToAgent) -> Option<&str> {
    match message {
        ToAgent::Assign { job, .. } => Some(&job.id),
        ToAgent::Cancel { job_id, .. }
        | ToAgent::Revoke { job_id, .. }
        | ToAgent::LogAck { job_id, .. }
        | ToAgent::ResultAck { job_id, .. } => Some(job_id),
        _ => None,
    }
}

/// The job a request names.
pub(super) fn job_named(input: &Input) -> Option<&str> {
    match input {
        Input::Submit { id, .. } | Input::Cancel { id, .. } => Some(id),
        _ => None,
    }
}

impl Reactor {
    /// Handles what only replicas do before a batch (see the module docs).
    /// Returns the inputs to feed before the batch; commands it answered
    /// itself are taken out of `batch`.
    pub(super) async fn before_batch(
        &mut self,
        batch: &mut Vec<Command>,
    ) -> Result<Vec<Input>, StoreError> {
        let store = self.store.clone();
        let Some(cluster) = store.cluster() else {
            return Ok(Vec::new());
        };
        let me = cluster.replica_id();
        let mut first = Vec::new();
        // Queued jobs to adopt; live queued jobs another replica touched;
        // owned jobs to cancel.
        let mut fetch = BTreeSet::new();
        let mut check = BTreeSet::new();
        let mut cancels = BTreeSet::new();
        let mut keep = Vec::with_capacity(batch.len());
        for cmd in batch.drain(..) {
            match cmd {
                Command::Cluster(ClusterCommand::Adopt(jobs)) => first.push(Input::Adopt {
                    jobs,
                    orphans: true,
                }),
                Command::Cluster(ClusterCommand::Event(event)) => match event {
                    ClusterEvent::Queued { from, job_ids } if from != me => {
                        fetch.extend(
                            job_ids
                                .into_iter()
                                .filter(|id| self.engine.needs_lookup(id)),
                        );
                    }
                    ClusterEvent::Changed { from, job_ids } if from != me => {
                        for job_id in job_ids {
                            if self.engine.is_queued(&job_id) {
                                check.insert(job_id.clone());
                            }
                            // Live followers here re-read the store.
                            self.remote_notices.push(Notice::JobTouched { job_id });
                        }
                    }
                    ClusterEvent::Cancel { owner, job_ids } if owner == me => {
                        cancels.extend(job_ids);
                    }
                    ClusterEvent::Resync => {
                        let ids = cluster.queued(POLL_LIMIT).await?;
                        fetch.extend(ids.into_iter().filter(|id| self.engine.needs_lookup(id)));
                    }
                    _ => {}
                },
                Command::Input(
                    Input::Attach {
                        ref worker_id,
                        ref running,
                        ..
                    },
                    _,
                ) => {
                    let foreign: Vec<AttemptRef> = running
                        .iter()
                        .filter(|r| {
                            validate_job_id(&r.job_id).is_ok()
                                && !self.engine.holds_attempt(&r.job_id, r.attempt, worker_id)
                        })
                        .cloned()
                        .collect();
                    if !foreign.is_empty() {
                        let jobs = cluster.take_over(worker_id, &foreign).await?;
                        if !jobs.is_empty() {
                            tracing::info!(
                                worker = %worker_id,
                                jobs = jobs.len(),
                                "took over the attempts of an agent that attached here"
                            );
                            let jobs = adopted(store.as_ref(), jobs).await?;
                            first.push(Input::Adopt {
                                jobs,
                                orphans: false,
                            });
                        }
                    }
                    keep.push(cmd);
                }
                Command::Input(
                    Input::Cancel {
                        ref id, ref reason, ..
                    },
                    _,
                ) if self.engine.needs_lookup(id) => {
                    match store.get_job(id).await? {
                        Some(job) if job.state == JobState::Queued => {
                            first.push(Input::Adopt {
                                jobs: vec![Adopted {
                                    job,
                                    stored: Default::default(),
                                }],
                                orphans: false,
                            });
                            keep.push(cmd);
                        }
                        Some(job) if !job.state.is_terminal() => {
                            // Another replica owns it: ask that one.
                            let job = match cluster.request_cancel(id, reason).await? {
                                Some(marked) => marked,
                                None => store.get_job(id).await?.unwrap_or(job),
                            };
                            if let Command::Input(_, Some(reply)) = cmd {
                                let _ = reply.send(Reply::Cancelled { job: Box::new(job) });
                            }
                        }
                        _ => keep.push(cmd),
                    }
                }
                other => keep.push(other),
            }
        }
        *batch = keep;
        let ids: Vec<String> = fetch
            .iter()
            .chain(&check)
            .chain(&cancels)
            .cloned()
            .collect();
        if ids.is_empty() {
            return Ok(first);
        }
        let mut adopt = Vec::new();
        let mut forget = Vec::new();
        for job in store.get_jobs(&ids).await? {
            if cancels.contains(&job.id) {
                if !self.engine.needs_lookup(&job.id) {
                    first.push(Input::Cancel {
                        req: 0,
                        id: job.id.clone(),
                        reason: job
                            .reason
                            .clone()
                            .unwrap_or_else(|| "cancelled through another replica".into()),
                        existing: None,
                    });
                }
            } else if check.contains(&job.id) {
                if job.state != JobState::Queued {
                    forget.push(job.id);
                }
            } else if job.state == JobState::Queued {
                adopt.push(Adopted {
                    job,
                    stored: Default::default(),
                });
            }
        }
        if !forget.is_empty() {
            first.push(Input::Forget { job_ids: forget });
        }
        if !adopt.is_empty() {
            first.push(Input::Adopt {
                jobs: adopt,
                orphans: false,
            });
        }
        Ok(first)
    }

    /// After a fenced commit: forgets the jobs whose writes lost and drops
    /// what the batch would have told anyone about them.
    pub(super) fn forget_lost(
        &mut self,
        lost: &HashSet<String>,
        out: &mut hodei_core::engine::Output,
        now: hodei_core::Millis,
    ) {
        tracing::debug!(jobs = lost.len(), "another replica owns these jobs now");
        let mut scratch = hodei_core::engine::Output::default();
        self.engine.handle(
            Input::Forget {
                job_ids: lost.iter().cloned().collect(),
            },
            now,
            &mut scratch,
        );
        out.messages
            .retain(|(_, m)| job_of(m).is_none_or(|id| !lost.contains(id)));
        out.notices.retain(|n| match n {
            Notice::JobChanged { job_id, .. }
            | Notice::LogAppended { job_id }
            | Notice::JobTouched { job_id } => !lost.contains(job_id),
            Notice::WorkerChanged { .. } => true,
        });
    }
}
