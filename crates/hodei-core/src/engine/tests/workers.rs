//! Workers: their sessions ending and coming back, their state as users
//! see it, and prefetch.

use super::*;

#[test]
fn a_silent_worker_loses_its_jobs_after_the_grace_and_retries_requeue() {
    let mut e = engine();
    let retry = JobSpec {
        max_retries: 1,
        ..JobSpec::command(["x"])
    };
    batch(
        &mut e,
        0,
        vec![
            attach(1, "w", &[], 2),
            submit(1, "once", JobSpec::command(["x"])),
            submit(2, "retry", retry),
        ],
    );
    let out = batch(&mut e, GRACE as i64, vec![Input::Tick]);
    assert!(
        out.writes.jobs.is_empty(),
        "not before the grace has passed"
    );
    let out = batch(&mut e, GRACE as i64 + 1, vec![Input::Tick]);
    assert_eq!(out.writes.jobs["once"].state, JobState::Lost);
    assert!(
        out.writes.jobs["once"]
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("silent")
    );
    assert_eq!(out.writes.jobs["retry"].state, JobState::Queued);
    assert_eq!(out.close_sessions, vec![1]);
    // A new worker picks up the retry as attempt 2.
    let out = batch(&mut e, GRACE as i64 + 2, vec![attach(2, "w2", &[], 1)]);
    assert_eq!(assigned(&out), vec![(2, "retry".to_string(), 2)]);
}

#[test]
fn an_agent_back_within_the_grace_keeps_its_job() {
    let mut e = one_job_on_one_worker();
    batch(&mut e, 1, vec![started(1, "j", 1)]);
    batch(&mut e, 2, vec![Input::Detach { session: 1 }]);
    let out = batch(
        &mut e,
        10_000,
        vec![reattach(2, "w", 1, ("j", 1)), Input::Tick],
    );
    assert!(out.writes.jobs.is_empty());
    let out = batch(
        &mut e,
        10_001,
        vec![log(2, "j", 1, 0, b"still here"), result(2, "j", 1, 0)],
    );
    assert_eq!(out.writes.jobs["j"].state, JobState::Succeeded);
    assert_eq!(out.writes.logs.len(), 1);
}

#[test]
fn an_agent_back_without_its_jobs_requeues_unstarted_and_loses_started_ones() {
    let mut e = engine();
    batch(
        &mut e,
        0,
        vec![
            attach(1, "w", &[], 2),
            submit(1, "started", JobSpec::command(["x"])),
            submit(2, "unstarted", JobSpec::command(["x"])),
        ],
    );
    batch(&mut e, 1, vec![started(1, "started", 1)]);
    let out = batch(&mut e, 2, vec![reattach(2, "w", 2, ("ghost", 3))]);
    assert_eq!(out.writes.jobs["started"].state, JobState::Lost);
    // The unstarted job was requeued and, the slot being free, assigned again.
    assert_eq!(out.writes.jobs["unstarted"].attempt, 2);
    assert_eq!(out.close_sessions, vec![1]);
    assert!(
        out.messages
            .iter()
            .any(|(s, m)| *s == 2
                && matches!(m, ToAgent::Cancel { job_id, .. } if job_id == "ghost"))
    );
}

#[test]
fn recovery_restores_queue_and_running_jobs() {
    let mut queued = Job::new("q".into(), JobSpec::command(["x"]).normalized(), 5, 0);
    queued.state = JobState::Queued;
    let mut running = Job::new("r".into(), JobSpec::command(["x"]).normalized(), 4, 0);
    running.state = JobState::Running;
    running.attempt = 1;
    running.worker = Some("w".into());
    let ends = HashMap::from([(
        ("r".to_string(), 1),
        [
            StreamTotal::default().append(b"hello"),
            StreamTotal::default().append(b"!!"),
        ],
    )]);
    let mut e = Engine::recover(
        EngineConfig::default(),
        vec![queued, running],
        &ends,
        vec![],
        5,
        100,
    );
    assert_eq!(e.queue_len(), 1);
    // The agent comes back with the running job; its next log continues at 5.
    let out = batch(
        &mut e,
        200,
        vec![
            reattach(9, "w", 2, ("r", 1)),
            log(9, "r", 1, 0, b"hello world"),
        ],
    );
    assert_eq!(assigned(&out), vec![(9, "q".to_string(), 1)]);
    assert_eq!(out.writes.logs[0].offset, 5);
    assert_eq!(&out.writes.logs[0].data[..], b" world");
    // New submissions continue the sequence.
    let out = batch(&mut e, 300, vec![submit(1, "n", JobSpec::command(["x"]))]);
    assert_eq!(out.writes.jobs["n"].seq, 6);
}

#[test]
fn workers_report_their_state() {
    let mut e = engine();
    batch(&mut e, 0, vec![attach(1, "w", &["linux"], 1)]);
    let mut out = batch(&mut e, 0, vec![Input::ListWorkers { req: 1 }]);
    let Some((_, Reply::Workers(list))) = out.replies.pop() else {
        panic!("no reply")
    };
    assert_eq!(list[0].state, "ready");
    batch(&mut e, 1, vec![submit(2, "j", JobSpec::command(["x"]))]);
    batch(&mut e, 1, vec![Input::Drain { session: 1 }]);
    let mut out = batch(&mut e, 2, vec![Input::ListWorkers { req: 3 }]);
    let Some((_, Reply::Workers(list))) = out.replies.pop() else {
        panic!("no reply")
    };
    assert_eq!(
        (list[0].state.as_str(), list[0].running.len()),
        ("draining", 1)
    );
}

