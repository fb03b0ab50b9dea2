//! The JSON shapes of the HTTP API (`/api/v1`), shared by the server and its
//! clients so both sides agree by construction.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::job::{Job, JobState};
use crate::log::LogStream;
use crate::spec::JobSpec;

/// `POST /api/v1/jobs`. Unknown fields are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// Optional client-chosen id; the server makes one when absent.
    /// Submitting the same id and spec again returns the same job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default)]
    pub name: String,
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub max_retries: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill_grace_ms: Option<u64>,
}

impl SubmitRequest {
    /// Splits the request into the optional id and the job spec.
    pub fn into_parts(self) -> (Option<String>, JobSpec) {
        let spec = JobSpec {
            name: self.name,
            command: self.command,
            image: self.image,
            env: self.env,
            working_dir: self.working_dir,
            timeout_ms: self.timeout_ms,
            labels: self.labels,
            priority: self.priority,
            max_retries: self.max_retries,
            kill_grace_ms: self.kill_grace_ms,
        };
        (self.id, spec)
    }
}

/// The reply to a submission.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job: Job,
    /// False when an identical job with this id already existed.
    pub created: bool,
}

/// `GET /api/v1/jobs`: a page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Every error body: a stable machine `code` and a human `message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: String,
    pub message: String,
    /// The input field at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// SSE `log` event of `GET /api/v1/jobs/{id}/logs/follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEvent {
    pub attempt: u32,
    pub stream: LogStream,
    pub offset: u64,
    /// The raw bytes, base64 (standard alphabet): output need not be UTF-8.
    pub data: String,
    pub timestamp_ms: i64,
}

/// SSE `end` event: the job finished and every log byte was sent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndEvent {
    pub state: JobState,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
}

impl EndEvent {
    pub fn of(job: &Job) -> EndEvent {
        EndEvent {
            state: job.state,
            exit_code: job.exit_code,
            signal: job.signal,
            reason: job.reason.clone(),
        }
    }

    /// The exit status `hodei run` reports for this ending: the job's own
    /// code, 124 timed out, 130 cancelled, 125 lost (Hodei could not finish it).
    pub fn cli_exit_code(&self) -> i32 {
        match self.state {
            JobState::Succeeded => 0,
            JobState::Failed => self.exit_code.unwrap_or(1),
            JobState::TimedOut => 124,
            JobState::Cancelled => 130,
            JobState::Lost | JobState::Queued | JobState::Assigned | JobState::Running => 125,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<SubmitRequest>(r#"{"command":["true"],"bogus":1}"#);
        assert!(err.is_err());
        let ok: SubmitRequest = serde_json::from_str(r#"{"command":["true"]}"#).unwrap();
        assert_eq!(ok.into_parts().1.command, vec!["true"]);
    }

    #[test]
    fn exit_codes_follow_the_cli_contract() {
        let end = |state, exit_code| EndEvent {
            state,
            exit_code,
            signal: None,
            reason: None,
        };
        assert_eq!(end(JobState::Succeeded, Some(0)).cli_exit_code(), 0);
        assert_eq!(end(JobState::Failed, Some(3)).cli_exit_code(), 3);
        assert_eq!(end(JobState::Failed, Some(127)).cli_exit_code(), 127);
        assert_eq!(end(JobState::TimedOut, None).cli_exit_code(), 124);
        assert_eq!(end(JobState::Cancelled, None).cli_exit_code(), 130);
        assert_eq!(end(JobState::Lost, None).cli_exit_code(), 125);
    }
}
