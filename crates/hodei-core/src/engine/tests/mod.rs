use super::*;
use crate::job::Outcome;
use crate::log::{LogStream, StreamTotal};
use crate::spec::JobSpec;
use bytes::Bytes;

const GRACE: u64 = 30_000;

fn engine() -> Engine {
    Engine::new(EngineConfig {
        heartbeat_interval_ms: 5_000,
        lease_grace_ms: GRACE,
    })
}

/// Runs one batch of inputs at `now` and returns its output.
fn batch(e: &mut Engine, now: Millis, inputs: Vec<Input>) -> Output {
    let mut out = Output::default();
    for i in inputs {
        e.handle(i, now, &mut out);
    }
    e.end_batch(now, &mut out);
    out
}

fn submit(req: RequestId, id: &str, spec: JobSpec) -> Input {
    Input::Submit {
        req,
        id: id.into(),
        spec,
        submitter: None,
        fresh: false,
        existing: None,
    }
}

fn attach(session: SessionId, worker: &str, labels: &[&str], slots: u32) -> Input {
    Input::Attach {
        session,
        worker_id: worker.into(),
        labels: labels.iter().map(|s| s.to_string()).collect(),
        slots,
        prefetch: 0,
        running: vec![],
    }
}

/// `worker` back on a new session with the slots of `slots`, saying it
/// still runs `running` (a job id and attempt).
fn reattach(session: SessionId, worker: &str, slots: u32, running: (&str, u32)) -> Input {
    Input::Attach {
        session,
        worker_id: worker.into(),
        labels: vec![],
        slots,
        prefetch: 0,
        running: vec![AttemptRef {
            job_id: running.0.into(),
            attempt: running.1,
        }],
    }
}

/// An engine with worker `w` (one slot, session 1) and job `j` assigned to
/// it at time 0.
fn one_job_on_one_worker() -> Engine {
    let mut e = engine();
    batch(
        &mut e,
        0,
        vec![
            attach(1, "w", &[], 1),
            submit(1, "j", JobSpec::command(["x"])),
        ],
    );
    e
}

fn started(session: SessionId, job: &str, attempt: u32) -> Input {
    Input::Started {
        session,
        job_id: job.into(),
        attempt,
    }
}

fn assigned(out: &Output) -> Vec<(SessionId, String, u32)> {
    out.messages
        .iter()
        .filter_map(|(s, m)| match m {
            ToAgent::Assign { job, .. } => Some((*s, job.id.clone(), job.attempt)),
            _ => None,
        })
        .collect()
}

fn log(session: SessionId, job: &str, attempt: u32, offset: u64, data: &'static [u8]) -> Input {
    Input::Log {
        session: Some(session),
        req: None,
        job_id: job.into(),
        attempt,
        stream: LogStream::Stdout,
        offset: Some(offset),
        data: Bytes::from_static(data),
        timestamp_ms: 0,
        only_workers: None,
    }
}

fn result(session: SessionId, job: &str, attempt: u32, code: i32) -> Input {
    Input::Result {
        session,
        job_id: job.into(),
        attempt,
        outcome: Outcome::Exited { code },
        totals: None,
    }
}

fn totals(stdout: &[u8], stderr: &[u8]) -> Option<[StreamTotal; 2]> {
    Some([
        StreamTotal::default().append(stdout),
        StreamTotal::default().append(stderr),
    ])
}

#[test]
fn only_valid_ids_not_in_memory_need_a_store_lookup() {
    let mut e = engine();
    assert!(e.needs_lookup("j"));
    batch(&mut e, 1, vec![submit(7, "j", JobSpec::command(["true"]))]);
    assert!(!e.needs_lookup("j"), "in memory");
    assert!(!e.needs_lookup("a\0b"), "an invalid id names no job");
    assert!(!e.needs_lookup(""), "an invalid id names no job");
}

