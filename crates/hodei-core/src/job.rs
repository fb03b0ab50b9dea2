//! A job's record and its lifecycle: the one pure transition function.
//!
//! ```text
//! queued → assigned → running → succeeded | failed | cancelled | timed_out | lost
//!    ↑________|__________|  (rejected by the agent, or lost with retries left)
//! ```

use serde::{Deserialize, Serialize};

use crate::spec::JobSpec;

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    Queued,
    Assigned,
    Running,
    Succeeded,
    Failed,
    Cancelled,
    TimedOut,
    Lost,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::TimedOut,
        JobState::Lost,
    ];

    pub fn is_terminal(self) -> bool {
        !matches!(
            self,
            JobState::Queued | JobState::Assigned | JobState::Running
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::TimedOut => "timed_out",
            JobState::Lost => "lost",
        }
    }

    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an attempt's process ended, as the agent observed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Outcome {
    /// The process exited on its own with this code.
    Exited { code: i32 },
    /// The process died of a signal Hodei did not send.
    Signaled { signal: i32 },
    /// Hodei killed it because the job was cancelled.
    Cancelled,
    /// Hodei killed it because its timeout passed.
    TimedOut,
    /// The command could not be started (127: not found, 126: not
    /// executable, 125: its container could not be made, e.g. no image).
    SpawnFailed { code: i32, message: String },
    /// The kernel's OOM killer ended it: it went past its memory limit.
    /// Recorded as exit code 137 (128 + SIGKILL).
    OomKilled,
}

/// Exit code of a job the OOM killer ended: 128 + SIGKILL, as shells and
/// container engines report it.
pub const OOM_EXIT_CODE: i32 = 137;

impl Outcome {
    /// The state a job ends in after this outcome.
    pub fn final_state(&self) -> JobState {
        match self {
            Outcome::Exited { code: 0 } => JobState::Succeeded,
            Outcome::Exited { .. }
            | Outcome::Signaled { .. }
            | Outcome::SpawnFailed { .. }
            | Outcome::OomKilled => JobState::Failed,
            Outcome::Cancelled => JobState::Cancelled,
            Outcome::TimedOut => JobState::TimedOut,
        }
    }

    /// The exit code to record: the process's own, or the shell convention.
    pub fn exit_code(&self) -> Option<i32> {
        match self {
            Outcome::Exited { code } | Outcome::SpawnFailed { code, .. } => Some(*code),
            Outcome::Signaled { signal } => Some(128 + signal),
            Outcome::OomKilled => Some(OOM_EXIT_CODE),
            Outcome::Cancelled | Outcome::TimedOut => None,
        }
    }
}

/// The durable record of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    pub id: String,
    pub spec: JobSpec,
    pub state: JobState,
    /// The current attempt; 0 until first assigned. Reports for any other
    /// attempt are stale and rejected.
    pub attempt: u32,
    /// Attempts lost and queued again; counts against `spec.max_retries`.
    /// Rejected attempts (never started) do not count.
    #[serde(default)]
    pub retries: u32,
    /// The worker holding the current attempt (assigned/running), or the last one.
    pub worker: Option<String>,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// Why the job ended as it did (spawn error, lost worker, cancel reason).
    pub reason: Option<String>,
    pub cancel_requested: bool,
    /// Submission order, assigned by the store; breaks priority ties (FIFO).
    pub seq: u64,
    pub created_at: Millis,
    pub assigned_at: Option<Millis>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
    /// The id of the token that submitted the job; `None` when auth is off
    /// (and for jobs stored before submitters were recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submitter: Option<String>,
}

impl Job {
    pub fn new(id: String, spec: JobSpec, seq: u64, now: Millis) -> Job {
        Job {
            id,
            spec,
            state: JobState::Queued,
            attempt: 0,
            retries: 0,
            worker: None,
            exit_code: None,
            signal: None,
            reason: None,
            cancel_requested: false,
            seq,
            created_at: now,
            assigned_at: None,
            started_at: None,
            finished_at: None,
            submitter: None,
        }
    }
}

/// Something that happens to a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobEvent {
    /// The scheduler placed the job on a worker as a new attempt.
    Assigned { worker: String, attempt: u32 },
    /// The agent started the attempt's process.
    Started { attempt: u32 },
    /// The agent declined the attempt before starting it; the job is queued again.
    Rejected { attempt: u32, reason: String },
    /// The attempt's process ended.
    Finished { attempt: u32, outcome: Outcome },
    /// A user asked to cancel. Queued jobs end at once; others are marked
    /// and the agent is told to kill the process.
    CancelRequested { reason: String },
    /// The worker of the attempt was declared lost.
    WorkerLost { attempt: u32, reason: String },
}

