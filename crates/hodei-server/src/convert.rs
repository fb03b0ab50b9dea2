//! Conversions between HWP protobuf messages and the core's plain types, and
//! from engine errors to gRPC statuses.

use hodei_core::engine::{AttemptRef, EngineError, Input, SessionId, ToAgent, WorkerInfo};
use hodei_core::log::StreamTotal;
use hodei_core::spec::PullPolicy;
use hodei_core::{Job, JobSpec, LogStream, Outcome};
use hwp_proto::pb;
use tonic::Status;

use crate::reactor::HubError;

/// The job spec carried by a seed `AssignJobRequest` plus its additions.
pub fn spec_from_request(req: &pb::AssignJobRequest) -> Result<JobSpec, Status> {
    let ext = req.spec.clone().unwrap_or_default();
    let pull_policy = pull_policy(ext.pull_policy)?;
    Ok(JobSpec {
        name: req.name.clone(),
        command: req.command.clone(),
        image: Some(req.image.clone()).filter(|i| !i.is_empty()),
        env: ext.env.into_iter().collect(),
        working_dir: Some(ext.working_dir).filter(|d| !d.is_empty()),
        timeout_ms: Some(ext.timeout_ms).filter(|t| *t > 0),
        labels: ext.labels,
        priority: ext.priority,
        max_retries: ext.max_retries,
        kill_grace_ms: Some(ext.kill_grace_ms).filter(|g| *g > 0),
        cpu_millicores: Some(ext.cpu_millicores).filter(|c| *c > 0),
        memory_bytes: Some(ext.memory_bytes).filter(|m| *m > 0),
        pull_policy,
        secrets: ext.secrets,
    })
}

/// A wire pull policy; unspecified is the agent's default (`None`).
pub fn pull_policy(value: i32) -> Result<Option<PullPolicy>, Status> {
    match pb::PullPolicy::try_from(value) {
        Ok(pb::PullPolicy::Unspecified) => Ok(None),
        Ok(pb::PullPolicy::IfNotPresent) => Ok(Some(PullPolicy::IfNotPresent)),
        Ok(pb::PullPolicy::Never) => Ok(Some(PullPolicy::Never)),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid pull_policy: {value} is not a pull policy (1 = if-not-present, 2 = never)"
        ))),
    }
}

fn wire_pull_policy(policy: Option<PullPolicy>) -> pb::PullPolicy {
    match policy {
        None => pb::PullPolicy::Unspecified,
        Some(PullPolicy::IfNotPresent) => pb::PullPolicy::IfNotPresent,
        Some(PullPolicy::Never) => pb::PullPolicy::Never,
    }
}

fn spec_ext(spec: &JobSpec) -> pb::JobSpecExt {
    pb::JobSpecExt {
        env: spec.env.clone().into_iter().collect(),
        working_dir: spec.working_dir.clone().unwrap_or_default(),
        timeout_ms: spec.timeout_ms.unwrap_or_default(),
        labels: spec.labels.clone(),
        priority: spec.priority,
        max_retries: spec.max_retries,
        kill_grace_ms: spec.kill_grace_ms(),
        cpu_millicores: spec.cpu_millicores.unwrap_or_default(),
        memory_bytes: spec.memory_bytes.unwrap_or_default(),
        pull_policy: wire_pull_policy(spec.pull_policy) as i32,
        secrets: spec.secrets.clone(),
    }
}

pub fn log_stream(value: i32) -> Result<LogStream, Status> {
    match pb::LogStream::try_from(value) {
        Ok(pb::LogStream::Stdout) => Ok(LogStream::Stdout),
        Ok(pb::LogStream::Stderr) => Ok(LogStream::Stderr),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid stream: {value} is not a log stream (0 = stdout, 1 = stderr)"
        ))),
    }
}

