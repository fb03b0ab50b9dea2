//! An agent given several orchestrator URLs, against scripted fake
//! orchestrators: it skips a dead URL, fails over to the next one when its
//! session drops (resending the unacknowledged output and result there),
//! and after a `Shutdown` dials another URL than the one that shut down.

use std::time::Duration;

use hodei_agent::AgentConfig;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body as A;
use hwp_proto::pb::server_message::Body as S;
use tokio::sync::mpsc;

mod support;

use support::{DEADLINE, Session, fake_server};

/// A URL nothing listens on (a port the OS gave us, then closed).
async fn dead_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

async fn attach(sessions: &mut mpsc::UnboundedReceiver<Session>, what: &str) -> Session {
    tokio::time::timeout(DEADLINE, sessions.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: the agent did not attach in time"))
        .expect("fake server running")
}

/// Collects the job's stdout up to its result.
async fn until_result(s: &mut Session) -> (Vec<u8>, pb::JobResult) {
    let mut out = Vec::new();
    loop {
        match s.next().await {
            A::Log(l) if l.stream == pb::LogStream::Stdout as i32 => {
                assert!(l.offset <= out.len() as u64, "no gap");
                out.truncate(l.offset as usize);
                out.extend_from_slice(&l.bytes);
            }
            A::Result(r) => return (out, r),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_fails_over_between_its_servers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let dead = dead_url().await;
    let (url_a, mut at_a) = fake_server().await;
    let (url_b, mut at_b) = fake_server().await;
    let mut config = AgentConfig::new(dead.clone(), "agent-1").with_servers(vec![
        dead,
        url_a.clone(),
        url_b.clone(),
    ]);
    config.work_dir = dir.path().join("work");
    config.slots = 1;
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    let (agent, drain_tx) = support::start_agent(config);

    // The first URL is dead: the agent goes on to A.
    let mut a = attach(&mut at_a, "A after the dead URL").await;
    assert!(a.welcome().await.is_empty());
    a.send(S::Assign(pb::Assignment {
        job_id: "j1".into(),
        attempt: 1,
        command: vec!["sh".into(), "-c".into(), "echo one; echo two".into()],
        ..Default::default()
    }))
    .await;
    let (out, result) = until_result(&mut a).await;
    assert_eq!(out, b"one\ntwo\n");

    // A dies before acknowledging anything: the agent attaches to B (the
    // next URL), still holds the attempt, and resends the output from the
    // start and the same result.
    drop(a);
    let mut b = attach(&mut at_b, "B after A dropped").await;
    assert_eq!(b.welcome().await, vec![("j1".to_string(), 1)]);
    let (out_b, result_b) = until_result(&mut b).await;
    assert_eq!((out_b, &result_b), (out, &result));
    b.send(S::ResultAck(pb::ResultAck {
        job_id: "j1".into(),
        attempt: 1,
    }))
    .await;

    // B shuts down: the agent dials another URL (the dead one, then A),
    // not B again.
    b.send(S::Shutdown(pb::Shutdown {
        reason: "restart".into(),
        reconnect_within_ms: 50,
    }))
    .await;
    let mut a2 = attach(&mut at_a, "A after B shut down").await;
    assert!(at_b.try_recv().is_err(), "B was not dialled first");
    drop(b);
    assert!(a2.welcome().await.is_empty(), "the result was acknowledged");

    // Nothing is owed: a drain ends the agent at once.
    let _ = drain_tx.send(true);
    a2.drained().await;
    tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent drains")
        .expect("join")
        .expect("agent ok");
}
