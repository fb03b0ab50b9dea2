//! Engine inputs about jobs: submit, cancel, progress, logs and results.

use bytes::Bytes;

use super::{
    Engine, EngineError, LiveJob, LogWrite, Notice, Output, Reply, RequestId, SessionId, ToAgent,
};
use crate::auth::Verdict;
use crate::job::{Job, JobEvent, JobState, Millis, Outcome, TransitionError, transition};
use crate::log::{ChunkFit, LogStream, StreamTotal, fit_chunk};
use crate::spec::{JobSpec, validate_job_id};

impl Engine {
    /// Applies `event` to a live job and records everything that follows
    /// from its new state: the store write, the notice, the queue, the
    /// worker's slots. Returns the job's new state.
    pub(super) fn apply(
        &mut self,
        job_id: &str,
        event: JobEvent,
        now: Millis,
        out: &mut Output,
    ) -> Result<JobState, TransitionError> {
        let Some(live) = self.jobs.get_mut(job_id) else {
            return Err(TransitionError::Illegal {
                state: JobState::Lost,
                event: "report",
            });
        };
        let before = live.job.clone();
        let after = transition(&before, &event, now)?;
        if after.attempt != before.attempt {
            live.stored = Default::default();
        }
        live.job = after.clone();
        let state = after.state;
        // Queue bookkeeping.
        if before.state == JobState::Queued && state != JobState::Queued {
            self.dequeue(&before);
        }
        if state == JobState::Queued && before.state != JobState::Queued {
            self.enqueue(&after);
        }
        // Worker bookkeeping: the worker holds the job while assigned/running.
        let holds = |s: JobState| matches!(s, JobState::Assigned | JobState::Running);
        if holds(before.state)
            && !holds(state)
            && let Some(worker) = before.worker.as_ref()
            && self
                .workers
                .update(worker, |w| w.jobs.remove(job_id))
                .is_some()
        {
            self.recheck_waiting = true;
        }
        if state.is_terminal() {
            self.finished.push(job_id.to_string());
        }
        if state != before.state {
            out.notices.push(Notice::JobChanged {
                job_id: job_id.to_string(),
                state,
            });
        }
        out.writes.jobs.insert(job_id.to_string(), after);
        Ok(state)
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn submit(
        &mut self,
        req: RequestId,
        id: String,
        spec: JobSpec,
        submitter: Option<String>,
        existing: Option<Box<Job>>,
        now: Millis,
        out: &mut Output,
    ) {
        let spec = spec.normalized();
        if let Err(e) = validate_job_id(&id).and_then(|()| spec.validate_with(&self.limits)) {
            out.replies.push((req, Reply::Error(e.into())));
            return;
        }
        let known = self.jobs.get(&id).map(|l| &l.job).or(existing.as_deref());
        if let Some(job) = known {
            let reply = if job.spec == spec {
                Reply::Submitted {
                    job: Box::new(job.clone()),
                    created: false,
                }
            } else {
                Reply::Error(EngineError::AlreadyExists(id))
            };
            out.replies.push((req, reply));
            return;
        }
        let job = Job {
            submitter,
            ..Job::new(id.clone(), spec, self.take_seq(now), now)
        };
        self.enqueue(&job);
        out.writes.jobs.insert(id.clone(), job.clone());
        out.notices.push(Notice::JobChanged {
            job_id: id.clone(),
            state: JobState::Queued,
        });
        out.replies.push((
            req,
            Reply::Submitted {
                job: Box::new(job.clone()),
                created: true,
            },
        ));
        self.jobs.insert(
            id,
            LiveJob {
                job,
                stored: Default::default(),
                holders: Default::default(),
            },
        );
    }

    pub(super) fn cancel(
        &mut self,
        req: RequestId,
        id: String,
        reason: String,
        existing: Option<Box<Job>>,
        now: Millis,
        out: &mut Output,
    ) {
        if !self.jobs.contains_key(&id) {
            let reply = match existing {
                // Already finished: cancelling is a no-op that shows the outcome.
                Some(job) => Reply::Cancelled { job },
                None => Reply::Error(EngineError::NotFound(id)),
            };
            out.replies.push((req, reply));
            return;
        }
        let already = self.jobs.get(&id).is_some_and(|l| l.job.cancel_requested);
        if !already {
            let event = JobEvent::CancelRequested {
                reason: reason.clone(),
            };
            if let Err(e) = self.apply(&id, event, now, out) {
                out.replies.push((
                    req,
                    Reply::Error(EngineError::FailedPrecondition(e.to_string())),
                ));
                return;
            }
        }
        let Some(job) = self.jobs.get(&id).map(|l| l.job.clone()) else {
            return;
        };
        if matches!(job.state, JobState::Assigned | JobState::Running)
            && let Some(session) = self.session_of(job.worker.as_deref())
        {
            out.messages.push((
                session,
                ToAgent::Cancel {
                    job_id: id.clone(),
                    attempt: job.attempt,
                    reason,
                },
            ));
        }
        out.replies
            .push((req, Reply::Cancelled { job: Box::new(job) }));
    }

    /// Tells an agent to stop an attempt that is no longer its to run.
    /// Once per batch and attempt: a fenced agent may still be streaming.
    pub(super) fn fence(
        &mut self,
        session: SessionId,
        job_id: String,
        attempt: u32,
        out: &mut Output,
    ) {
        if !self.fenced.insert((session, job_id.clone(), attempt)) {
            return;
        }
        out.messages.push((
            session,
            ToAgent::Cancel {
                job_id,
                attempt,
                reason: "attempt is no longer current".into(),
            },
        ));
    }

    pub(super) fn started(
        &mut self,
        session: SessionId,
        job_id: String,
        attempt: u32,
        now: Millis,
        out: &mut Output,
    ) {
        self.touch(session, now);
        match self.verdict(session, &job_id, attempt) {
            Verdict::Apply => {}
            Verdict::Stale => return self.fence(session, job_id, attempt, out),
            Verdict::Denied(reason) => return self.deny(session, reason, out),
        }
        if self.jobs.get(&job_id).map(|l| l.job.state) == Some(JobState::Assigned) {
            let _ = self.apply(&job_id, JobEvent::Started { attempt }, now, out);
        }
        if self.revoking.remove(&job_id).is_some() {
            // It started before the agent saw the take-back: the slot that
            // was to run it is free for another.
            self.recheck_waiting = true;
        }
    }

    pub(super) fn rejected(
        &mut self,
        session: SessionId,
        job_id: String,
        attempt: u32,
        reason: String,
        now: Millis,
        out: &mut Output,
    ) {
        self.touch(session, now);
        match self.verdict(session, &job_id, attempt) {
            Verdict::Apply => {
                let _ = self.apply(&job_id, JobEvent::Rejected { attempt, reason }, now, out);
            }
            Verdict::Stale => {}
            Verdict::Denied(why) => self.deny(session, why, out),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn log(
        &mut self,
        session: Option<SessionId>,
        req: Option<RequestId>,
        job_id: String,
        attempt: u32,
        stream: LogStream,
        offset: Option<u64>,
        data: Bytes,
        timestamp_ms: Millis,
        out: &mut Output,
    ) {
        let reply = |out: &mut Output, r: Reply| {
            if let Some(req) = req {
                out.replies.push((req, r));
            }
        };
        if let Some(session) = session {
            match self.verdict(session, &job_id, attempt) {
                Verdict::Apply => {}
                // A stale attempt's bytes are dropped; its process is told to stop.
                Verdict::Stale => return self.fence(session, job_id, attempt, out),
                Verdict::Denied(reason) => return self.deny(session, reason, out),
            }
            self.pending_acks
                .entry((session, job_id.clone()))
                .or_insert(false);
        }
        let Some(live) = self.jobs.get_mut(&job_id) else {
            reply(out, Reply::Error(EngineError::NotFound(job_id)));
            return;
        };
        let attempt = if session.is_some() {
            attempt
        } else {
            live.job.attempt
        };
        let stored = live.stored[stream.index()];
        let persisted = stored.bytes;
        let skip = match fit_chunk(persisted, offset.unwrap_or(persisted), data.len()) {
            ChunkFit::Append { skip } => skip,
            ChunkFit::Duplicate => {
                reply(out, Reply::LogAppended);
                return;
            }
            ChunkFit::Gap { .. } => {
                // Bytes before this chunk are missing. Nothing is stored; the
                // acknowledgement at the end of the batch asks the agent to
                // resend from what is stored.
                if let Some(session) = session {
                    self.pending_acks.insert((session, job_id), true);
                }
                reply(out, Reply::LogAppended);
                return;
            }
        };
        let data = data.slice(skip..);
        live.stored[stream.index()] = stored.append(&data);
        out.writes.logs.push(LogWrite {
            job_id: job_id.clone(),
            attempt,
            stream,
            offset: persisted,
            data,
            timestamp_ms,
        });
        out.notices.push(Notice::LogAppended { job_id });
        reply(out, Reply::LogAppended);
    }

    /// Records an attempt's result, after checking the stored log against
    /// the totals the agent reports. Bytes missing: the result waits and the
    /// agent is asked to resend from what is stored (it sends the result
    /// again after them). Same size but another checksum: the result is
    /// recorded and the mismatch is noted in the job's reason.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn result(
        &mut self,
        session: SessionId,
        job_id: String,
        attempt: u32,
        outcome: Outcome,
        totals: Option<[StreamTotal; 2]>,
        now: Millis,
        out: &mut Output,
    ) {
        self.touch(session, now);
        let verdict = self.verdict(session, &job_id, attempt);
        if let Verdict::Denied(reason) = verdict {
            return self.deny(session, reason, out);
        }
        if verdict == Verdict::Apply {
            let stored = self.jobs.get(&job_id).map(|l| l.stored).unwrap_or_default();
            if let Some(totals) = totals {
                if stored.iter().zip(&totals).any(|(s, t)| s.bytes < t.bytes) {
                    self.pending_acks.insert((session, job_id), true);
                    return;
                }
                let mismatch = check_totals(&stored, &totals);
                let _ = self.apply(&job_id, JobEvent::Finished { attempt, outcome }, now, out);
                if let Some(note) = mismatch {
                    self.note(&job_id, &note, out);
                }
            } else {
                let _ = self.apply(&job_id, JobEvent::Finished { attempt, outcome }, now, out);
            }
        }
        // Recorded now or earlier, or stale: either way the agent may forget it.
        out.messages
            .push((session, ToAgent::ResultAck { job_id, attempt }));
    }

    /// Adds `note` to a job's recorded reason.
    fn note(&mut self, job_id: &str, note: &str, out: &mut Output) {
        if let Some(live) = self.jobs.get_mut(job_id) {
            let reason = match live.job.reason.take() {
                Some(r) => format!("{r}; {note}"),
                None => note.to_string(),
            };
            live.job.reason = Some(reason);
            out.writes.jobs.insert(job_id.to_string(), live.job.clone());
        }
    }
}

/// Describes how the stored log differs from what the agent produced.
fn check_totals(stored: &[StreamTotal; 2], reported: &[StreamTotal; 2]) -> Option<String> {
    let diffs: Vec<String> = LogStream::BOTH
        .iter()
        .filter(|s| stored[s.index()] != reported[s.index()])
        .map(|s| {
            let (a, b) = (stored[s.index()], reported[s.index()]);
            format!(
                "{} log differs from the agent's: stored {} bytes (crc32c {:08x}), produced {} bytes (crc32c {:08x})",
                s.as_str(),
                a.bytes,
                a.crc32c,
                b.bytes,
                b.crc32c
            )
        })
        .collect();
    (!diffs.is_empty()).then(|| diffs.join("; "))
}
