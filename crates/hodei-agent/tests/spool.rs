//! The outbox and its on-disk spool, without a server: real files in
//! temporary directories.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use hodei_agent::executor::OutputChunk;
use hodei_agent::outbox::{Outbox, dropped_marker};
use hodei_agent::spool::{AttemptFiles, Meta, attempt_dir_name, read_meta};
use hodei_core::LogStream;
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;

fn chunk(stream: LogStream, data: impl Into<Bytes>) -> OutputChunk {
    OutputChunk {
        stream,
        data: data.into(),
        timestamp_ms: 1_700_000_000_000,
    }
}

async fn open(dir: &Path, max: u64) -> Outbox {
    Outbox::open(dir.join("spool"), max).await.expect("open").0
}

/// Adds an attempt and creates its spool entry.
async fn add(outbox: &Outbox, job: &str, attempt: u32) {
    outbox.add(job, attempt, [0, 0]).expect("new job");
    outbox.create_spool(job).await.expect("spool entry");
}

fn entry_dir(dir: &Path, job: &str, attempt: u32) -> PathBuf {
    dir.join("spool").join(attempt_dir_name(job, attempt))
}

fn result(job: &str, attempt: u32, code: i32) -> pb::JobResult {
    pb::JobResult {
        job_id: job.into(),
        exit_code: code,
        attempt,
        outcome: pb::Outcome::Exited as i32,
        ..Default::default()
    }
}

fn ack(job: &str, attempt: u32, stdout: u64, stderr: u64, resend: bool) -> pb::LogAck {
    pb::LogAck {
        job_id: job.into(),
        attempt,
        stdout_offset: stdout,
        stderr_offset: stderr,
        resend,
    }
}

/// What one batch sent: per (job, stream) the chunks by offset, plus the
/// other messages in order.
/// Per (job, stream): the chunks sent, as (offset, data).
type Chunks = BTreeMap<(String, i32), Vec<(u64, Vec<u8>)>>;

#[derive(Default, Debug)]
struct Sent {
    logs: Chunks,
    others: Vec<Body>,
}

impl Sent {
    /// The bytes sent for a stream, checked contiguous from `from`.
    fn stream(&self, job: &str, stream: LogStream, from: u64) -> Vec<u8> {
        let key = (job.to_string(), stream.index() as i32);
        let mut out = Vec::new();
        let mut next = from;
        for (offset, data) in self.logs.get(&key).into_iter().flatten() {
            assert_eq!(*offset, next, "chunks are contiguous");
            next += data.len() as u64;
            out.extend_from_slice(data);
        }
        out
    }

    fn results(&self) -> Vec<&pb::JobResult> {
        self.others
            .iter()
            .filter_map(|b| match b {
                Body::Result(r) => Some(r),
                _ => None,
            })
            .collect()
    }
}

/// Takes everything due (several batches), checking that a result never
/// comes before its job's logs.
async fn drain(outbox: &Outbox) -> Sent {
    let mut sent = Sent::default();
    loop {
        let batch = outbox.next_batch(64 * 1024).await;
        if batch.is_empty() {
            return sent;
        }
        for body in batch {
            match body {
                Body::Log(l) => {
                    assert!(l.has_offset);
                    assert!(
                        !sent.results().iter().any(|r| r.job_id == l.job_id),
                        "log after result"
                    );
                    sent.logs
                        .entry((l.job_id.clone(), l.stream))
                        .or_default()
                        .push((l.offset, l.bytes.to_vec()));
                }
                other => sent.others.push(other),
            }
        }
    }
}

/// Deterministic pseudo-random bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Whether the filesystem under `dir` can punch holes.
fn punch_supported(dir: &Path) -> bool {
    let root = dir.join("probe");
    std::fs::create_dir_all(&root).expect("probe dir");
    let files = AttemptFiles::create(&root, Meta::new("probe", 1, [0, 0])).expect("probe");
    files.write_at(0, 0, &vec![7u8; 1 << 20]).expect("write");
    files.sync_logs().expect("sync");
    files.punch(0, 0, 1 << 20).expect("punch")
}

