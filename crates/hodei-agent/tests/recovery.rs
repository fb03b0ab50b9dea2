//! A restarted agent and the spool a previous one left: finished attempts
//! are offered again, running ones are killed and dropped.

use std::io::{BufRead, BufReader};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hodei_agent::executor::OutputChunk;
use hodei_agent::outbox::Outbox;
use hodei_agent::recover::{KillResult, proc_stat};
use hodei_agent::spool::{
    META_FILE, RECYCLED_DIR, attempt_dir_name, read_meta, read_meta_anywhere,
};
use hodei_core::LogStream;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;

fn chunk(stream: LogStream, data: &'static str) -> OutputChunk {
    OutputChunk {
        stream,
        data: Bytes::from_static(data.as_bytes()),
        timestamp_ms: 1,
    }
}

/// Dead: gone, or a zombie nobody reaped yet.
fn is_dead(pid: u32) -> bool {
    proc_stat(pid).is_none_or(|s| s.state == 'Z')
}

fn wait_dead(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !is_dead(pid) {
        assert!(Instant::now() < deadline, "process {pid} still alive");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `sh` leading a new process group with a `sleep` child in it; returns
/// the leader and the child's pid.
fn process_group() -> (Child, u32) {
    let mut leader = Command::new("sh")
        .args(["-c", "sleep 1000 & echo $!; wait"])
        .process_group(0)
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn sh");
    let mut line = String::new();
    BufReader::new(leader.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read pid");
    let member: u32 = line.trim().parse().expect("pid");
    (leader, member)
}

/// Kills a test's process group when dropped (before reaping its leader,
/// so the group id cannot have been reused).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let pgid = nix::unistd::Pid::from_raw(self.0.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn add(outbox: &Outbox, job: &str) {
    outbox.add(job, 1, [0, 0]).expect("new job");
    outbox.create_spool(job).await.expect("spool entry");
}

/// Attempt 1 of `job` exited with `code`.
fn exited(job: &str, code: i32) -> pb::JobResult {
    pb::JobResult {
        job_id: job.into(),
        exit_code: code,
        attempt: 1,
        outcome: pb::Outcome::Exited as i32,
        ..Default::default()
    }
}

/// Everything the outbox has to send, in order.
async fn drain(outbox: &Outbox) -> Vec<Body> {
    let mut bodies = Vec::new();
    loop {
        let batch = outbox.next_batch(1 << 20).await;
        if batch.is_empty() {
            return bodies;
        }
        bodies.extend(batch);
    }
}

#[tokio::test]
async fn restart_offers_finished_attempts_and_kills_running_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let (ours, ours_member) = process_group();
    let ours_pid = ours.id();
    let mut ours = Group(ours);
    let (stranger, _) = process_group();
    let stranger_pid = stranger.id();
    let mut stranger = Group(stranger);
    {
        let (outbox, summary) = Outbox::open(spool.clone(), 1 << 30).await.expect("open");
        assert!(summary.resumed.is_empty() && summary.abandoned.is_empty());

        // Finished: logs, a partial ack, a result.
        add(&outbox, "done").await;
        outbox.push("done", chunk(LogStream::Stdout, "out")).await;
        outbox.push("done", chunk(LogStream::Stderr, "err")).await;
        let ack = pb::LogAck {
            job_id: "done".into(),
            attempt: 1,
            stdout_offset: 1,
            stderr_offset: 0,
            resend: false,
        };
        outbox.ack_logs(&ack).await;
        outbox.finish("done", exited("done", 3)).await;

        // Running when the agent "dies": a real process group.
        add(&outbox, "running").await;
        outbox
            .push("running", chunk(LogStream::Stdout, "partial"))
            .await;
        outbox.record_process_later("running", ours_pid);

        // Running too, but its recorded process is not the one alive under
        // that pid now (another start time): it must not be killed.
        add(&outbox, "reused").await;
        outbox.record_process_later("reused", stranger_pid);
        outbox.settle().await; // both records written

        // A second agent cannot use the same spool.
        let err = Outbox::open(spool.clone(), 1 << 30)
            .await
            .expect_err("locked");
        assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock);
    } // The agent "dies" (the test's process groups live on).

    // Pretend the pid of "reused" was reused: shift the recorded start time.
    let reused_dir = spool.join(attempt_dir_name("reused", 1));
    let mut meta = read_meta(&reused_dir).expect("meta");
    meta.process.as_mut().expect("process recorded").start_time += 1;
    std::fs::write(
        reused_dir.join(META_FILE),
        serde_json::to_vec(&meta).unwrap(),
    )
    .unwrap();
    // And a corrupt entry.
    std::fs::create_dir(spool.join("bad@1")).unwrap();
    std::fs::write(spool.join("bad@1").join(META_FILE), b"{not json").unwrap();
    // And an emptied entry left in the recycling pool: not an attempt.
    let pooled = spool.join(RECYCLED_DIR).join("5");
    std::fs::create_dir_all(&pooled).unwrap();
    std::fs::write(pooled.join(META_FILE), b"{not json").unwrap();

    let (outbox, summary) = Outbox::open(spool.clone(), 1 << 30).await.expect("reopen");
    assert_eq!(summary.resumed, vec![("done".to_string(), 1)]);
    let mut abandoned = summary.abandoned.clone();
    abandoned.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        abandoned,
        vec![
            ("reused".to_string(), 1, KillResult::Gone),
            ("running".to_string(), 1, KillResult::Killed),
        ]
    );
    assert_eq!(summary.discarded, 1);
    assert!(!spool.join("bad@1").exists());
    assert_eq!(
        std::fs::read_dir(spool.join(RECYCLED_DIR)).unwrap().count(),
        0,
        "the pool starts empty"
    );
    assert!(!spool.join(attempt_dir_name("running", 1)).exists());
    assert!(!reused_dir.exists());

    // The running attempt's whole group is dead.
    let status = ours.0.wait().expect("wait");
    assert_eq!(status.signal(), Some(9), "leader killed: {status:?}");
    wait_dead(ours_member);
    // The stranger lives.
    assert!(!is_dead(stranger_pid));
    assert!(stranger.0.try_wait().expect("try_wait").is_none());

    // Only the finished attempt is listed in Hello, then offered again.
    let attempts = outbox.attempts();
    assert_eq!(attempts.len(), 1);
    assert_eq!(
        (attempts[0].job_id.as_str(), attempts[0].attempt),
        ("done", 1)
    );
    assert_eq!(outbox.running(), 0);
    let bodies = drain(&outbox).await;
    assert!(matches!(&bodies[0], Body::Started(s) if s.job_id == "done"));
    let logs: Vec<(i32, u64, Vec<u8>)> = bodies
        .iter()
        .filter_map(|b| match b {
            Body::Log(l) => Some((l.stream, l.offset, l.bytes.to_vec())),
            _ => None,
        })
        .collect();
    assert!(logs.contains(&(0, 1, b"ut".to_vec())), "{logs:?}");
    assert!(logs.contains(&(1, 0, b"err".to_vec())), "{logs:?}");
    assert_eq!(logs.len(), 2);
    let Some(Body::Result(r)) = bodies.last() else {
        panic!("result last: {bodies:?}");
    };
    assert_eq!((r.exit_code, r.outcome), (3, pb::Outcome::Exited as i32));
    assert_eq!(
        r.stdout.map(|s| (s.bytes, s.crc32c)),
        Some((3, crc32c::crc32c(b"out")))
    );
    assert_eq!(
        r.stderr.map(|s| (s.bytes, s.crc32c)),
        Some((3, crc32c::crc32c(b"err")))
    );

    let ack = pb::ResultAck {
        job_id: "done".into(),
        attempt: 1,
    };
    assert!(outbox.ack_result(&ack));
    outbox.settle().await; // the entry is retired in the background
    assert!(!spool.join(attempt_dir_name("done", 1)).exists());
}

