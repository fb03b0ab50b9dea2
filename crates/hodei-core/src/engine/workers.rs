//! Engine inputs about workers: registration, sessions, leases, dispatch.

use super::{
    AttemptRef, Engine, EngineError, Notice, Output, Reply, RequestId, SessionId, ToAgent,
    WorkerInfo, WorkerRecord,
};
use crate::job::{JobEvent, JobState, Millis};
use crate::spec::validate_worker_id;

/// Most assignments a worker may queue beyond its slots.
pub const MAX_PREFETCH: u32 = 1024;

/// How many jobs an agent runs at once, and how many more it takes,
/// queued until a slot frees.
#[derive(Debug, Clone, Copy)]
pub(super) struct Capacity {
    pub slots: u32,
    pub prefetch: u32,
}

impl Engine {
    pub(super) fn session_of(&self, worker: Option<&str>) -> Option<SessionId> {
        worker
            .and_then(|w| self.workers.get(w))
            .and_then(|w| w.session)
    }

    pub(super) fn worker_info(&self, id: &str) -> WorkerInfo {
        let Some(w) = self.workers.get(id) else {
            return WorkerInfo {
                id: id.to_string(),
                labels: Vec::new(),
                slots: 0,
                prefetch: 0,
                running: Vec::new(),
                state: "offline".into(),
                last_seen: 0,
            };
        };
        let state = if w.session.is_none() {
            "offline"
        } else if w.draining {
            "draining"
        } else if w.jobs.len() as u32 >= w.slots {
            "busy"
        } else {
            "ready"
        };
        WorkerInfo {
            id: id.to_string(),
            labels: w.labels.iter().cloned().collect(),
            slots: w.slots,
            prefetch: w.prefetch,
            running: w.jobs.iter().cloned().collect(),
            state: state.into(),
            last_seen: w.last_seen,
        }
    }

    /// Records the worker's durable state and announces the change.
    fn record(&self, id: &str, out: &mut Output) {
        if let Some(w) = self.workers.get(id) {
            out.notices.push(Notice::WorkerChanged {
                worker_id: id.to_string(),
            });
            out.writes.workers.insert(
                id.to_string(),
                WorkerRecord {
                    id: id.to_string(),
                    labels: w.labels.iter().cloned().collect(),
                    slots: w.slots,
                    last_seen: w.last_seen,
                },
            );
        }
    }