fn blocks(path: &Path) -> u64 {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all().and_then(|()| f.metadata()))
        .expect("stat")
        .blocks()
}

#[tokio::test]
async fn round_trip_from_offsets_ack_punches_holes_and_result_ack_deletes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 1 << 30).await;
    add(&outbox, "job-1", 1).await;
    outbox
        .push("job-1", chunk(LogStream::Stdout, "hello "))
        .await;
    outbox.push("job-1", chunk(LogStream::Stderr, "oops")).await;
    outbox
        .push("job-1", chunk(LogStream::Stdout, "world"))
        .await;

    // Output is held in memory first: nothing is written yet.
    let entry = entry_dir(dir.path(), "job-1", 1);
    assert_eq!(std::fs::read(entry.join("stdout")).unwrap(), b"");
    assert_eq!(std::fs::read(entry.join("stderr")).unwrap(), b"");

    let sent = drain(&outbox).await;
    assert!(
        matches!(sent.others.first(), Some(Body::Started(s)) if s.job_id == "job-1" && s.attempt == 1)
    );
    assert_eq!(sent.stream("job-1", LogStream::Stdout, 0), b"hello world");
    assert_eq!(sent.stream("job-1", LogStream::Stderr, 0), b"oops");
    assert!(drain(&outbox).await.logs.is_empty(), "nothing sent twice");

    // A new session resends from the acknowledged offsets.
    outbox.ack_logs(&ack("job-1", 1, 6, 0, false)).await;
    outbox.rewind();
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-1", LogStream::Stdout, 6), b"world");
    assert_eq!(sent.stream("job-1", LogStream::Stderr, 0), b"oops");
    assert_eq!(outbox.unacked_bytes(), 5 + 4);

    // Heavy output: 32 MiB, twice what a stream holds in memory. The oldest
    // unacknowledged bytes go to the file (file offset == stream offset;
    // "hello " was acknowledged in memory and is never written), are read
    // back from it, and are freed once acknowledged.
    let big = noise(32 << 20, 42);
    for piece in big.chunks(64 * 1024) {
        outbox
            .push("job-1", chunk(LogStream::Stdout, piece.to_vec()))
            .await;
    }
    let stdout_file = entry.join("stdout");
    let on_disk = std::fs::read(&stdout_file).unwrap();
    assert!(
        on_disk.len() >= 11 + (16 << 20),
        "spilled {}",
        on_disk.len()
    );
    assert!(on_disk[..6].iter().all(|b| *b == 0), "never written");
    assert_eq!(&on_disk[6..11], b"world");
    assert_eq!(on_disk[11..], big[..on_disk.len() - 11]);
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-1", LogStream::Stdout, 11), big);
    let before = blocks(&stdout_file);
    let end = 11 + big.len() as u64;
    outbox.ack_logs(&ack("job-1", 1, end, 4, false)).await;
    assert_eq!(outbox.unacked_bytes(), 0);
    let after = blocks(&stdout_file);
    assert_eq!(
        std::fs::metadata(&stdout_file).unwrap().len(),
        on_disk.len() as u64,
        "size kept"
    );
    if punch_supported(dir.path()) {
        assert!(
            after + 7000 < before,
            "acknowledged data is freed: {before} -> {after} blocks"
        );
    } else {
        eprintln!("punching holes is not supported here; not checking st_blocks");
    }

    // The result: durable in meta.json before it is offered, with totals.
    outbox.finish("job-1", result("job-1", 1, 0)).await;
    let meta = read_meta(&entry).expect("meta");
    let recorded = meta.result.expect("result in meta.json");
    assert_eq!(recorded.stdout.bytes, end);
    assert_eq!(meta.acked, [end, 4]);
    let sent = drain(&outbox).await;
    let results = sent.results();
    assert_eq!(results.len(), 1);
    let mut all = b"hello world".to_vec();
    all.extend_from_slice(&big);
    let summary = results[0].stdout.expect("stdout totals");
    assert_eq!(summary.bytes, all.len() as u64);
    assert_eq!(summary.crc32c, crc32c::crc32c(&all));

    // A stale ResultAck changes nothing; the right one deletes the entry.
    let stale = pb::ResultAck {
        job_id: "job-1".into(),
        attempt: 2,
    };
    assert!(!outbox.ack_result(&stale));
    assert!(entry.exists());
    let right = pb::ResultAck {
        job_id: "job-1".into(),
        attempt: 1,
    };
    assert!(outbox.ack_result(&right));
    outbox.settle().await; // the entry is retired in the background
    assert!(!entry.exists(), "spool entry deleted after ResultAck");
    assert!(outbox.is_empty());
}