/// A finished attempt whose directory came from the pool of emptied
/// entries, found back in the pool after the machine's loss undid the
/// rename into place, is offered again; a retired entry in the pool holds
/// no result and is not.
#[tokio::test]
async fn a_finished_attempt_found_in_the_pool_is_offered_and_a_retired_one_is_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    let pool = spool.join(RECYCLED_DIR);
    let pooled = || -> Vec<std::path::PathBuf> {
        std::fs::read_dir(&pool)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect()
    };
    let acked = |job: &'static str| pb::ResultAck {
        job_id: job.into(),
        attempt: 1,
    };
    {
        let (outbox, _) = Outbox::open(spool.clone(), 1 << 30).await.expect("open");
        add(&outbox, "a").await;
        outbox.finish("a", exited("a", 0)).await;
        assert!(outbox.ack_result(&acked("a")));
        outbox.settle().await;
        let retired = pooled();
        assert_eq!(retired.len(), 1, "a's entry is in the pool");
        let meta = read_meta_anywhere(&retired[0]).expect("meta");
        assert!(meta.result.is_none(), "a retired entry holds no result");

        // b reuses a's directory and finishes.
        add(&outbox, "b").await;
        assert!(pooled().is_empty(), "b took the emptied entry");
        outbox.push("b", chunk(LogStream::Stdout, "owed")).await;
        outbox.finish("b", exited("b", 0)).await;

        // c finishes and is retired: its entry goes to the pool.
        add(&outbox, "c").await;
        outbox.finish("c", exited("c", 0)).await;
        assert!(outbox.ack_result(&acked("c")));
        outbox.settle().await;
        assert_eq!(pooled().len(), 1);
    } // The agent dies...
    // ...and the machine's loss undoes the rename of b's directory into
    // place: it is back at a slot of the pool.
    std::fs::rename(spool.join(attempt_dir_name("b", 1)), pool.join("77")).unwrap();

    let (outbox, summary) = Outbox::open(spool.clone(), 1 << 30).await.expect("reopen");
    assert_eq!(summary.resumed, vec![("b".to_string(), 1)]);
    assert_eq!(summary.discarded, 0);
    assert!(pooled().is_empty(), "the pool starts empty");
    assert!(spool.join(attempt_dir_name("b", 1)).exists());
    let bodies = drain(&outbox).await;
    let logs: Vec<(u64, Vec<u8>)> = bodies
        .iter()
        .filter_map(|b| match b {
            Body::Log(l) => Some((l.offset, l.bytes.to_vec())),
            _ => None,
        })
        .collect();
    assert_eq!(logs, vec![(0, b"owed".to_vec())], "b's unacknowledged log");
    assert!(
        matches!(bodies.last(), Some(Body::Result(r)) if r.job_id == "b"),
        "b's result last: {bodies:?}"
    );
}