/// Why a transition was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("job is {state}; {event} is not allowed")]
    Illegal {
        state: JobState,
        event: &'static str,
    },
    #[error("report for attempt {got} but the current attempt is {current}")]
    StaleAttempt { got: u32, current: u32 },
}

impl JobEvent {
    fn name(&self) -> &'static str {
        match self {
            JobEvent::Assigned { .. } => "assign",
            JobEvent::Started { .. } => "start",
            JobEvent::Rejected { .. } => "reject",
            JobEvent::Finished { .. } => "finish",
            JobEvent::CancelRequested { .. } => "cancel",
            JobEvent::WorkerLost { .. } => "lose",
        }
    }

    fn attempt(&self) -> Option<u32> {
        match self {
            JobEvent::Started { attempt }
            | JobEvent::Rejected { attempt, .. }
            | JobEvent::Finished { attempt, .. }
            | JobEvent::WorkerLost { attempt, .. } => Some(*attempt),
            JobEvent::Assigned { .. } | JobEvent::CancelRequested { .. } => None,
        }
    }
}

/// The one transition function of the job lifecycle. Returns the job after
/// `event`, or why `event` is not allowed in the job's current state.
pub fn transition(job: &Job, event: &JobEvent, now: Millis) -> Result<Job, TransitionError> {
    use JobState::*;
    let illegal = || TransitionError::Illegal {
        state: job.state,
        event: event.name(),
    };
    if let Some(got) = event.attempt()
        && got != job.attempt
    {
        return Err(TransitionError::StaleAttempt {
            got,
            current: job.attempt,
        });
    }
    let mut next = job.clone();
    match (job.state, event) {
        (Queued, JobEvent::Assigned { worker, attempt }) => {
            if *attempt != job.attempt + 1 {
                return Err(TransitionError::StaleAttempt {
                    got: *attempt,
                    current: job.attempt,
                });
            }
            next.state = Assigned;
            next.attempt = *attempt;
            next.worker = Some(worker.clone());
            next.assigned_at = Some(now);
        }
        (Assigned, JobEvent::Started { .. }) => {
            next.state = Running;
            next.started_at = Some(now);
        }
        (Assigned, JobEvent::Rejected { reason, .. }) => {
            next.state = Queued;
            next.reason = Some(reason.clone());
        }
        (Assigned | Running, JobEvent::Finished { outcome, .. }) => {
            next.state = outcome.final_state();
            next.exit_code = outcome.exit_code();
            next.signal = match outcome {
                Outcome::Signaled { signal } => Some(*signal),
                Outcome::OomKilled => Some(OOM_EXIT_CODE - 128),
                _ => None,
            };
            next.reason = match outcome {
                Outcome::SpawnFailed { message, .. } => Some(message.clone()),
                Outcome::TimedOut => Some(format!(
                    "timed out after {} ms",
                    job.spec.timeout_ms.unwrap_or_default()
                )),
                Outcome::Cancelled => job.reason.clone(),
                Outcome::OomKilled => Some(oom_reason(job.spec.memory_bytes)),
                Outcome::Exited { .. } | Outcome::Signaled { .. } => None,
            };
            next.finished_at = Some(now);
        }
        (Queued, JobEvent::CancelRequested { reason }) => {
            next.state = Cancelled;
            next.cancel_requested = true;
            next.reason = Some(reason.clone());
            next.finished_at = Some(now);
        }
        (Assigned | Running, JobEvent::CancelRequested { reason }) => {
            next.cancel_requested = true;
            next.reason = Some(reason.clone());
        }
        (Assigned | Running, JobEvent::WorkerLost { reason, .. }) => {
            if !job.cancel_requested && job.retries < job.spec.max_retries {
                next.state = Queued;
                next.retries = job.retries.saturating_add(1);
                next.reason = Some(format!("attempt {} lost: {reason}", job.attempt));
            } else {
                next.state = Lost;
                next.reason = Some(reason.clone());
                next.finished_at = Some(now);
            }
        }
        _ => return Err(illegal()),
    }
    Ok(next)
}