#[tokio::test]
async fn unacknowledged_output_reaches_the_spool_before_the_result_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 1 << 30).await;
    add(&outbox, "job-m", 1).await;
    outbox
        .push("job-m", chunk(LogStream::Stdout, "acked part "))
        .await;
    outbox.push("job-m", chunk(LogStream::Stderr, "err")).await;
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-m", LogStream::Stdout, 0), b"acked part ");
    outbox.ack_logs(&ack("job-m", 1, 11, 3, false)).await;
    outbox
        .push("job-m", chunk(LogStream::Stdout, "pending"))
        .await;
    let entry = entry_dir(dir.path(), "job-m", 1);
    assert_eq!(std::fs::read(entry.join("stdout")).unwrap(), b"");

    // The result: only the unacknowledged bytes are written, at their
    // offsets, before it; a stream with nothing owed is not written.
    outbox.finish("job-m", result("job-m", 1, 0)).await;
    let on_disk = std::fs::read(entry.join("stdout")).unwrap();
    assert_eq!(on_disk.len(), 18);
    assert!(on_disk[..11].iter().all(|b| *b == 0));
    assert_eq!(&on_disk[11..], b"pending");
    assert_eq!(std::fs::read(entry.join("stderr")).unwrap(), b"");
    let meta = read_meta(&entry).expect("meta");
    assert_eq!(meta.acked, [11, 3]);
    assert!(meta.result.is_some());

    // The agent dies before anything more is sent: a new one offers the
    // rest from the spool, then the result with the totals of everything.
    drop(outbox);
    let (outbox, recovery) = Outbox::open(dir.path().join("spool"), 1 << 30)
        .await
        .expect("reopen");
    assert_eq!(recovery.resumed, [("job-m".to_string(), 1)]);
    assert_eq!(recovery.discarded, 0);
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-m", LogStream::Stdout, 11), b"pending");
    assert_eq!(sent.stream("job-m", LogStream::Stderr, 3), b"");
    let r = sent.results()[0].clone();
    let stdout = r.stdout.expect("totals");
    assert_eq!(stdout.bytes, 18);
    assert_eq!(stdout.crc32c, crc32c::crc32c(b"acked part pending"));
    assert_eq!(r.stderr.expect("totals").bytes, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_its_memory_limit_a_stream_waits_for_acks_while_they_come_and_spills_otherwise() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = std::sync::Arc::new(open(dir.path(), 1 << 30).await);
    add(&outbox, "job-w", 1).await;
    let stdout_file = entry_dir(dir.path(), "job-w", 1).join("stdout");
    let mib = |byte: u8| chunk(LogStream::Stdout, vec![byte; 1 << 20]);
    outbox.rewind(); // A session is up.
    for _ in 0..16 {
        outbox.push("job-w", mib(b'a')).await; // 16 MiB: what memory holds.
    }
    // One more does not fit: the push waits for an acknowledgement.
    let o = outbox.clone();
    let pushing = tokio::spawn(async move { o.push("job-w", mib(b'b')).await });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    assert!(!pushing.is_finished(), "held back while acks come");
    outbox.ack_logs(&ack("job-w", 1, 1 << 20, 0, false)).await;
    tokio::time::timeout(std::time::Duration::from_secs(10), pushing)
        .await
        .expect("the ack made room")
        .expect("push");
    assert_eq!(
        std::fs::metadata(&stdout_file).unwrap().len(),
        0,
        "nothing written"
    );

    // No session: nothing will make room, so the oldest unacknowledged
    // mebibyte goes to the spool at once.
    outbox.detach();
    outbox.push("job-w", mib(b'c')).await;
    let on_disk = std::fs::read(&stdout_file).unwrap();
    assert_eq!(on_disk.len(), 2 << 20);
    assert!(on_disk[1 << 20..].iter().all(|b| *b == b'a'));

    // A session that stops acknowledging: the push waits at most a second
    // after the last acknowledgement, then writes.
    outbox.rewind();
    let started = std::time::Instant::now();
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        outbox.push("job-w", mib(b'd')),
    )
    .await
    .expect("a stalled session does not hold the job back for long");
    assert!(started.elapsed() >= std::time::Duration::from_millis(900));
    assert_eq!(std::fs::metadata(&stdout_file).unwrap().len(), 3 << 20);

    // Everything arrives in order, from the spool and from memory.
    let sent = drain(&outbox).await;
    let mut expected = vec![b'a'; 16 << 20];
    expected.extend(vec![b'b'; 1 << 20]);
    expected.extend(vec![b'c'; 1 << 20]);
    expected.extend(vec![b'd'; 1 << 20]);
    assert!(sent.stream("job-w", LogStream::Stdout, 1 << 20) == expected[1 << 20..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledgements_of_other_jobs_do_not_hold_a_stream_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = std::sync::Arc::new(open(dir.path(), 1 << 30).await);
    add(&outbox, "busy", 1).await;
    add(&outbox, "stuck", 1).await;
    outbox.rewind();
    for _ in 0..16 {
        outbox
            .push("stuck", chunk(LogStream::Stdout, vec![b's'; 1 << 20]))
            .await;
    }
    // Another job's output is acknowledged every 20 ms throughout.
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let o = outbox.clone();
    let acker = tokio::spawn(async move {
        let mut end = 0;
        while !*stopped.borrow() {
            o.push("busy", chunk(LogStream::Stdout, "line\n")).await;
            end += 5;
            o.ack_logs(&ack("busy", 1, end, 0, false)).await;
            let _ =
                tokio::time::timeout(std::time::Duration::from_millis(20), stopped.changed()).await;
        }
    });
    // "stuck" is never acknowledged: past a second, its push writes.
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        outbox.push("stuck", chunk(LogStream::Stdout, vec![b't'; 1 << 20])),
    )
    .await
    .expect("not held back by acks of another job");
    assert!(
        !acker.is_finished(),
        "the other job was acknowledged meanwhile"
    );
    let _ = stop.send(true);
    acker.await.expect("acker");
    let stdout = entry_dir(dir.path(), "stuck", 1).join("stdout");
    assert_eq!(std::fs::metadata(stdout).unwrap().len(), 1 << 20);
}