#[test]
fn submitted_job_is_stored_then_pushed_to_a_free_worker() {
    let mut e = engine();
    batch(&mut e, 0, vec![attach(1, "w", &[], 1)]);
    let out = batch(&mut e, 1, vec![submit(7, "j", JobSpec::command(["true"]))]);
    assert_eq!(out.writes.jobs["j"].state, JobState::Assigned);
    assert_eq!(assigned(&out), vec![(1, "j".to_string(), 1)]);
    assert!(matches!(
        &out.replies[..],
        [(7, Reply::Submitted { created: true, .. })]
    ));
}

#[test]
fn submit_is_idempotent_on_id_and_spec() {
    let mut e = engine();
    batch(&mut e, 0, vec![submit(1, "j", JobSpec::command(["true"]))]);
    let out = batch(
        &mut e,
        1,
        vec![
            submit(2, "j", JobSpec::command(["true"])),
            submit(3, "j", JobSpec::command(["false"])),
        ],
    );
    assert!(out.writes.jobs.is_empty(), "nothing new to write");
    assert!(matches!(
        out.replies[0],
        (2, Reply::Submitted { created: false, .. })
    ));
    assert_eq!(
        out.replies[1],
        (3, Reply::Error(EngineError::AlreadyExists("j".into())))
    );
    // A finished job known only to the store counts too.
    let mut stored = Job::new("old".into(), JobSpec::command(["true"]).normalized(), 1, 0);
    stored.state = JobState::Succeeded;
    let out = batch(
        &mut e,
        2,
        vec![Input::Submit {
            req: 4,
            id: "old".into(),
            spec: JobSpec::command(["true"]),
            submitter: None,
            fresh: false,
            existing: Some(Box::new(stored)),
        }],
    );
    assert!(matches!(
        out.replies[0],
        (4, Reply::Submitted { created: false, .. })
    ));
}