/// Why a job the OOM killer ended failed, naming its memory limit.
pub fn oom_reason(memory_bytes: Option<u64>) -> String {
    match memory_bytes {
        Some(limit) => format!(
            "out of memory: killed by the OOM killer at its memory limit of {}",
            crate::spec::human_bytes(limit)
        ),
        None => "out of memory: killed by the OOM killer (no memory limit was set)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_in(state: JobState, attempt: u32) -> Job {
        let mut j = Job::new("j".into(), JobSpec::command(["true"]), 1, 0);
        j.state = state;
        j.attempt = attempt;
        j
    }

    fn all_events(attempt: u32) -> Vec<JobEvent> {
        vec![
            JobEvent::Assigned {
                worker: "w".into(),
                attempt: attempt + 1,
            },
            JobEvent::Started { attempt },
            JobEvent::Rejected {
                attempt,
                reason: "busy".into(),
            },
            JobEvent::Finished {
                attempt,
                outcome: Outcome::Exited { code: 0 },
            },
            JobEvent::CancelRequested {
                reason: "user".into(),
            },
            JobEvent::WorkerLost {
                attempt,
                reason: "silent".into(),
            },
        ]
    }

    /// The full table of legal (state, event) pairs and where they lead.
    fn expected(state: JobState, event: &JobEvent) -> Option<JobState> {
        use JobState::*;
        match (state, event) {
            (Queued, JobEvent::Assigned { .. }) => Some(Assigned),
            (Queued, JobEvent::CancelRequested { .. }) => Some(Cancelled),
            (Assigned, JobEvent::Started { .. }) => Some(Running),
            (Assigned, JobEvent::Rejected { .. }) => Some(Queued),
            (Assigned | Running, JobEvent::Finished { .. }) => Some(Succeeded),
            (Assigned | Running, JobEvent::CancelRequested { .. }) => Some(state),
            (Assigned | Running, JobEvent::WorkerLost { .. }) => Some(Lost),
            _ => None,
        }
    }

    #[test]
    fn every_state_event_pair_is_legal_or_refused_as_the_table_says() {
        for state in JobState::ALL {
            for event in all_events(1) {
                let job = job_in(state, 1);
                let got = transition(&job, &event, 5);
                match expected(state, &event) {
                    Some(to) => assert_eq!(got.map(|j| j.state), Ok(to), "{state} + {event:?}"),
                    None => assert!(
                        matches!(got, Err(TransitionError::Illegal { .. })),
                        "{state} + {event:?} should be illegal, got {got:?}"
                    ),
                }
            }
        }
    }

    #[test]
    fn terminal_states_accept_nothing() {
        for state in JobState::ALL.into_iter().filter(|s| s.is_terminal()) {
            for event in all_events(1) {
                assert!(transition(&job_in(state, 1), &event, 0).is_err());
            }
        }
    }

    #[test]
    fn reports_for_another_attempt_are_stale() {
        let job = job_in(JobState::Running, 2);
        for event in [
            JobEvent::Started { attempt: 1 },
            JobEvent::Finished {
                attempt: 1,
                outcome: Outcome::Exited { code: 0 },
            },
            JobEvent::WorkerLost {
                attempt: 3,
                reason: "x".into(),
            },
        ] {
            assert_eq!(
                transition(&job, &event, 0),
                Err(TransitionError::StaleAttempt {
                    got: event.attempt().unwrap_or_default(),
                    current: 2
                })
            );
        }
        let queued = job_in(JobState::Queued, 2);
        let skip = JobEvent::Assigned {
            worker: "w".into(),
            attempt: 4,
        };
        assert!(matches!(
            transition(&queued, &skip, 0),
            Err(TransitionError::StaleAttempt { .. })
        ));
    }

    #[test]
    fn outcomes_map_to_states_and_codes() {
        let cases = [
            (Outcome::Exited { code: 0 }, JobState::Succeeded, Some(0)),
            (Outcome::Exited { code: 3 }, JobState::Failed, Some(3)),
            (Outcome::Signaled { signal: 9 }, JobState::Failed, Some(137)),
            (Outcome::Cancelled, JobState::Cancelled, None),
            (Outcome::TimedOut, JobState::TimedOut, None),
            (
                Outcome::SpawnFailed {
                    code: 127,
                    message: "no such file".into(),
                },
                JobState::Failed,
                Some(127),
            ),
            (Outcome::OomKilled, JobState::Failed, Some(137)),
        ];
        for (outcome, state, code) in cases {
            let job = job_in(JobState::Running, 1);
            let done = transition(
                &job,
                &JobEvent::Finished {
                    attempt: 1,
                    outcome,
                },
                9,
            )
            .unwrap();
            assert_eq!((done.state, done.exit_code), (state, code));
            assert_eq!(done.finished_at, Some(9));
        }
    }

    #[test]
    fn an_oom_kill_fails_the_job_with_137_and_names_the_limit() {
        let mut job = job_in(JobState::Running, 1);
        job.spec.image = Some("busybox".into());
        job.spec.memory_bytes = Some(32 << 20);
        let done = transition(
            &job,
            &JobEvent::Finished {
                attempt: 1,
                outcome: Outcome::OomKilled,
            },
            3,
        )
        .unwrap();
        assert_eq!(done.state, JobState::Failed);
        assert_eq!((done.exit_code, done.signal), (Some(137), Some(9)));
        let reason = done.reason.unwrap_or_default();
        assert!(reason.contains("out of memory"), "{reason}");
        assert!(reason.contains("32 MiB"), "{reason}");
        assert!(oom_reason(None).contains("no memory limit"));
    }

    #[test]
    fn oom_outcomes_serialize_with_their_kind() {
        let json = serde_json::to_string(&Outcome::OomKilled).unwrap();
        assert_eq!(json, r#"{"kind":"oom_killed"}"#);
        let back: Outcome = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Outcome::OomKilled);
    }

    /// The job after its worker is declared lost.
    fn lose(j: &Job) -> Job {
        transition(
            j,
            &JobEvent::WorkerLost {
                attempt: j.attempt,
                reason: "silent".into(),
            },
            0,
        )
        .unwrap()
    }

    #[test]
    fn lost_job_is_requeued_while_retries_remain() {
        let mut job = job_in(JobState::Running, 1);
        job.spec.max_retries = 1;
        let again = lose(&job);
        assert_eq!(again.state, JobState::Queued);
        let mut second = transition(
            &again,
            &JobEvent::Assigned {
                worker: "w2".into(),
                attempt: 2,
            },
            0,
        )
        .unwrap();
        second.state = JobState::Running;
        assert_eq!(lose(&second).state, JobState::Lost);
    }

    #[test]
    fn rejected_attempts_do_not_use_up_retries() {
        let mut job = job_in(JobState::Assigned, 1);
        job.spec.max_retries = 1;
        let assign = |j: &Job, attempt: u32| {
            let mut next = transition(
                j,
                &JobEvent::Assigned {
                    worker: "w".into(),
                    attempt,
                },
                0,
            )
            .unwrap();
            next.state = JobState::Running;
            next
        };
        let rejected = transition(
            &job,
            &JobEvent::Rejected {
                attempt: 1,
                reason: "busy".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(rejected.state, JobState::Queued);
        assert_eq!(rejected.retries, 0);
        let second = assign(&rejected, 2);
        let again = lose(&second);
        assert_eq!(again.state, JobState::Queued);
        assert_eq!(again.retries, 1);
        assert_eq!(again.reason.as_deref(), Some("attempt 2 lost: silent"));
        let third = assign(&again, 3);
        let lost = lose(&third);
        assert_eq!(lost.state, JobState::Lost);
        assert_eq!(lost.retries, 1);
        assert_eq!(lost.reason.as_deref(), Some("silent"));
    }

    #[test]
    fn records_without_retries_still_parse() {
        let job = job_in(JobState::Queued, 2);
        let mut value = serde_json::to_value(&job).unwrap();
        value.as_object_mut().unwrap().remove("retries");
        let back: Job = serde_json::from_value(value).unwrap();
        assert_eq!(back, job);
    }

    #[test]
    fn cancelled_job_is_not_retried_when_lost() {
        let mut job = job_in(JobState::Running, 1);
        job.spec.max_retries = 5;
        job.cancel_requested = true;
        let lost = transition(
            &job,
            &JobEvent::WorkerLost {
                attempt: 1,
                reason: "gone".into(),
            },
            0,
        )
        .unwrap();
        assert_eq!(lost.state, JobState::Lost);
    }

    #[test]
    fn state_names_round_trip() {
        for s in JobState::ALL {
            assert_eq!(JobState::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobState::parse("bogus"), None);
    }
}