#[tokio::test]
async fn checksums_match_an_independent_crc_of_each_stream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 1 << 30).await;
    add(&outbox, "job-c", 3).await;
    let mut expected: [Vec<u8>; 2] = Default::default();
    for i in 0..200usize {
        let stream = if i % 3 == 0 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        let data = noise(1 + (i * 7919) % 5000, i as u64);
        expected[stream.index()].extend_from_slice(&data);
        outbox.push("job-c", chunk(stream, data)).await;
    }
    outbox.finish("job-c", result("job-c", 3, 1)).await;
    let sent = drain(&outbox).await;
    for stream in LogStream::BOTH {
        assert_eq!(sent.stream("job-c", stream, 0), expected[stream.index()]);
    }
    let r = sent.results()[0].clone();
    assert_eq!(r.exit_code, 1);
    for (summary, data) in [(r.stdout, &expected[0]), (r.stderr, &expected[1])] {
        let summary = summary.expect("totals");
        assert_eq!(summary.bytes, data.len() as u64);
        assert_eq!(summary.crc32c, crc32c::crc32c(data));
    }
}

#[tokio::test]
async fn a_full_spool_drops_output_and_marks_it_with_exact_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 100).await;
    add(&outbox, "job-f", 1).await;
    add(&outbox, "other", 1).await;
    let push = |stream, byte: u8, n: usize| {
        let outbox = &outbox;
        async move { outbox.push("job-f", chunk(stream, vec![byte; n])).await }
    };
    push(LogStream::Stdout, b'a', 60).await; // 60 of 100
    push(LogStream::Stdout, b'b', 50).await; // dropped: 110 > 100
    push(LogStream::Stdout, b'c', 30).await; // marker + 30 does not fit: dropped
    // The bound is shared by all jobs.
    outbox
        .push("other", chunk(LogStream::Stdout, vec![b'x'; 41]))
        .await;
    assert_eq!(outbox.unacked_bytes(), 60);
    let m80 = dropped_marker(80);
    assert!(m80.len() + 10 <= 100 && m80.len() + 10 + 25 > 100);

    outbox.ack_logs(&ack("job-f", 1, 60, 0, false)).await;
    assert_eq!(outbox.unacked_bytes(), 0);
    push(LogStream::Stdout, b'd', 10).await; // marker(80) + 10 fit
    push(LogStream::Stdout, b'e', 25).await; // dropped
    push(LogStream::Stderr, b'E', 5).await; // stderr is fine
    outbox.finish("job-f", result("job-f", 1, 0)).await; // marker(25), forced

    let mut expected = vec![b'a'; 60];
    expected.extend_from_slice(m80.as_bytes());
    expected.extend_from_slice(&[b'd'; 10]);
    expected.extend_from_slice(dropped_marker(25).as_bytes());
    assert_eq!(
        m80,
        "\n[hodei: 80 bytes of output dropped: the agent's log spool was full]\n"
    );

    outbox.rewind();
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-f", LogStream::Stdout, 60), expected[60..]);
    assert_eq!(sent.stream("job-f", LogStream::Stderr, 0), b"EEEEE");
    let on_disk = std::fs::read(entry_dir(dir.path(), "job-f", 1).join("stdout")).unwrap();
    assert_eq!(on_disk.len(), expected.len());
    assert_eq!(on_disk[60..], expected[60..]);
    let r = sent
        .results()
        .into_iter()
        .find(|r| r.job_id == "job-f")
        .expect("result")
        .clone();
    let summary = r.stdout.expect("totals");
    assert_eq!(summary.bytes, expected.len() as u64);
    assert_eq!(summary.crc32c, crc32c::crc32c(&expected));
    assert_eq!(sent.stream("other", LogStream::Stdout, 0), b"");
}

