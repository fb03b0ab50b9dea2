//! Taking back jobs that wait in an agent's prefetch queue when another
//! worker has a free slot.

use super::*;

/// `worker` on `session` with `slots` slots that queues `prefetch` more.
fn attach_prefetching(session: SessionId, worker: &str, slots: u32, prefetch: u32) -> Input {
    let mut input = attach(session, worker, &[], slots);
    if let Input::Attach { prefetch: p, .. } = &mut input {
        *p = prefetch;
    }
    input
}

fn revoked(out: &Output) -> Vec<(SessionId, String, u32)> {
    out.messages
        .iter()
        .filter_map(|(s, m)| match m {
            ToAgent::Revoke {
                job_id, attempt, ..
            } => Some((*s, job_id.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

fn rejected(session: SessionId, job: &str, attempt: u32) -> Input {
    Input::Rejected {
        session,
        job_id: job.into(),
        attempt,
        reason: "revoked: taken back".into(),
    }
}

/// Worker `a` (session 1, one slot) runs `j1` with `waiting` jobs queued
/// behind it, `j2`, `j3`, ...
fn busy_agent_with_waiting_jobs(waiting: u32) -> Engine {
    let mut e = engine();
    batch(&mut e, 0, vec![attach_prefetching(1, "a", 1, waiting)]);
    let subs = (1..=waiting + 1)
        .map(|i| submit(u64::from(i), &format!("j{i}"), JobSpec::command(["x"])))
        .collect();
    let out = batch(&mut e, 1, subs);
    assert_eq!(assigned(&out).len(), waiting as usize + 1);
    batch(&mut e, 2, vec![started(1, "j1", 1)]);
    e
}

#[test]
fn a_job_waiting_behind_another_is_taken_back_for_a_free_slot_elsewhere() {
    let mut e = busy_agent_with_waiting_jobs(1);
    // Nobody has a free slot: nothing is taken back.
    let out = batch(&mut e, 3, vec![Input::Heartbeat { session: 1 }]);
    assert!(revoked(&out).is_empty());
    // Worker b comes with a free slot: j2 is asked back from a.
    let out = batch(&mut e, 4, vec![attach(2, "b", &[], 1)]);
    assert_eq!(revoked(&out), [(1, "j2".to_string(), 1)]);
    // Asked once, not again while the answer is on its way (a third
    // worker with a free slot makes the engine look again).
    let out = batch(&mut e, 5, vec![attach(3, "c", &[], 1)]);
    assert!(revoked(&out).is_empty());
    // The agent gives it back: queued again, then placed on b as attempt 2.
    let out = batch(&mut e, 6, vec![rejected(1, "j2", 1)]);
    assert_eq!(assigned(&out), [(2, "j2".to_string(), 2)]);
    let job = e.live_job("j2").cloned().expect("live");
    assert_eq!(
        (job.state, job.worker.as_deref()),
        (JobState::Assigned, Some("b"))
    );
    assert_eq!(job.retries, 0, "a job given back unstarted uses no retry");
}

#[test]
fn a_job_that_started_before_the_take_back_keeps_its_slot_and_the_next_waiting_job_goes() {
    let mut e = busy_agent_with_waiting_jobs(2);
    let out = batch(&mut e, 3, vec![attach(2, "b", &[], 1)]);
    // b has one free slot: the more urgent of the two waiting jobs.
    assert_eq!(revoked(&out), [(1, "j2".to_string(), 1)]);
    // j1 ends and j2 starts on a before a saw the take-back (it ignores
    // it): j3 now waits behind j2, and b's slot is still free.
    let out = batch(&mut e, 4, vec![result(1, "j1", 1, 0), started(1, "j2", 1)]);
    assert_eq!(revoked(&out), [(1, "j3".to_string(), 1)]);
    assert_eq!(e.live_job("j2").map(|j| j.state), Some(JobState::Running));
}

#[test]
fn a_queued_job_takes_a_free_slot_before_any_waiting_job_is_taken_back() {
    let mut e = busy_agent_with_waiting_jobs(1);
    // b comes with a free slot in the same batch as a new job: the new job
    // takes it, and nothing is left free to take j2 back for.
    let out = batch(
        &mut e,
        3,
        vec![
            attach(2, "b", &[], 1),
            submit(9, "new", JobSpec::command(["x"])),
        ],
    );
    assert_eq!(assigned(&out), [(2, "new".to_string(), 1)]);
    assert!(revoked(&out).is_empty());
}

fn urgent(req: RequestId, id: &str) -> Input {
    let spec = JobSpec {
        priority: 5,
        ..JobSpec::command(["x"])
    };
    submit(req, id, spec)
}

#[test]
fn a_waiting_job_ahead_of_a_more_urgent_one_on_the_same_agent_goes_behind_it() {
    // a: one slot, room for two more; j1 runs, j2 waits.
    let mut e = engine();
    batch(&mut e, 0, vec![attach_prefetching(1, "a", 1, 2)]);
    batch(
        &mut e,
        1,
        vec![
            submit(1, "j1", JobSpec::command(["x"])),
            submit(2, "j2", JobSpec::command(["x"])),
        ],
    );
    batch(&mut e, 2, vec![started(1, "j1", 1)]);
    // The urgent job takes the last room on a, behind j2: j2 is asked back.
    let out = batch(&mut e, 3, vec![urgent(3, "urgent")]);
    assert_eq!(assigned(&out), [(1, "urgent".to_string(), 1)]);
    assert_eq!(revoked(&out), [(1, "j2".to_string(), 1)]);
    // Given back, j2 is assigned again: now behind the urgent job.
    let out = batch(&mut e, 4, vec![rejected(1, "j2", 1)]);
    assert_eq!(assigned(&out), [(1, "j2".to_string(), 2)]);
    assert!(revoked(&out).is_empty(), "in order now");
}

#[test]
fn a_more_urgent_queued_job_takes_back_the_waiting_jobs_it_would_queue_behind() {
    let mut e = busy_agent_with_waiting_jobs(1);
    // No room on a: the urgent job queues, and j2 is asked back.
    let out = batch(&mut e, 3, vec![urgent(9, "urgent")]);
    assert!(assigned(&out).is_empty());
    assert_eq!(revoked(&out), [(1, "j2".to_string(), 1)]);
    let said = out.messages.iter().any(
        |(_, m)| matches!(m, ToAgent::Revoke { reason, .. } if reason.contains("higher priority")),
    );
    assert!(said, "the reason names the priority: {:?}", out.messages);
    // Given back: the urgent job takes the room; j2 queues behind it.
    let out = batch(&mut e, 4, vec![rejected(1, "j2", 1)]);
    assert_eq!(assigned(&out), [(1, "urgent".to_string(), 1)]);
    assert_eq!(e.live_job("j2").map(|j| j.state), Some(JobState::Queued));
    assert!(revoked(&out).is_empty());
    // Jobs of equal priority never take each other back.
    let out = batch(&mut e, 5, vec![submit(10, "j3", JobSpec::command(["x"]))]);
    assert!(revoked(&out).is_empty());
}
