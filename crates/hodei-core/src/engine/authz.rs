//! Engine inputs judged against the job's assignment: an agent acts only on
//! its own attempts (see [`crate::auth::judge_report`]).

use super::{AttemptRef, Engine, EngineError, Notice, Output, SessionId, ToAgent};
use crate::auth::{Assignment, Verdict, judge_report};
use crate::job::{JobState, Millis};

impl Engine {
    /// Judges a report on `session` about `job_id`'s `attempt`.
    pub(super) fn verdict(&self, session: SessionId, job_id: &str, attempt: u32) -> Verdict {
        let Some(worker) = self.sessions.get(&session) else {
            // A session the engine closed: nothing it says is applied.
            return Verdict::Stale;
        };
        let live = self.jobs.get(job_id);
        let job = live.map(|l| Assignment {
            attempt: l.job.attempt,
            worker: l.job.worker.as_deref(),
            holds: matches!(l.job.state, JobState::Assigned | JobState::Running),
        });
        let past = live
            .and_then(|l| l.holders.get(&attempt))
            .map(String::as_str);
        judge_report(worker, job_id, attempt, job, past)
    }

    /// Ends `session` with PERMISSION_DENIED: the message goes out, then the
    /// session is closed; its worker is offline (its lease keeps running).
    pub(super) fn deny(&mut self, session: SessionId, reason: String, out: &mut Output) {
        let Some(worker_id) = self.sessions.remove(&session) else {
            return;
        };
        let ended = self.workers.update(&worker_id, |w| {
            let ours = w.session == Some(session);
            if ours {
                w.session = None;
            }
            ours
        });
        if ended == Some(true) {
            out.notices.push(Notice::WorkerChanged {
                worker_id: worker_id.clone(),
            });
        }
        out.messages.push((session, ToAgent::Denied { reason }));
        out.close_sessions.push(session);
    }

    /// The attempts of a heartbeat: another worker's is refused; a stale
    /// one of its own is left to the reconciliation at its next `Hello`.
    pub(super) fn running(
        &mut self,
        session: SessionId,
        running: Vec<AttemptRef>,
        now: Millis,
        out: &mut Output,
    ) {
        self.touch(session, now);
        for r in running {
            if let Verdict::Denied(reason) = self.verdict(session, &r.job_id, r.attempt) {
                return self.deny(session, reason, out);
            }
        }
    }

    /// Whether seed `StreamLogs` restricted to `only` (workers bound to the
    /// caller) may append to `job_id`.
    pub(super) fn seed_may_log(
        &self,
        job_id: &str,
        only: Option<&[String]>,
    ) -> Result<(), EngineError> {
        let Some(only) = only else { return Ok(()) };
        let Some(live) = self.jobs.get(job_id) else {
            // Unknown or finished: the usual NOT_FOUND / FAILED_PRECONDITION.
            return Ok(());
        };
        let holds = matches!(live.job.state, JobState::Assigned | JobState::Running);
        match live.job.worker.as_deref() {
            Some(w) if holds && only.iter().any(|o| o == w) => Ok(()),
            Some(w) if holds => Err(EngineError::PermissionDenied(format!(
                "job {job_id} is assigned to worker {w}, which is not yours"
            ))),
            _ => Err(EngineError::PermissionDenied(format!(
                "job {job_id} is not assigned to any of your workers"
            ))),
        }
    }