#[tokio::test]
async fn resend_rewinds_and_sends_the_result_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 1 << 30).await;
    add(&outbox, "job-r", 2).await;
    let data = noise(100, 9);
    outbox
        .push("job-r", chunk(LogStream::Stdout, data.clone()))
        .await;
    outbox.push("job-r", chunk(LogStream::Stderr, "err!")).await;
    outbox.finish("job-r", result("job-r", 2, 0)).await;
    let sent = drain(&outbox).await;
    assert_eq!(sent.results().len(), 1);

    // The orchestrator is missing stdout from 40 on (and has all stderr).
    outbox.ack_logs(&ack("job-r", 2, 40, 4, true)).await;
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-r", LogStream::Stdout, 40), data[40..]);
    assert_eq!(sent.stream("job-r", LogStream::Stderr, 4), b"");
    assert_eq!(sent.results().len(), 1, "result sent again after the logs");

    // A normal ack never moves `sent` back.
    outbox.ack_logs(&ack("job-r", 2, 50, 4, false)).await;
    assert!(drain(&outbox).await.others.is_empty());

    // Asking again below the acknowledged offset: still in the spool (the
    // range is within one block, not punched), so it is sent again.
    outbox.ack_logs(&ack("job-r", 2, 100, 4, false)).await;
    outbox.ack_logs(&ack("job-r", 2, 20, 4, true)).await;
    let sent = drain(&outbox).await;
    assert_eq!(sent.stream("job-r", LogStream::Stdout, 20), data[20..]);
    assert_eq!(sent.results().len(), 1);

    // A resend for another attempt is ignored.
    outbox.ack_logs(&ack("job-r", 1, 0, 0, true)).await;
    assert!(drain(&outbox).await.others.is_empty());
}