/// The outcome an agent reports in a `JobResult`.
pub fn outcome(result: &pb::JobResult) -> Result<Outcome, Status> {
    Ok(match pb::Outcome::try_from(result.outcome) {
        Ok(pb::Outcome::Exited) | Ok(pb::Outcome::Unspecified) => Outcome::Exited {
            code: result.exit_code,
        },
        Ok(pb::Outcome::Signaled) => Outcome::Signaled {
            signal: result.signal,
        },
        Ok(pb::Outcome::Cancelled) => Outcome::Cancelled,
        Ok(pb::Outcome::TimedOut) => Outcome::TimedOut,
        Ok(pb::Outcome::SpawnFailed) => Outcome::SpawnFailed {
            code: result.exit_code,
            message: result.message.clone(),
        },
        Ok(pb::Outcome::OomKilled) => Outcome::OomKilled,
        Err(_) => {
            return Err(Status::invalid_argument(format!(
                "invalid outcome: {} is not a known outcome",
                result.outcome
            )));
        }
    })
}

/// An engine message as it goes on the wire.
/// The wire form of an engine message; `Denied` ends the stream with
/// PERMISSION_DENIED instead.
pub fn server_message(
    msg: ToAgent,
    session_id: &str,
    hb_ms: u64,
    grace_ms: u64,
) -> Result<pb::ServerMessage, Status> {
    use pb::server_message::Body;
    let body = match msg {
        ToAgent::Denied { reason } => return Err(Status::permission_denied(reason)),
        ToAgent::Welcome { worker_id } => Body::Welcome(pb::Welcome {
            worker_id,
            session_id: session_id.to_string(),
            heartbeat_interval_ms: hb_ms,
            lease_grace_ms: grace_ms,
        }),
        ToAgent::Assign {
            job,
            stdout_offset,
            stderr_offset,
        } => Body::Assign(assignment(&job, stdout_offset, stderr_offset)),
        ToAgent::Cancel {
            job_id,
            attempt,
            reason,
        } => Body::Cancel(pb::CancelAssignment {
            job_id,
            attempt,
            reason,
        }),
        ToAgent::Revoke {
            job_id,
            attempt,
            reason,
        } => Body::Revoke(pb::RevokeAssignment {
            job_id,
            attempt,
            reason,
        }),
        ToAgent::LogAck {
            job_id,
            attempt,
            offsets,
            resend,
        } => Body::LogAck(pb::LogAck {
            job_id,
            attempt,
            stdout_offset: offsets[0],
            stderr_offset: offsets[1],
            resend,
        }),
        ToAgent::ResultAck { job_id, attempt } => {
            Body::ResultAck(pb::ResultAck { job_id, attempt })
        }
        ToAgent::Shutdown {
            reconnect_within_ms,
        } => Body::Shutdown(pb::Shutdown {
            reason: "the orchestrator is shutting down".into(),
            reconnect_within_ms,
        }),
    };
    Ok(pb::ServerMessage { body: Some(body) })
}

fn assignment(job: &Job, stdout_offset: u64, stderr_offset: u64) -> pb::Assignment {
    pb::Assignment {
        job_id: job.id.clone(),
        attempt: job.attempt,
        name: job.spec.name.clone(),
        image: job.spec.image.clone().unwrap_or_default(),
        command: job.spec.command.clone(),
        spec: Some(spec_ext(&job.spec)),
        stdout_offset,
        stderr_offset,
        // Filled in at the edge, just before sending (`secrets::Delivery`).
        secrets: Vec::new(),
        max_log_bytes: 0,
        secrets_error: String::new(),
    }
}

/// The stream totals an agent reports with a result, if it reports both.
pub fn totals(result: &pb::JobResult) -> Option<[StreamTotal; 2]> {
    let total = |s: &pb::StreamSummary| StreamTotal {
        bytes: s.bytes,
        crc32c: s.crc32c,
    };
    Some([
        total(result.stdout.as_ref()?),
        total(result.stderr.as_ref()?),
    ])
}