#[test]
fn a_new_job_records_its_submitter_and_a_resubmission_keeps_it() {
    let mut e = engine();
    let by = |req, who: &str| Input::Submit {
        req,
        id: "j".into(),
        spec: JobSpec::command(["true"]),
        submitter: Some(who.into()),
        fresh: false,
        existing: None,
    };
    let out = batch(&mut e, 0, vec![by(1, "t-alice")]);
    assert_eq!(out.writes.jobs["j"].submitter.as_deref(), Some("t-alice"));
    // Same spec from another token: the same job, still alice's.
    let out = batch(&mut e, 1, vec![by(2, "t-bob")]);
    match &out.replies[0] {
        (
            2,
            Reply::Submitted {
                job,
                created: false,
            },
        ) => {
            assert_eq!(job.submitter.as_deref(), Some("t-alice"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        e.live_job("j").and_then(|j| j.submitter.as_deref()),
        Some("t-alice")
    );
}

#[test]
fn invalid_submissions_name_the_field() {
    let mut e = engine();
    let out = batch(
        &mut e,
        0,
        vec![
            submit(1, "j", JobSpec::default()),
            submit(2, &"x".repeat(10_000), JobSpec::command(["true"])),
        ],
    );
    let fields: Vec<_> = out
        .replies
        .iter()
        .map(|(_, r)| match r {
            Reply::Error(EngineError::Invalid(i)) => i.field.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(fields, vec!["command", "job_id"]);
    assert!(out.writes.jobs.is_empty());
}

#[test]
fn slots_limit_concurrency_and_a_result_frees_one() {
    let mut e = engine();
    batch(&mut e, 0, vec![attach(1, "w", &[], 2)]);
    let out = batch(
        &mut e,
        1,
        (0..5)
            .map(|i| submit(i, &format!("j{i}"), JobSpec::command(["true"])))
            .collect(),
    );
    let first = assigned(&out);
    assert_eq!(first.len(), 2);
    let out = batch(&mut e, 2, vec![started(1, "j0", 1), result(1, "j0", 1, 0)]);
    assert_eq!(out.writes.jobs["j0"].state, JobState::Succeeded);
    assert_eq!(assigned(&out), vec![(1, "j2".to_string(), 1)]);
    assert!(out.messages.contains(&(
        1,
        ToAgent::ResultAck {
            job_id: "j0".into(),
            attempt: 1
        }
    )));
    assert!(e.live_job("j0").is_none(), "finished jobs leave memory");
}

#[test]
fn labels_route_jobs() {
    let mut e = engine();
    batch(
        &mut e,
        0,
        vec![attach(1, "a", &["red"], 4), attach(2, "b", &["blue"], 4)],
    );
    let spec = |l: &str| JobSpec {
        labels: vec![l.into()],
        ..JobSpec::command(["true"])
    };
    let out = batch(
        &mut e,
        1,
        vec![
            submit(1, "r", spec("red")),
            submit(2, "b", spec("blue")),
            submit(3, "g", spec("green")),
        ],
    );
    let mut got = assigned(&out);
    got.sort();
    assert_eq!(got, vec![(1, "r".to_string(), 1), (2, "b".to_string(), 1)]);
    assert_eq!(e.queue_len(), 1);
}

#[test]
fn logs_are_deduplicated_by_offset_and_acknowledged_after_the_batch() {
    let mut e = one_job_on_one_worker();
    let out = batch(
        &mut e,
        1,
        vec![
            log(1, "j", 1, 0, b"hello "),
            log(1, "j", 1, 0, b"hello "),
            log(1, "j", 1, 3, b"lo world"),
            log(1, "j", 1, 50, b"gap"),
        ],
    );
    let stored: Vec<(u64, &[u8])> = out
        .writes
        .logs
        .iter()
        .map(|l| (l.offset, &l.data[..]))
        .collect();
    assert_eq!(stored, vec![(0, &b"hello "[..]), (6, &b"world"[..])]);
    let acks: Vec<_> = out
        .messages
        .iter()
        .filter(|(_, m)| matches!(m, ToAgent::LogAck { .. }))
        .collect();
    assert_eq!(
        acks,
        vec![&(
            1,
            ToAgent::LogAck {
                job_id: "j".into(),
                attempt: 1,
                offsets: [11, 0],
                // The chunk at 50 left a gap: the agent must resend from 11.
                resend: true,
            }
        )]
    );
}

#[test]
fn reports_from_a_stale_attempt_or_another_worker_change_nothing() {
    let mut e = engine();
    batch(
        &mut e,
        0,
        vec![
            attach(1, "w1", &[], 1),
            submit(1, "j", JobSpec::command(["x"])),
        ],
    );
    batch(&mut e, 0, vec![attach(2, "w2", &[], 1)]);
    let out = batch(
        &mut e,
        1,
        vec![
            result(2, "j", 1, 0),
            log(1, "j", 7, 0, b"x"),
            log(1, "j", 7, 1, b"y"),
            log(1, "j", 7, 2, b"z"),
            result(1, "j", 0, 0),
        ],
    );
    assert!(out.writes.jobs.is_empty());
    assert!(out.writes.logs.is_empty());
    assert_eq!(e.live_job("j").map(|j| j.state), Some(JobState::Assigned));
    // The stale logs' sender is told to stop that attempt, once per batch.
    let cancels = out
        .messages
        .iter()
        .filter(|(s, m)| *s == 1 && matches!(m, ToAgent::Cancel { attempt: 7, .. }))
        .count();
    assert_eq!(
        cancels, 1,
        "one cancel per stale attempt and batch, not per chunk"
    );
}

#[test]
fn cancel_ends_a_queued_job_and_asks_the_agent_to_kill_a_running_one() {
    let mut e = engine();
    let out = batch(
        &mut e,
        0,
        vec![
            submit(1, "q", JobSpec::command(["x"])),
            Input::Cancel {
                req: 2,
                id: "q".into(),
                reason: "user".into(),
                existing: None,
            },
        ],
    );
    assert_eq!(out.writes.jobs["q"].state, JobState::Cancelled);
    assert_eq!(e.queue_len(), 0);

    batch(
        &mut e,
        1,
        vec![
            attach(1, "w", &[], 1),
            submit(3, "r", JobSpec::command(["x"])),
        ],
    );
    let out = batch(
        &mut e,
        2,
        vec![Input::Cancel {
            req: 4,
            id: "r".into(),
            reason: "user".into(),
            existing: None,
        }],
    );
    assert!(
        out.messages
            .iter()
            .any(|(s, m)| *s == 1 && matches!(m, ToAgent::Cancel { attempt: 1, .. }))
    );
    assert!(out.writes.jobs["r"].cancel_requested);
    let out = batch(
        &mut e,
        3,
        vec![Input::Result {
            session: 1,
            job_id: "r".into(),
            attempt: 1,
            outcome: Outcome::Cancelled,
            totals: None,
        }],
    );
    assert_eq!(out.writes.jobs["r"].state, JobState::Cancelled);

    let out = batch(
        &mut e,
        4,
        vec![Input::Cancel {
            req: 5,
            id: "nope".into(),
            reason: "user".into(),
            existing: None,
        }],
    );
    assert_eq!(
        out.replies[0],
        (5, Reply::Error(EngineError::NotFound("nope".into())))
    );
}

#[test]
fn seed_logs_append_at_the_end_and_unknown_jobs_are_not_found() {
    let mut e = engine();
    batch(&mut e, 0, vec![submit(1, "j", JobSpec::command(["x"]))]);
    let seed = |req, job: &str, data: &'static [u8]| Input::Log {
        session: None,
        req: Some(req),
        job_id: job.into(),
        attempt: 0,
        stream: LogStream::Stdout,
        offset: None,
        data: Bytes::from_static(data),
        timestamp_ms: 0,
        only_workers: None,
    };
    let out = batch(
        &mut e,
        1,
        vec![seed(2, "j", b"ab"), seed(3, "j", b"cd"), seed(4, "x", b"z")],
    );
    let offsets: Vec<u64> = out.writes.logs.iter().map(|l| l.offset).collect();
    assert_eq!(offsets, vec![0, 2]);
    assert_eq!(
        out.replies[2],
        (4, Reply::Error(EngineError::NotFound("x".into())))
    );
}

#[test]
fn a_result_with_bytes_missing_waits_for_them() {
    let mut e = one_job_on_one_worker();
    batch(&mut e, 1, vec![log(1, "j", 1, 0, b"abc")]);
    let with_totals = |t| Input::Result {
        session: 1,
        job_id: "j".into(),
        attempt: 1,
        outcome: Outcome::Exited { code: 0 },
        totals: t,
    };
    // The agent produced "abcdef" but only "abc" is stored.
    let out = batch(&mut e, 2, vec![with_totals(totals(b"abcdef", b""))]);
    assert!(out.writes.jobs.is_empty(), "the result must wait");
    assert!(out.messages.contains(&(
        1,
        ToAgent::LogAck {
            job_id: "j".into(),
            attempt: 1,
            offsets: [3, 0],
            resend: true
        }
    )));
    assert!(
        !out.messages
            .iter()
            .any(|(_, m)| matches!(m, ToAgent::ResultAck { .. }))
    );
    // The agent resends the missing bytes and the result.
    let out = batch(
        &mut e,
        3,
        vec![
            log(1, "j", 1, 3, b"def"),
            with_totals(totals(b"abcdef", b"")),
        ],
    );
    let job = &out.writes.jobs["j"];
    assert_eq!(job.state, JobState::Succeeded);
    assert_eq!(job.reason, None);
}

#[test]
fn a_checksum_mismatch_is_recorded_with_the_result() {
    let mut e = one_job_on_one_worker();
    let out = batch(
        &mut e,
        1,
        vec![
            log(1, "j", 1, 0, b"abc"),
            Input::Result {
                session: 1,
                job_id: "j".into(),
                attempt: 1,
                outcome: Outcome::Exited { code: 0 },
                totals: totals(b"xyz", b""),
            },
        ],
    );
    let job = &out.writes.jobs["j"];
    assert_eq!(job.state, JobState::Succeeded);
    assert!(
        job.reason
            .as_deref()
            .unwrap_or("")
            .contains("stdout log differs"),
        "{job:?}"
    );
}

mod revoke;
mod workers;