#[tokio::test]
async fn started_carries_the_pid_and_comes_first() {
    let dir = tempfile::tempdir().expect("tempdir");
    let outbox = open(dir.path(), 1 << 30).await;
    add(&outbox, "job-p", 1).await;
    assert!(
        drain(&outbox).await.others.is_empty(),
        "nothing before the start"
    );
    outbox.set_pid("job-p", 4321);
    let sent = drain(&outbox).await;
    assert!(matches!(sent.others.as_slice(), [Body::Started(s)] if s.pid == 4321));
    assert_eq!(outbox.running(), 1);
    outbox.finish("job-p", result("job-p", 1, 0)).await;
    assert_eq!(outbox.running(), 0);
}

#[test]
fn spool_sizes_parse() {
    use hodei_agent::parse_size;
    assert_eq!(parse_size("1G"), Ok(1 << 30));
    assert_eq!(parse_size("512M"), Ok(512 << 20));
    assert_eq!(parse_size("64k"), Ok(64 << 10));
    assert_eq!(parse_size("2GiB"), Ok(2 << 30));
    assert_eq!(parse_size("1000"), Ok(1000));
    assert!(parse_size("").is_err());
    assert!(parse_size("1X").is_err());
    assert!(parse_size("-1G").is_err());
    assert!(parse_size("99999999999T").is_err());
}

/// A process record written after the attempt's result (the record is
/// written in the background) changes nothing: the durable result is not
/// rewritten without fsync, and the process is gone anyway.
#[test]
fn a_process_record_after_the_result_is_dropped() {
    use hodei_agent::spool::{ProcessRecord, ResultRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let files = AttemptFiles::create(dir.path(), Meta::new("j", 1, [0, 0])).expect("create");
    let process = ProcessRecord {
        pid: 42,
        pgid: 42,
        start_time: 7,
        boot_id: None,
    };
    // Before the result: recorded.
    files.record_process(process.clone()).expect("record");
    assert_eq!(
        read_meta(files.dir()).expect("meta").process,
        Some(process.clone())
    );
    let result = ResultRecord {
        outcome: pb::Outcome::Exited as i32,
        exit_code: 0,
        signal: 0,
        message: String::new(),
        stdout: Default::default(),
        stderr: Default::default(),
    };
    files
        .make_result_durable([false, false], |m| {
            m.process = None;
            m.result = Some(result.clone());
        })
        .expect("result");
    let on_disk = std::fs::read(files.dir().join("meta.json")).expect("read");
    files.record_process(process).expect("no-op");
    assert_eq!(
        std::fs::read(files.dir().join("meta.json")).expect("read"),
        on_disk,
        "meta.json untouched"
    );
    let meta = read_meta(files.dir()).expect("meta");
    assert_eq!((meta.result, meta.process), (Some(result), None));
}