/// What one message of an agent's `Attach` session asks of the engine.
/// `None`: nothing (log output wholly past the job's log limit); an error
/// ends the session with that status.
pub fn agent_report(
    session: SessionId,
    body: pb::agent_message::Body,
    max_log_bytes: u64,
) -> Result<Option<Input>, Status> {
    use pb::agent_message::Body;
    let input = match body {
        Body::Hello(_) => {
            return Err(Status::invalid_argument(
                "invalid session: Hello sent twice",
            ));
        }
        Body::Heartbeat(beat) => Input::Running {
            session,
            running: beat
                .running
                .into_iter()
                .map(|r| AttemptRef {
                    job_id: r.job_id,
                    attempt: r.attempt,
                })
                .collect(),
        },
        Body::Started(s) => Input::Started {
            session,
            job_id: s.job_id,
            attempt: s.attempt,
        },
        Body::Rejected(r) => Input::Rejected {
            session,
            job_id: r.job_id,
            attempt: r.attempt,
            reason: r.reason,
        },
        Body::Log(mut entry) => {
            let stream = log_stream(entry.stream)?;
            let mut data = crate::grpc::log_bytes(&mut entry)?;
            let dropped = crate::secrets::cap_log_entry(entry.offset, &mut data, max_log_bytes);
            if dropped > 0 {
                tracing::warn!(job = %entry.job_id, dropped, max_log_bytes, "an agent sent output past the job's log limit; dropped");
                if data.is_empty() {
                    return Ok(None);
                }
            }
            Input::Log {
                session: Some(session),
                req: None,
                job_id: entry.job_id,
                attempt: entry.attempt,
                stream,
                offset: Some(entry.offset),
                data,
                timestamp_ms: entry.timestamp_ms,
                only_workers: None,
            }
        }
        Body::Result(result) => Input::Result {
            session,
            outcome: outcome(&result)?,
            totals: totals(&result),
            job_id: result.job_id,
            attempt: result.attempt,
        },
        Body::Drain(_) => Input::Drain { session },
    };
    Ok(Some(input))
}

pub fn worker_status(info: &WorkerInfo) -> pb::WorkerStatus {
    pb::WorkerStatus {
        worker_id: info.id.clone(),
        state: info.state.clone(),
        slots: info.slots,
        running: info.running.len() as u32,
    }
}

pub fn status(err: EngineError) -> Status {
    match &err {
        EngineError::Invalid(_) => Status::invalid_argument(err.to_string()),
        EngineError::NotFound(_) => Status::not_found(err.to_string()),
        EngineError::AlreadyExists(_) => Status::already_exists(err.to_string()),
        EngineError::FailedPrecondition(_) => Status::failed_precondition(err.to_string()),
        EngineError::PermissionDenied(_) => Status::permission_denied(err.to_string()),
    }
}

impl From<HubError> for Status {
    fn from(e: HubError) -> Status {
        Status::unavailable(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_fields_survive_the_wire_both_ways() {
        let spec = JobSpec {
            image: Some("busybox:1".into()),
            kill_grace_ms: Some(2_000),
            cpu_millicores: Some(1_500),
            memory_bytes: Some(64 << 20),
            pull_policy: Some(PullPolicy::Never),
            ..JobSpec::command(["sh", "-c", "true"])
        };
        let req = pb::AssignJobRequest {
            job_id: "j".into(),
            name: spec.name.clone(),
            image: "busybox:1".into(),
            command: spec.command.clone(),
            spec: Some(spec_ext(&spec)),
        };
        assert_eq!(spec_from_request(&req).unwrap(), spec);
        let plain = JobSpec {
            kill_grace_ms: Some(1),
            ..JobSpec::command(["true"])
        };
        let req = pb::AssignJobRequest {
            command: plain.command.clone(),
            spec: Some(spec_ext(&plain)),
            ..Default::default()
        };
        let back = spec_from_request(&req).unwrap();
        assert_eq!(
            (back.cpu_millicores, back.memory_bytes, back.pull_policy),
            (None, None, None)
        );
    }

    #[test]
    fn unknown_pull_policies_are_invalid_arguments() {
        let req = pb::AssignJobRequest {
            command: vec!["true".into()],
            spec: Some(pb::JobSpecExt {
                pull_policy: 42,
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = spec_from_request(&req).unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("pull_policy"));
    }

    #[test]
    fn oom_kills_are_read_from_the_wire() {
        let result = pb::JobResult {
            job_id: "j".into(),
            exit_code: 137,
            attempt: 1,
            outcome: pb::Outcome::OomKilled as i32,
            signal: 9,
            ..Default::default()
        };
        assert_eq!(outcome(&result).unwrap(), Outcome::OomKilled);
    }
}
