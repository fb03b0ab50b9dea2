//! The agent against a scripted fake orchestrator: a job's pid, logs,
//! totals, a `resend`, a server `Shutdown` and the redial after it.

use std::time::{Duration, Instant};

use hodei_agent::AgentConfig;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body as A;
use hwp_proto::pb::server_message::Body as S;

mod support;

use support::{DEADLINE, Session, fake_server, welcome};

/// Collects the job's messages up to its result: (pid, stdout, stderr,
/// result), the streams on top of what the orchestrator already has.
async fn until_result(
    s: &mut Session,
    stored: (&[u8], &[u8]),
) -> (Option<u32>, Vec<u8>, Vec<u8>, pb::JobResult) {
    let (mut pid, mut out, mut err) = (None, stored.0.to_vec(), stored.1.to_vec());
    loop {
        match s.next().await {
            A::Started(st) => pid = Some(st.pid),
            A::Log(l) => {
                let buf = if l.stream == pb::LogStream::Stdout as i32 {
                    &mut out
                } else {
                    &mut err
                };
                assert!(l.offset <= buf.len() as u64, "no gap");
                buf.truncate(l.offset as usize);
                buf.extend_from_slice(&l.bytes);
            }
            A::Result(r) => return (pid, out, err, r),
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_resend_shutdown_and_redial() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (url, mut sessions) = fake_server().await;
    let mut config = AgentConfig::new(url, "agent-1");
    config.work_dir = dir.path().join("work");
    config.slots = 2;
    config.backoff_min = Duration::from_millis(10);
    config.backoff_max = Duration::from_millis(50);
    let spool = config.spool_dir();
    let (agent, drain_tx) = support::start_agent(config);

    let mut s = support::dialled(&mut sessions).await;
    let A::Hello(hello) = s.recv().await else {
        panic!("Hello first")
    };
    assert!(hello.running.is_empty());
    s.send(welcome()).await;
    s.send(S::Assign(pb::Assignment {
        job_id: "j1".into(),
        attempt: 1,
        command: vec!["sh".into(), "-c".into(), "echo $$; echo oops >&2".into()],
        ..Default::default()
    }))
    .await;
    let (pid, out, err, result) = until_result(&mut s, (b"", b"")).await;
    let out_text = String::from_utf8(out.clone()).expect("utf-8");
    assert_eq!(
        pid.map(|p| p.to_string()),
        Some(out_text.trim().to_string())
    );
    assert_eq!(err, b"oops\n");
    assert_eq!(result.exit_code, 0);
    let totals = |data: &[u8]| {
        Some(pb::StreamSummary {
            bytes: data.len() as u64,
            crc32c: crc32c::crc32c(data),
        })
    };
    assert_eq!(result.stdout, totals(&out));
    assert_eq!(result.stderr, totals(&err));

    // The orchestrator misses stdout from 2 on: logs again, then the result.
    s.send(S::LogAck(pb::LogAck {
        job_id: "j1".into(),
        attempt: 1,
        stdout_offset: 2,
        stderr_offset: err.len() as u64,
        resend: true,
    }))
    .await;
    let A::Log(again) = s.next().await else {
        panic!("log resent")
    };
    assert_eq!((again.offset, &again.bytes[..]), (2, &out[2..]));
    assert!(matches!(s.next().await, A::Result(r) if r == result));

    // The orchestrator shuts down: the agent comes back within the window.
    s.send(S::Shutdown(pb::Shutdown {
        reason: "restart".into(),
        reconnect_within_ms: 300,
    }))
    .await;
    let gone = Instant::now();
    let mut s2 = support::dialled(&mut sessions).await;
    assert!(gone.elapsed() < Duration::from_secs(5));
    drop(s);
    let A::Hello(hello) = s2.recv().await else {
        panic!("Hello first")
    };
    let listed: Vec<_> = hello
        .running
        .iter()
        .map(|r| (r.job_id.as_str(), r.attempt))
        .collect();
    assert_eq!(listed, vec![("j1", 1)], "unacknowledged result still held");
    s2.send(welcome()).await;
    // Resent from what the orchestrator acknowledged.
    let (_, out2, err2, result2) = until_result(&mut s2, (&out[..2], &err)).await;
    assert_eq!((out2, err2, &result2), (out.clone(), err.clone(), &result));

    // ResultAck: the job is forgotten and its spool entry deleted.
    s2.send(S::ResultAck(pb::ResultAck {
        job_id: "j1".into(),
        attempt: 1,
    }))
    .await;
    let _ = drain_tx.send(true);
    s2.drained().await;
    tokio::time::timeout(DEADLINE, agent)
        .await
        .expect("agent drains")
        .expect("join")
        .expect("agent ok");
    let left: Vec<_> = std::fs::read_dir(&spool)
        .expect("spool")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, vec!["lock"], "only the lock file is left");
}
