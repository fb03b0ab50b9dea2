//! Prefetch: an agent with one slot and a prefetch of one takes a second
//! assignment, starts it only when the first ends, cancels it unstarted
//! when asked, and rejects a third.

use std::path::Path;

use hodei_agent::AgentConfig;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body as A;
use hwp_proto::pb::server_message::Body as S;

mod support;

use support::{DEADLINE, Session, fake_server};

fn assign(job: &str, command: &[&str]) -> S {
    S::Assign(pb::Assignment {
        job_id: job.into(),
        attempt: 1,
        command: command.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

/// A job that writes its pid into `pid_file`, then runs until `stop`
/// exists.
fn wait_for(stop: &Path, pid_file: &Path) -> Vec<String> {
    let script = format!(
        "echo $$ > '{}'; while [ ! -e '{}' ]; do sleep 0.01; done",
        pid_file.display(),
        stop.display()
    );
    vec!["sh".into(), "-c".into(), script]
}

/// The agent's messages (not heartbeats or logs) until `done` says so.
async fn until(s: &mut Session, mut done: impl FnMut(&[A]) -> bool) -> Vec<A> {
    let mut seen = Vec::new();
    while !done(&seen) {
        match s.next().await {
            A::Log(_) => {}
            other => seen.push(other),
        }
    }
    seen
}

fn started(seen: &[A], job: &str) -> Option<u32> {
    seen.iter().find_map(|m| match m {
        A::Started(st) if st.job_id == job => Some(st.pid),
        _ => None,
    })
}

fn result<'a>(seen: &'a [A], job: &str) -> Option<&'a pb::JobResult> {
    seen.iter().find_map(|m| match m {
        A::Result(r) if r.job_id == job => Some(r),
        _ => None,
    })
}

/// A running agent of one slot that queues `prefetch` more, attached to a
/// fake orchestrator that welcomed it; what its `Hello` said of prefetch.
struct Attached {
    s: Session,
    agent: tokio::task::JoinHandle<Result<(), hodei_agent::AgentError>>,
    _drain: tokio::sync::watch::Sender<bool>,
    hello_prefetch: u32,
}

async fn attached(work: &Path, prefetch: u32) -> Attached {
    let (url, mut sessions) = fake_server().await;
    let mut config = AgentConfig::new(url, "agent-1");
    config.work_dir = work.to_path_buf();
    config.slots = 1;
    config.prefetch = Some(prefetch);
    let (agent, drain) = support::start_agent(config);
    let mut s = support::dialled(&mut sessions).await;
    let A::Hello(hello) = s.next().await else {
        panic!("Hello first")
    };
    s.send(support::welcome()).await;
    Attached {
        s,
        agent,
        _drain: drain,
        hello_prefetch: hello.prefetch,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefetched_job_waits_for_the_slot_and_can_be_cancelled_unstarted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    let pid_file = dir.path().join("pid");
    let Attached {
        mut s,
        agent,
        hello_prefetch,
        ..
    } = attached(&dir.path().join("work"), 1).await;
    assert_eq!(hello_prefetch, 1);

    // One running, one queued, one too many.
    let blocker = wait_for(&stop, &pid_file);
    let blocker: Vec<&str> = blocker.iter().map(String::as_str).collect();
    s.send(assign("running", &blocker)).await;
    s.send(assign("queued", &["echo", "queued"])).await;
    s.send(assign("extra", &["true"])).await;
    let seen = until(&mut s, |seen| {
        started(seen, "running").is_some()
            && seen
                .iter()
                .any(|m| matches!(m, A::Rejected(r) if r.job_id == "extra"))
    })
    .await;
    assert!(started(&seen, "queued").is_none(), "no slot for it yet");

    // Cancelled while queued: it never starts a process.
    s.send(S::Cancel(pb::CancelAssignment {
        job_id: "queued".into(),
        attempt: 1,
        reason: "test".into(),
    }))
    .await;
    let seen = until(&mut s, |seen| result(seen, "queued").is_some()).await;
    let r = result(&seen, "queued").expect("result");
    assert_eq!(r.outcome, pb::Outcome::Cancelled as i32);
    assert_eq!(started(&seen, "queued"), Some(0), "no process");
    s.send(S::ResultAck(pb::ResultAck {
        job_id: "queued".into(),
        attempt: 1,
    }))
    .await;

    // Another one queues behind the running job: it succeeds only if the
    // running job's process is gone (reaped) when it starts.
    let until_written = std::time::Instant::now() + DEADLINE;
    while std::fs::read_to_string(&pid_file).map_or(true, |p| p.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < until_written,
            "the job wrote its pid"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let check = format!("! kill -0 \"$(cat '{}')\" 2>/dev/null", pid_file.display());
    s.send(assign("next", &["sh", "-c", &check])).await;
    std::fs::write(&stop, b"").expect("stop file");
    let seen = until(&mut s, |seen| {
        result(seen, "running").is_some() && result(seen, "next").is_some()
    })
    .await;
    assert_eq!(result(&seen, "running").map(|r| r.exit_code), Some(0));
    assert!(started(&seen, "next").is_some_and(|pid| pid > 0));
    assert_eq!(
        result(&seen, "next").map(|r| r.exit_code),
        Some(0),
        "started only once the slot was free"
    );
    agent.abort();
}

fn revoke(job: &str) -> S {
    S::Revoke(pb::RevokeAssignment {
        job_id: job.into(),
        attempt: 1,
        reason: "test".into(),
    })
}

fn rejected<'a>(seen: &'a [A], job: &str) -> Option<&'a pb::JobRejected> {
    seen.iter().find_map(|m| match m {
        A::Rejected(r) if r.job_id == job => Some(r),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_job_is_given_back_when_revoked_and_a_started_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stop = dir.path().join("stop");
    let pid_file = dir.path().join("pid");
    let Attached { mut s, agent, .. } = attached(&dir.path().join("work"), 2).await;

    // One running; two waiting behind it.
    let blocker = wait_for(&stop, &pid_file);
    let blocker: Vec<&str> = blocker.iter().map(String::as_str).collect();
    s.send(assign("running", &blocker)).await;
    s.send(assign("given-back", &["echo", "never"])).await;
    s.send(assign("last", &["echo", "last"])).await;
    let seen = until(&mut s, |seen| started(seen, "running").is_some()).await;
    assert!(rejected(&seen, "given-back").is_none());

    // The waiting job is given back; the running one is not.
    s.send(revoke("running")).await;
    s.send(revoke("given-back")).await;
    let seen = until(&mut s, |seen| rejected(seen, "given-back").is_some()).await;
    let r = rejected(&seen, "given-back").expect("rejected");
    assert!(r.reason.starts_with("revoked"), "{}", r.reason);
    assert!(rejected(&seen, "running").is_none(), "it had started");
    // The agent no longer holds it: with one slot and a prefetch of two it
    // has room for one more.
    s.send(assign("fill", &["true"])).await;

    // The job behind it takes its place in line: it runs when the slot frees.
    std::fs::write(&stop, b"").expect("stop file");
    let seen = until(&mut s, |seen| {
        ["running", "last", "fill"]
            .iter()
            .all(|j| result(seen, j).is_some())
    })
    .await;
    assert!(rejected(&seen, "fill").is_none(), "room for it");
    for job in ["running", "last", "fill"] {
        assert_eq!(result(&seen, job).map(|r| r.exit_code), Some(0), "{job}");
    }
    assert!(started(&seen, "given-back").is_none() && result(&seen, "given-back").is_none());
    // Revoking a job that already ran is ignored too.
    s.send(revoke("last")).await;
    s.send(assign("after", &["true"])).await;
    let seen = until(&mut s, |seen| result(seen, "after").is_some()).await;
    assert!(rejected(&seen, "last").is_none());
    agent.abort();
}