    /// Records which worker holds a new attempt.
    pub(super) fn remember_holder(&mut self, job_id: &str, attempt: u32, worker: &str) {
        if let Some(live) = self.jobs.get_mut(job_id) {
            live.holders.insert(attempt, worker.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::super::*;
    use crate::log::LogStream;
    use crate::spec::JobSpec;

    fn run(e: &mut Engine, now: Millis, inputs: Vec<Input>) -> Output {
        let mut out = Output::default();
        for i in inputs {
            e.handle(i, now, &mut out);
        }
        e.end_batch(now, &mut out);
        out
    }

    fn attach(session: SessionId, worker: &str) -> Input {
        Input::Attach {
            session,
            worker_id: worker.into(),
            labels: vec![],
            slots: 1,
            prefetch: 0,
            running: vec![],
        }
    }

    fn log(session: Option<SessionId>, req: Option<RequestId>, only: Option<&[&str]>) -> Input {
        Input::Log {
            session,
            req,
            job_id: "j".into(),
            attempt: 1,
            stream: LogStream::Stdout,
            offset: session.map(|_| 0),
            data: Bytes::from_static(b"x"),
            timestamp_ms: 0,
            only_workers: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn denied(out: &Output, session: SessionId) -> bool {
        out.messages
            .iter()
            .any(|(s, m)| *s == session && matches!(m, ToAgent::Denied { .. }))
            && out.close_sessions.contains(&session)
    }

    /// Worker `a` (session 1) runs job `j`; worker `b` (session 2) is idle.
    fn setup() -> Engine {
        let mut e = Engine::new(EngineConfig::default());
        run(&mut e, 0, vec![attach(1, "a")]);
        let submit = Input::Submit {
            req: 1,
            id: "j".into(),
            spec: JobSpec::command(["true"]),
            submitter: None,
            fresh: false,
            existing: None,
        };
        run(&mut e, 1, vec![submit]);
        run(&mut e, 2, vec![attach(2, "b")]);
        assert_eq!(
            e.live_job("j").and_then(|j| j.worker.clone()).as_deref(),
            Some("a")
        );
        e
    }

    #[test]
    fn another_workers_report_ends_its_session_and_changes_nothing() {
        let mut e = setup();
        let out = run(&mut e, 3, vec![log(Some(2), None, None)]);
        assert!(denied(&out, 2), "{out:?}");
        assert!(out.writes.logs.is_empty());
        let result = Input::Result {
            session: 3,
            job_id: "j".into(),
            attempt: 1,
            outcome: crate::job::Outcome::Exited { code: 0 },
            totals: None,
        };
        let out = run(&mut e, 4, vec![attach(3, "b"), result]);
        assert!(denied(&out, 3), "{out:?}");
        assert!(out.writes.jobs.is_empty(), "{:?}", out.writes.jobs);
        // The holder's own report is applied.
        let out = run(&mut e, 5, vec![log(Some(1), None, None)]);
        assert_eq!(out.writes.logs.len(), 1);
        assert!(!denied(&out, 1));
    }

    #[test]
    fn a_heartbeat_naming_another_workers_attempt_is_refused() {
        let mut e = setup();
        let beat = |session| Input::Running {
            session,
            running: vec![AttemptRef {
                job_id: "j".into(),
                attempt: 1,
            }],
        };
        let out = run(&mut e, 3, vec![beat(1)]);
        assert!(out.messages.is_empty(), "{out:?}");
        let out = run(&mut e, 4, vec![beat(2)]);
        assert!(denied(&out, 2), "{out:?}");
    }

    #[test]
    fn seed_logs_only_for_jobs_of_the_callers_workers() {
        let mut e = setup();
        let out = run(&mut e, 3, vec![log(None, Some(9), Some(&["b"]))]);
        assert!(
            matches!(&out.replies[..], [(9, Reply::Error(EngineError::PermissionDenied(m)))] if m.contains("worker a")),
            "{out:?}"
        );
        assert!(out.writes.logs.is_empty());
        let out = run(&mut e, 4, vec![log(None, Some(10), Some(&["a"]))]);
        assert_eq!(out.replies, vec![(10, Reply::LogAppended)]);
        assert_eq!(out.writes.logs.len(), 1);
        // No restriction (admin): as the seed contract says.
        let out = run(&mut e, 5, vec![log(None, Some(11), None)]);
        assert_eq!(out.replies, vec![(11, Reply::LogAppended)]);
    }
}
