//! When a result is made durable: at once without a session, only when it
//! is not acknowledged within `SYNC_AFTER` with one, at once when the
//! session ends. Real files in temporary directories.

use std::path::Path;
use std::time::{Duration, Instant};

use hodei_agent::outbox::{Outbox, SYNC_AFTER};
use hodei_agent::spool::{AttemptFiles, Meta, RECYCLED_DIR, ResultRecord, read_meta};
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;

const DEADLINE: Duration = Duration::from_secs(10);

/// An outbox on `dir/spool` with one attempt of `job` whose result was
/// recorded; `attached` says whether a session was up at its end.
async fn finished(dir: &Path, job: &str, attached: bool) -> Outbox {
    let (outbox, _) = Outbox::open(dir.join("spool"), 1 << 30)
        .await
        .expect("open");
    if attached {
        outbox.rewind();
    }
    outbox.add(job, 1, [0, 0]).expect("new job");
    outbox.create_spool(job).await.expect("spool entry");
    let result = pb::JobResult {
        job_id: job.into(),
        attempt: 1,
        exit_code: 7,
        outcome: pb::Outcome::Exited as i32,
        ..Default::default()
    };
    outbox.finish(job, result).await;
    outbox
}

/// The results the outbox offers now.
async fn offered(outbox: &Outbox) -> Vec<pb::JobResult> {
    let mut results = Vec::new();
    loop {
        let batch = outbox.next_batch(64 * 1024).await;
        if batch.is_empty() {
            return results;
        }
        results.extend(batch.into_iter().filter_map(|b| match b {
            Body::Result(r) => Some(r),
            _ => None,
        }));
    }
}

fn ack(job: &str) -> pb::ResultAck {
    pb::ResultAck {
        job_id: job.into(),
        attempt: 1,
    }
}

async fn wait_synced(outbox: &Outbox, n: u64) {
    let until = Instant::now() + DEADLINE;
    while outbox.results_synced() < n {
        assert!(Instant::now() < until, "no result made durable in time");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn without_a_session_the_result_is_durable_before_it_is_offered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = finished(dir.path(), "alone", false).await;
    assert_eq!(outbox.results_synced(), 1);
    assert_eq!(offered(&outbox).await.len(), 1);
}

#[tokio::test]
async fn a_result_acknowledged_in_time_is_never_fsynced_and_its_entry_is_recycled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = finished(dir.path(), "quick", true).await;
    // Offered at once, recorded in meta.json (the page cache) unsynced.
    let results = offered(&outbox).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].exit_code, 7);
    let entry = dir.path().join("spool").join("quick@1");
    assert_eq!(
        read_meta(&entry).expect("meta").result.map(|r| r.exit_code),
        Some(7)
    );
    assert_eq!(outbox.results_synced(), 0);
    assert!(outbox.ack_result(&ack("quick")));
    outbox.settle().await;
    // The pending sync (a weak reference) did not keep the entry from the pool.
    let pool = dir.path().join("spool").join(RECYCLED_DIR);
    assert_eq!(std::fs::read_dir(&pool).expect("pool").count(), 1);
    // Its pending sync, forced now (as the session's end does), finds the
    // entry retired and does nothing; no waiting for the timer.
    outbox.detach();
    outbox.settle().await;
    assert_eq!(outbox.results_synced(), 0);
}

#[tokio::test]
async fn a_result_not_acknowledged_in_time_is_made_durable_and_still_offered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let started = Instant::now();
    let outbox = finished(dir.path(), "slow", true).await;
    assert_eq!(offered(&outbox).await.len(), 1);
    wait_synced(&outbox, 1).await;
    assert!(started.elapsed() >= SYNC_AFTER, "synced before it was due");
    let entry = dir.path().join("spool").join("slow@1");
    assert_eq!(
        read_meta(&entry).expect("meta").result.map(|r| r.exit_code),
        Some(7)
    );
    // Acknowledged later, it is retired as usual.
    assert!(outbox.ack_result(&ack("slow")));
    outbox.settle().await;
    assert!(!entry.exists());
}

#[tokio::test]
async fn results_waiting_are_made_durable_when_the_session_ends() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = finished(dir.path(), "cut", true).await;
    assert_eq!(outbox.results_synced(), 0);
    outbox.detach();
    outbox.settle().await;
    assert_eq!(outbox.results_synced(), 1);
    // Offered again to the next session.
    outbox.rewind();
    assert_eq!(offered(&outbox).await.len(), 1);
}

#[test]
fn a_recorded_result_is_synced_once_and_not_after_it_was_cleared() {
    let root = tempfile::tempdir().expect("tempdir");
    let files = AttemptFiles::create(root.path(), Meta::new("j", 1, [0, 0])).expect("create");
    files.write_at(0, 0, b"out\n").expect("log");
    files
        .record_result(|m| {
            m.result = Some(ResultRecord {
                outcome: pb::Outcome::Exited as i32,
                exit_code: 0,
                signal: 0,
                message: String::new(),
                stdout: hodei_agent::spool::Totals {
                    bytes: 4,
                    crc32c: crc32c::crc32c(b"out\n"),
                },
                stderr: Default::default(),
            })
        })
        .expect("record");
    assert!(files.has_result());
    assert!(!files.result_synced());
    assert!(files.sync_result([true, false]).expect("sync"));
    assert!(files.result_synced());
    // Acknowledged and cleared: nothing left to make durable.
    files.clear_result().expect("clear");
    assert!(!files.sync_result([true, false]).expect("sync after clear"));
    assert!(!files.result_synced());
}

#[tokio::test]
async fn an_unsynced_result_outlives_the_agent_process_and_is_made_durable_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = finished(dir.path(), "crash", true).await;
    assert_eq!(outbox.results_synced(), 0);
    // The agent process dies before the acknowledgement: the page cache
    // still holds the result, and the next agent makes it durable before
    // offering it again.
    drop(outbox);
    let (outbox, recovery) = Outbox::open(dir.path().join("spool"), 1 << 30)
        .await
        .expect("reopen");
    assert_eq!(recovery.resumed, [("crash".to_string(), 1)]);
    assert_eq!(outbox.results_synced(), 1);
    outbox.rewind();
    let results = offered(&outbox).await;
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].exit_code, 7);
}