/// A finished attempt's directory found under an earlier attempt's name
/// (the machine's loss undid its rename into place) is moved to its own
/// name and offered again: `meta.json` says which attempt it holds.
#[tokio::test]
async fn a_finished_attempt_under_an_earlier_name_is_offered_under_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool");
    {
        let (outbox, _) = Outbox::open(spool.clone(), 1 << 30).await.expect("open");
        add(&outbox, "x").await;
        outbox.finish("x", exited("x", 5)).await;
    }
    let own = spool.join(attempt_dir_name("x", 1));
    let earlier = spool.join(attempt_dir_name("earlier", 3));
    std::fs::rename(&own, &earlier).unwrap();

    let (outbox, summary) = Outbox::open(spool.clone(), 1 << 30).await.expect("reopen");
    assert_eq!(summary.resumed, vec![("x".to_string(), 1)]);
    assert_eq!(summary.discarded, 0);
    assert!(own.exists() && !earlier.exists());
    let batch = outbox.next_batch(1 << 20).await;
    assert!(
        matches!(batch.last(), Some(Body::Result(r)) if r.job_id == "x" && r.exit_code == 5),
        "{batch:?}"
    );
}

#[test]
fn leftover_temporary_files_do_not_matter() {
    // A meta.json.tmp from an interrupted write sits beside a good meta.json.
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    let meta = hodei_agent::spool::Meta::new("j", 1, [0, 0]);
    let files = hodei_agent::spool::AttemptFiles::create(root, meta.clone()).expect("create");
    std::fs::write(files.dir().join("meta.json.tmp"), b"garbage").unwrap();
    assert_eq!(read_meta(files.dir()).expect("meta"), meta);
    assert!(read_meta(Path::new("/nonexistent")).is_err());
}