    pub(super) fn register(
        &mut self,
        req: RequestId,
        worker_id: String,
        labels: Vec<String>,
        slots: u32,
        now: Millis,
        out: &mut Output,
    ) {
        if let Err(e) = validate_worker_id(&worker_id) {
            out.replies
                .push((req, Reply::Error(EngineError::Invalid(e))));
            return;
        }
        self.workers.upsert(&worker_id, now, |w| {
            w.labels = labels.into_iter().collect();
            if slots > 0 {
                w.slots = slots;
            }
            w.last_seen = now;
        });
        self.record(&worker_id, out);
        out.replies
            .push((req, Reply::Worker(self.worker_info(&worker_id))));
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn attach(
        &mut self,
        session: SessionId,
        worker_id: String,
        labels: Vec<String>,
        capacity: Capacity,
        running: Vec<AttemptRef>,
        now: Millis,
        out: &mut Output,
    ) {
        let (replaced, held) = self.workers.upsert(&worker_id, now, |w| {
            let replaced = w.session.replace(session);
            w.labels = labels.into_iter().collect();
            w.slots = capacity.slots.max(1);
            w.prefetch = capacity.prefetch.min(MAX_PREFETCH);
            w.draining = false;
            w.last_seen = now;
            let held: Vec<String> = w.jobs.iter().cloned().collect();
            (replaced, held)
        });
        self.recheck_waiting = true;
        if let Some(old) = replaced.filter(|old| *old != session) {
            self.sessions.remove(&old);
            out.close_sessions.push(old);
        }
        self.sessions.insert(session, worker_id.clone());
        self.record(&worker_id, out);
        out.messages.push((
            session,
            ToAgent::Welcome {
                worker_id: worker_id.clone(),
            },
        ));
        // Reconcile what the engine thinks the worker holds with what the
        // agent says it runs.
        for job_id in held {
            let Some(job) = self.jobs.get(&job_id).map(|l| l.job.clone()) else {
                continue;
            };
            let reported = running
                .iter()
                .any(|r| r.job_id == job_id && r.attempt == job.attempt);
            if reported {
                if job.cancel_requested {
                    out.messages.push((
                        session,
                        ToAgent::Cancel {
                            job_id,
                            attempt: job.attempt,
                            reason: job.reason.clone().unwrap_or_else(|| "cancelled".into()),
                        },
                    ));
                }
                continue;
            }
            let attempt = job.attempt;
            let event = if job.state == JobState::Assigned {
                // It never started there, so it is safe to run elsewhere.
                JobEvent::Rejected {
                    attempt,
                    reason: "agent reconnected without it".into(),
                }
            } else {
                JobEvent::WorkerLost {
                    attempt,
                    reason: format!("worker {worker_id} came back without the job"),
                }
            };
            let _ = self.apply(&job_id, event, now, out);
        }
        for r in running {
            let owned = self.jobs.get(&r.job_id).is_some_and(|l| {
                l.job.attempt == r.attempt
                    && l.job.worker.as_deref() == Some(worker_id.as_str())
                    && matches!(l.job.state, JobState::Assigned | JobState::Running)
            });
            if !owned {
                out.messages.push((
                    session,
                    ToAgent::Cancel {
                        job_id: r.job_id,
                        attempt: r.attempt,
                        reason: "attempt is no longer current".into(),
                    },
                ));
            }
        }
    }

    pub(super) fn detach(&mut self, session: SessionId, now: Millis, out: &mut Output) {
        let Some(worker_id) = self.sessions.remove(&session) else {
            return;
        };
        // The agent's side ended: end ours too (and let the shell forget the
        // session's sender), so a draining agent sees its stream close.
        out.close_sessions.push(session);
        let ended = self.workers.update(&worker_id, |w| {
            let ours = w.session == Some(session);
            if ours {
                w.session = None;
                // The lease grace runs from the moment the connection dropped.
                w.last_seen = now;
            }
            ours
        });
        if ended == Some(true) {
            self.record(&worker_id, out);
        }
    }

    pub(super) fn touch(&mut self, session: SessionId, now: Millis) {
        if let Some(id) = self.sessions.get(&session) {
            self.workers.touch(id, now);
        }
    }

    pub(super) fn drain(&mut self, session: SessionId, now: Millis, out: &mut Output) {
        let Some(id) = self.sessions.get(&session) else {
            return;
        };
        let known = self.workers.update(id, |w| {
            w.draining = true;
            w.last_seen = now;
        });
        if known.is_some() {
            out.notices.push(Notice::WorkerChanged {
                worker_id: id.clone(),
            });
        }
    }

    /// Declares workers silent past the grace offline and their jobs lost.
    pub(super) fn expire_leases(&mut self, now: Millis, out: &mut Output) {
        let grace = self.config.lease_grace_ms as i64;
        let expired: Vec<String> = self
            .workers
            .iter()
            .filter(|(_, w)| {
                (w.session.is_some() || !w.jobs.is_empty()) && now - w.last_seen > grace
            })
            .map(|(id, _)| id.clone())
            .collect();
        for worker_id in expired {
            let Some((session, silent_ms, held)) = self.workers.update(&worker_id, |w| {
                let held: Vec<String> = w.jobs.iter().cloned().collect();
                (w.session.take(), now - w.last_seen, held)
            }) else {
                continue;
            };
            if let Some(session) = session {
                self.sessions.remove(&session);
                out.close_sessions.push(session);
            }
            self.record(&worker_id, out);
            for job_id in held {
                let Some(attempt) = self.jobs.get(&job_id).map(|l| l.job.attempt) else {
                    continue;
                };
                let reason = format!(
                    "worker {worker_id} was silent for {:.1} s (lease grace {:.1} s)",
                    silent_ms as f64 / 1000.0,
                    grace as f64 / 1000.0
                );
                let _ = self.apply(&job_id, JobEvent::WorkerLost { attempt, reason }, now, out);
            }
        }
    }

    /// Places queued jobs on workers with free slots and sends the
    /// assignments. Only when something could have changed since the last
    /// time, which placed every job it could: a job was queued, or a worker
    /// gained room or new labels. Otherwise (a batch of heartbeats, a busy
    /// fleet with a backlog) it costs nothing, whatever the queue holds.
    pub(super) fn dispatch(&mut self, now: Millis, out: &mut Output) {
        let grown = self.workers.take_grown();
        let queued = std::mem::take(&mut self.queued_since_dispatch);
        if self.queue.is_empty() || !(grown || queued) {
            return;
        }
        for p in self.workers.place(&self.queue) {
            let Some(attempt) = self.jobs.get(&p.job).map(|l| l.job.attempt + 1) else {
                self.workers.reindex(&p.worker);
                continue;
            };
            let event = JobEvent::Assigned {
                worker: p.worker.clone(),
                attempt,
            };
            if self.apply(&p.job, event, now, out).is_err() {
                self.workers.reindex(&p.worker);
                continue;
            }
            self.remember_holder(&p.job, attempt, &p.worker);
            let session = self.workers.update(&p.worker, |w| {
                w.jobs.insert(p.job.clone());
                w.session
            });
            let (Some(Some(session)), Some(live)) = (session, self.jobs.get(&p.job)) else {
                continue;
            };
            out.messages.push((
                session,
                ToAgent::Assign {
                    job: Box::new(live.job.clone()),
                    stdout_offset: 0,
                    stderr_offset: 0,
                },
            ));
        }
    }
}