fn worker_notices(out: &Output) -> Vec<&str> {
    out.notices
        .iter()
        .filter_map(|n| match n {
            Notice::WorkerChanged { worker_id } => Some(worker_id.as_str()),
            _ => None,
        })
        .collect()
}

#[test]
fn worker_changes_are_announced() {
    let mut e = engine();
    let out = batch(&mut e, 0, vec![attach(1, "w", &[], 1)]);
    assert_eq!(worker_notices(&out), ["w"], "attach");
    let out = batch(&mut e, 1, vec![Input::Heartbeat { session: 1 }]);
    assert!(
        worker_notices(&out).is_empty(),
        "heartbeats are not notices"
    );
    let out = batch(&mut e, 2, vec![Input::Drain { session: 1 }]);
    assert_eq!(worker_notices(&out), ["w"], "drain");
    let out = batch(&mut e, 3, vec![Input::Detach { session: 1 }]);
    assert_eq!(worker_notices(&out), ["w"], "detach");
    assert_eq!(out.close_sessions, vec![1], "a detached session is closed");
    let out = batch(&mut e, 4, vec![Input::Drain { session: 1 }]);
    assert!(worker_notices(&out).is_empty(), "drain of a closed session");
    let out = batch(&mut e, 4, vec![Input::Detach { session: 1 }]);
    assert!(out.close_sessions.is_empty(), "closed once");
    let out = batch(
        &mut e,
        5,
        vec![Input::Register {
            req: 1,
            worker_id: "seed".into(),
            labels: vec![],
            slots: 2,
        }],
    );
    assert_eq!(worker_notices(&out), ["seed"], "register");
    batch(&mut e, 6, vec![attach(2, "x", &[], 1)]);
    let out = batch(&mut e, 6 + GRACE as i64 + 1, vec![Input::Tick]);
    assert_eq!(worker_notices(&out), ["x"], "lease expiry");
}

#[test]
fn a_worker_with_prefetch_takes_that_many_jobs_beyond_its_slots() {
    let mut e = engine();
    let mut with = attach(1, "w", &[], 1);
    if let Input::Attach { prefetch, .. } = &mut with {
        *prefetch = 1;
    }
    let subs = (1..=3)
        .map(|i| submit(i, &format!("j{i}"), JobSpec::command(["true"])))
        .collect();
    batch(&mut e, 0, vec![with]);
    let out = batch(&mut e, 0, subs);
    // One slot and one queued: two assignments; the third job waits.
    let got: Vec<String> = assigned(&out).into_iter().map(|(_, j, _)| j).collect();
    assert_eq!(got, ["j1", "j2"]);
    assert_eq!(e.live_job("j3").map(|j| j.state), Some(JobState::Queued));
    // The listing says how many it may hold beyond its one slot.
    let mut out = batch(&mut e, 0, vec![Input::ListWorkers { req: 9 }]);
    let Some((_, Reply::Workers(list))) = out.replies.pop() else {
        panic!("no reply")
    };
    assert_eq!((list[0].slots, list[0].prefetch), (1, 1));
    assert_eq!(list[0].running, ["j1", "j2"]);
    assert_eq!(list[0].state, "busy");
    // The first result frees room for the third.
    let out = batch(&mut e, 1, vec![result(1, "j1", 1, 0)]);
    let got: Vec<String> = assigned(&out).into_iter().map(|(_, j, _)| j).collect();
    assert_eq!(got, ["j3"]);
}

#[test]
fn a_queued_job_goes_out_when_a_worker_gains_room_or_the_labels_it_needs() {
    let mut e = engine();
    let mut gpu_job = JobSpec::command(["train"]);
    gpu_job.labels = vec!["gpu".into()];
    batch(
        &mut e,
        0,
        vec![
            attach(1, "w", &[], 2),
            submit(1, "busy", JobSpec::command(["sleep"])),
        ],
    );
    // The free slot does not fit: the gpu job waits, and batches that
    // change nothing (a heartbeat) send nothing.
    let out = batch(&mut e, 0, vec![submit(2, "gpu", gpu_job)]);
    assert!(assigned(&out).is_empty());
    let beat = Input::Running {
        session: 1,
        running: vec![],
    };
    assert!(assigned(&batch(&mut e, 1, vec![beat])).is_empty());
    // The same worker comes back on a new session with the label and the
    // same room as before (one free slot): the job goes to it.
    let mut back = reattach(2, "w", 2, ("busy", 1));
    if let Input::Attach { labels, .. } = &mut back {
        *labels = vec!["gpu".into()];
    }
    let out = batch(&mut e, 2, vec![back]);
    assert_eq!(assigned(&out), [(2, "gpu".to_string(), 1)]);
    // A job queued behind a full worker goes out when a slot frees.
    let out = batch(&mut e, 3, vec![submit(3, "next", JobSpec::command(["x"]))]);
    assert!(assigned(&out).is_empty());
    let out = batch(&mut e, 4, vec![result(2, "busy", 1, 0)]);
    assert_eq!(assigned(&out), [(2, "next".to_string(), 1)]);
}
