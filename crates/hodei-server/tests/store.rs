//! The store contract, run on both backends: SQLite (a real database file,
//! one temporary directory per test) and PostgreSQL (a database of its own
//! per test on a private server).

mod support;

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use bytes::Bytes;
use hodei_core::engine::{LogWrite, WorkerRecord, Writes};
use hodei_core::{Job, JobSpec, JobState, LogStream};
use hodei_server::store::{JobFilter, LogQuery, SqliteStore, Store, StoreError};
use support::{Backend, TestDb};
use tempfile::TempDir;

fn job(id: &str, seq: u64, state: JobState) -> Job {
    let mut job = Job::new(
        id.to_string(),
        JobSpec::command(["echo", id]).normalized(),
        seq,
        1_000 + seq as i64,
    );
    job.state = state;
    job
}

fn jobs_writes(jobs: impl IntoIterator<Item = Job>) -> Writes {
    Writes {
        jobs: jobs.into_iter().map(|j| (j.id.clone(), j)).collect(),
        ..Writes::default()
    }
}

fn log(job_id: &str, attempt: u32, stream: LogStream, offset: u64, data: &[u8]) -> LogWrite {
    LogWrite {
        job_id: job_id.to_string(),
        attempt,
        stream,
        offset,
        data: Bytes::copy_from_slice(data),
        timestamp_ms: 5_000 + offset as i64,
    }
}

fn query(
    job_id: &str,
    attempt: u32,
    stream: Option<LogStream>,
    from: [u64; 2],
    max_bytes: usize,
) -> LogQuery {
    LogQuery {
        job_id: job_id.to_string(),
        attempt,
        stream,
        from,
        max_bytes,
    }
}

async fn commit_and_get_round_trip_every_field(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let spec = JobSpec {
        name: "build".into(),
        command: vec!["cargo".into(), "build".into(), "--release".into()],
        image: Some("rust:1.88".into()),
        env: BTreeMap::from([("A".into(), "1".into()), ("B".into(), "two words".into())]),
        working_dir: Some("/src".into()),
        timeout_ms: Some(60_000),
        labels: vec!["docker".into(), "linux".into()],
        priority: -7,
        max_retries: 3,
        kill_grace_ms: Some(2_500),
        cpu_millicores: Some(1_500),
        memory_bytes: Some(256 << 20),
        pull_policy: Some(hodei_core::spec::PullPolicy::Never),
        secrets: vec!["DB_PASSWORD".into()],
    };
    let full = Job {
        id: "job-1".into(),
        spec,
        state: JobState::Failed,
        attempt: 3,
        retries: 2,
        worker: Some("w-9".into()),
        exit_code: Some(137),
        signal: Some(9),
        reason: Some("killed by signal".into()),
        cancel_requested: true,
        seq: 42,
        created_at: 1_700_000_000_000,
        assigned_at: Some(1_700_000_000_100),
        started_at: Some(1_700_000_000_200),
        finished_at: Some(1_700_000_000_300),
        submitter: Some("tok-1".into()),
    };
    store.commit(&jobs_writes([full.clone()])).await.unwrap();
    assert_eq!(store.get_job("job-1").await.unwrap(), Some(full.clone()));
    assert_eq!(store.get_job("missing").await.unwrap(), None);
    let ids = vec!["missing".to_string(), "job-1".to_string()];
    assert_eq!(store.get_jobs(&ids).await.unwrap(), vec![full]);
    assert_eq!(store.get_jobs(&[]).await.unwrap(), vec![]);
    store.commit(&Writes::default()).await.unwrap();
}

async fn upsert_replaces_the_record(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let queued = job("a", 1, JobState::Queued);
    store.commit(&jobs_writes([queued.clone()])).await.unwrap();
    let mut running = queued.clone();
    running.state = JobState::Running;
    running.attempt = 1;
    running.worker = Some("w1".into());
    running.assigned_at = Some(10);
    running.started_at = Some(11);
    store.commit(&jobs_writes([running.clone()])).await.unwrap();
    assert_eq!(store.get_job("a").await.unwrap(), Some(running));
    let all = store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1);
    let queued_list = JobFilter {
        state: Some(JobState::Queued),
        ..JobFilter::default()
    };
    assert!(store.list_jobs(&queued_list).await.unwrap().is_empty());
}

async fn list_by_state_pages_with_the_seq_cursor(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let state_of = |seq: u64| {
        if seq.is_multiple_of(3) {
            JobState::Running
        } else {
            JobState::Queued
        }
    };
    let all: Vec<Job> = (1..=250)
        .map(|seq| job(&format!("j{seq:03}"), seq, state_of(seq)))
        .collect();
    store.commit(&jobs_writes(all)).await.unwrap();

    let mut filter = JobFilter {
        state: Some(JobState::Queued),
        before_seq: None,
        limit: 30,
        ..JobFilter::default()
    };
    let mut seen = Vec::new();
    loop {
        let page = store.list_jobs(&filter).await.unwrap();
        assert!(page.len() <= 30);
        let Some(last) = page.last() else { break };
        filter.before_seq = Some(last.seq);
        assert!(page.iter().all(|j| j.state == JobState::Queued));
        seen.extend(page.iter().map(|j| j.seq));
    }
    let expected: Vec<u64> = (1..=250)
        .rev()
        .filter(|s| state_of(*s) == JobState::Queued)
        .collect();
    assert_eq!(seen, expected);

    let newest = store.list_jobs(&JobFilter::default()).await.unwrap();
    assert_eq!(newest.len(), 100, "limit 0 means 100");
    assert_eq!(newest.first().map(|j| j.seq), Some(250));
    assert!(newest.windows(2).all(|w| w[0].seq > w[1].seq));
    let capped = JobFilter {
        limit: 5_000,
        ..JobFilter::default()
    };
    assert_eq!(store.list_jobs(&capped).await.unwrap().len(), 250);
    let running_before_10 = JobFilter {
        state: Some(JobState::Running),
        before_seq: Some(10),
        limit: 10,
        ..JobFilter::default()
    };
    let seqs: Vec<u64> = store
        .list_jobs(&running_before_10)
        .await
        .unwrap()
        .iter()
        .map(|j| j.seq)
        .collect();
    assert_eq!(seqs, vec![9, 6, 3]);
}

async fn logs_read_in_arrival_order_and_trimmed_to_the_offset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut writes = jobs_writes([job("j", 1, JobState::Running)]);
    writes.logs = vec![
        log("j", 1, LogStream::Stdout, 0, b"hello"),
        log("j", 1, LogStream::Stderr, 0, b"abc"),
        log("j", 1, LogStream::Stdout, 5, b" world"),
        log("j", 2, LogStream::Stdout, 0, b"other attempt"),
        log("j", 1, LogStream::Stderr, 3, b"def"),
    ];
    store.commit(&writes).await.unwrap();

    let both = store
        .read_logs(&query("j", 1, None, [0, 0], 1 << 20))
        .await
        .unwrap();
    let got: Vec<(LogStream, u64, &[u8])> = both
        .iter()
        .map(|c| (c.stream, c.offset, &c.data[..]))
        .collect();
    assert_eq!(
        got,
        vec![
            (LogStream::Stdout, 0, &b"hello"[..]),
            (LogStream::Stderr, 0, &b"abc"[..]),
            (LogStream::Stdout, 5, &b" world"[..]),
            (LogStream::Stderr, 3, &b"def"[..]),
        ]
    );
    assert_eq!(both[0].timestamp_ms, 5_000);

    let out = store
        .read_logs(&query("j", 1, Some(LogStream::Stdout), [7, 0], 1 << 20))
        .await
        .unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].offset, &out[0].data[..]), (7, &b"orld"[..]));
    assert_eq!(out[0].timestamp_ms, 5_005);

    let err = store
        .read_logs(&query("j", 1, Some(LogStream::Stderr), [0, 1], 1 << 20))
        .await
        .unwrap();
    let got: Vec<(u64, &[u8])> = err.iter().map(|c| (c.offset, &c.data[..])).collect();
    assert_eq!(got, vec![(1, &b"bc"[..]), (3, &b"def"[..])]);

    // Both streams, each from its own offset; a chunk ending at `from` is not returned.
    let both = store
        .read_logs(&query("j", 1, None, [5, 4], 1 << 20))
        .await
        .unwrap();
    let got: Vec<(LogStream, u64, &[u8])> = both
        .iter()
        .map(|c| (c.stream, c.offset, &c.data[..]))
        .collect();
    assert_eq!(
        got,
        vec![
            (LogStream::Stdout, 5, &b" world"[..]),
            (LogStream::Stderr, 4, &b"ef"[..])
        ]
    );

    assert!(
        store
            .read_logs(&query("j", 1, None, [11, 6], 1 << 20))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_logs(&query("j", 3, None, [0, 0], 1 << 20))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .read_logs(&query("nope", 1, None, [0, 0], 1 << 20))
            .await
            .unwrap()
            .is_empty()
    );
    // max_bytes 0 still returns one chunk.
    assert_eq!(
        store
            .read_logs(&query("j", 1, None, [0, 0], 0))
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn max_bytes_paging_reads_everything_exactly_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut writes = jobs_writes([job("p", 1, JobState::Running)]);
    let mut expected: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut arrival = HashMap::new();
    for i in 0..300u32 {
        let stream = if i % 3 == 1 {
            LogStream::Stderr
        } else {
            LogStream::Stdout
        };
        let len = 1 + (i as usize * 7) % 41;
        let data: Vec<u8> = (0..len).map(|k| (i as usize + k) as u8).collect();
        let buf = &mut expected[stream.index()];
        arrival.insert((stream, buf.len() as u64), i);
        writes
            .logs
            .push(log("p", 1, stream, buf.len() as u64, &data));
        buf.extend_from_slice(&data);
    }
    store.commit(&writes).await.unwrap();

    for max_bytes in [0, 1, 64, 500, 1 << 20] {
        let mut got: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
        let mut from = [0u64; 2];
        let mut pages = 0;
        let mut order = Vec::new();
        loop {
            let page = store
                .read_logs(&query("p", 1, None, from, max_bytes))
                .await
                .unwrap();
            if page.is_empty() {
                break;
            }
            pages += 1;
            let bytes: usize = page.iter().map(|c| c.data.len()).sum();
            let last = page.last().map_or(0, |c| c.data.len());
            assert!(
                bytes - last < max_bytes.max(1),
                "page went on past max_bytes"
            );
            for chunk in page {
                let s = chunk.stream.index();
                order.push(arrival[&(chunk.stream, chunk.offset)]);
                assert_eq!(chunk.offset, from[s], "contiguous, no byte twice");
                got[s].extend_from_slice(&chunk.data);
                from[s] = chunk.offset + chunk.data.len() as u64;
            }
        }
        assert_eq!(got, expected, "max_bytes {max_bytes}");
        assert_eq!(order, (0..300).collect::<Vec<u32>>(), "arrival order");
        assert!(pages >= 1);
    }
}

async fn recover_after_reopen(backend: Backend) {
    let db = TestDb::new(backend).await;
    {
        let store = db.open().await;
        let empty = store.recover().await.unwrap();
        assert!(
            empty.unfinished.is_empty() && empty.workers.is_empty() && empty.log_ends.is_empty()
        );
        assert_eq!(empty.max_seq, 0);

        let queued = job("q", 3, JobState::Queued);
        let mut assigned = job("a", 1, JobState::Assigned);
        assigned.attempt = 1;
        assigned.worker = Some("w1".into());
        let mut running = job("r", 2, JobState::Running);
        running.attempt = 2;
        running.worker = Some("w2".into());
        let mut done = job("d", 9, JobState::Succeeded);
        done.attempt = 1;
        let mut writes = jobs_writes([queued, assigned, running, done]);
        writes.logs = vec![
            log(
                "r",
                1,
                LogStream::Stdout,
                0,
                b"first attempt, longer output",
            ),
            log("r", 2, LogStream::Stdout, 0, b"0123"),
            log("r", 2, LogStream::Stderr, 0, b"err"),
            log("r", 2, LogStream::Stdout, 4, b"4567"),
            log("a", 1, LogStream::Stderr, 0, b"xy"),
            log("d", 1, LogStream::Stdout, 0, b"finished"),
        ];
        for (id, slots) in [("w1", 2), ("w2", 4)] {
            writes.workers.insert(
                id.into(),
                WorkerRecord {
                    id: id.into(),
                    labels: vec!["linux".into(), id.into()],
                    slots,
                    last_seen: 77,
                },
            );
        }
        store.commit(&writes).await.unwrap();
    }
    let store = db.open().await;
    let rec = store.recover().await.unwrap();
    let ids: Vec<&str> = rec.unfinished.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "r", "q"], "unfinished, by seq");
    assert_eq!(rec.unfinished[1].worker.as_deref(), Some("w2"));
    let mut ends: Vec<_> = rec
        .log_ends
        .iter()
        .map(|((id, at), e)| (id.as_str(), *at, *e))
        .collect();
    ends.sort();
    assert_eq!(
        ends,
        vec![("a", 1, [0, 2]), ("q", 0, [0, 0]), ("r", 2, [8, 3])]
    );
    let workers: Vec<(&str, u32, usize)> = rec
        .workers
        .iter()
        .map(|w| (w.id.as_str(), w.slots, w.labels.len()))
        .collect();
    assert_eq!(workers, vec![("w1", 2, 2), ("w2", 4, 2)]);
    assert_eq!(
        rec.workers[0].labels,
        vec!["linux".to_string(), "w1".to_string()]
    );
    assert_eq!(rec.workers[0].last_seen, 77);
    assert_eq!(rec.max_seq, 9);
}

async fn big_batch_commits(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut writes =
        jobs_writes((1..=1_000).map(|seq| job(&format!("big-{seq}"), seq, JobState::Running)));
    let payload = vec![b'x'; 200];
    for i in 0..5_000u64 {
        let id = format!("big-{}", 1 + i % 1_000);
        writes
            .logs
            .push(log(&id, 0, LogStream::Stdout, (i / 1_000) * 200, &payload));
    }
    let started = Instant::now();
    store.commit(&writes).await.unwrap();
    let first = started.elapsed();
    // The same jobs again (all updates) and another 5,000 chunks.
    for l in &mut writes.logs {
        l.offset += 1_000;
    }
    let started = Instant::now();
    store.commit(&writes).await.unwrap();
    let second = started.elapsed();
    println!(
        "commit of 1,000 jobs + 5,000 log chunks: first {first:?}, second (upserts) {second:?}"
    );

    let rec = store.recover().await.unwrap();
    assert_eq!(rec.unfinished.len(), 1_000);
    assert_eq!(
        rec.log_ends.get(&("big-1".to_string(), 0)),
        Some(&[1_000 + 4 * 200 + 200, 0])
    );
    assert_eq!(rec.max_seq, 1_000);
}

async fn corrupt_rows_are_reported_not_panicked_on(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    store
        .commit(&jobs_writes([
            job("bad-state", 1, JobState::Queued),
            job("bad-spec", 2, JobState::Queued),
        ]))
        .await
        .unwrap();
    db.raw_sql("UPDATE jobs SET state = 'exploded' WHERE id = 'bad-state'")
        .await;
    db.raw_sql("UPDATE jobs SET spec = '{\"command\": 7}' WHERE id = 'bad-spec'")
        .await;

    let is_corrupt = |r: Result<_, StoreError>, id: &str| match r {
        Err(StoreError::Corrupt { job_id, message }) => {
            assert_eq!(job_id, id, "{message}");
            true
        }
        _ => false,
    };
    assert!(is_corrupt(
        store.get_job("bad-state").await.map(|_| ()),
        "bad-state"
    ));
    assert!(is_corrupt(
        store.get_job("bad-spec").await.map(|_| ()),
        "bad-spec"
    ));
    assert!(is_corrupt(
        store.list_jobs(&JobFilter::default()).await.map(|_| ()),
        "bad-spec"
    ));
    assert!(is_corrupt(store.recover().await.map(|_| ()), "bad-spec"));
    let err = store.get_job("bad-state").await.unwrap_err().to_string();
    assert!(
        err.contains("bad-state") && err.contains("exploded"),
        "{err}"
    );
}

/// Chunks of 64 KiB and more live in files beside SQLite's database (rows
/// in PostgreSQL); mixed with small ones, every byte reads back, from any
/// offset and in pages, after a reopen.
async fn large_chunks_read_back_from_any_offset(backend: Backend) {
    let db = TestDb::new(backend).await;
    let pattern = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|k| (k as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let parts = [
        pattern(10, 1),
        pattern(200 * 1024, 2),
        pattern(5, 3),
        pattern(100 * 1024, 4),
    ];
    let err = pattern(70 * 1024, 5);
    let mut expected = Vec::new();
    {
        let store = db.open().await;
        let mut running = job("big", 1, JobState::Running);
        running.attempt = 1;
        let mut first = jobs_writes([running]);
        let mut second = Writes::default();
        for (i, part) in parts.iter().enumerate() {
            let w = log("big", 1, LogStream::Stdout, expected.len() as u64, part);
            if i < 2 {
                first.logs.push(w)
            } else {
                second.logs.push(w)
            }
            expected.extend_from_slice(part);
        }
        second.logs.push(log("big", 1, LogStream::Stderr, 0, &err));
        store.commit(&first).await.unwrap();
        store.commit(&second).await.unwrap();
    }
    let store = db.open().await;
    let rec = store.recover().await.unwrap();
    assert_eq!(
        rec.log_ends[&("big".to_string(), 1)],
        [expected.len() as u64, err.len() as u64]
    );
    // From inside the large chunk, inside the small one, at the end.
    for from in [
        0,
        3,
        10,
        1_000,
        200 * 1024 + 10,
        200 * 1024 + 12,
        expected.len() as u64,
    ] {
        let page = store
            .read_logs(&query(
                "big",
                1,
                Some(LogStream::Stdout),
                [from, 0],
                1 << 30,
            ))
            .await
            .unwrap();
        let got: Vec<u8> = page.iter().flat_map(|c| c.data.iter().copied()).collect();
        assert_eq!(got, expected[from as usize..], "from {from}");
        if let Some(c) = page.first() {
            assert_eq!(c.offset, from);
        }
    }
    // Paged, both streams: everything once, in order.
    let mut got: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    let mut from = [0u64; 2];
    loop {
        let page = store
            .read_logs(&query("big", 1, None, from, 64 * 1024))
            .await
            .unwrap();
        if page.is_empty() {
            break;
        }
        for c in page {
            let s = c.stream.index();
            assert_eq!(c.offset, from[s], "contiguous");
            got[s].extend_from_slice(&c.data);
            from[s] += c.data.len() as u64;
        }
    }
    assert_eq!(got, [expected, err]);
    if backend == Backend::Sqlite {
        let file = db.dir.path().join("logs").join("big@1.stdout");
        assert!(file.is_file(), "the large chunks are in {file:?}");
    }
}

/// Text with quotes, backslashes, control characters and characters beyond
/// the Basic Multilingual Plane, integers at their types' limits, and every
/// byte value in a log chunk come back exactly as committed.
async fn awkward_text_and_bytes_round_trip(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let awkward = "quote \" backslash \\ tab \t newline \n bell \u{7} é 漢字 😀 \u{10FFFF}";
    let mut job = job(&format!("id {awkward}"), 1, JobState::Failed);
    job.spec.name = awkward.to_string();
    job.spec.env.insert("K".into(), awkward.to_string());
    job.reason = Some(awkward.to_string());
    job.worker = Some(awkward.to_string());
    job.submitter = Some(awkward.to_string());
    job.exit_code = Some(i32::MIN);
    job.signal = Some(i32::MAX);
    job.created_at = i64::MIN;
    job.finished_at = Some(i64::MAX);
    let mut writes = jobs_writes([job.clone()]);
    let every_byte: Vec<u8> = (0..=255).collect();
    writes
        .logs
        .push(log(&job.id, 0, LogStream::Stderr, 0, &every_byte));
    writes.workers.insert(
        awkward.to_string(),
        WorkerRecord {
            id: awkward.to_string(),
            labels: vec![awkward.to_string(), String::new()],
            slots: u32::MAX,
            last_seen: i64::MAX,
        },
    );
    store.commit(&writes).await.unwrap();
    assert_eq!(store.get_job(&job.id).await.unwrap(), Some(job.clone()));
    let chunks = store
        .read_logs(&query(&job.id, 0, Some(LogStream::Stderr), [0, 0], 1 << 20))
        .await
        .unwrap();
    let bytes: Vec<u8> = chunks.iter().flat_map(|c| c.data.iter().copied()).collect();
    assert_eq!(bytes, every_byte);
    let rec = store.recover().await.unwrap();
    assert_eq!(rec.workers, vec![writes.workers[awkward].clone()]);
}

/// A commit that fails part-way (a log chunk of a job that does not exist)
/// keeps none of its writes, and the store takes the next commit.
async fn a_failed_commit_keeps_nothing_and_the_next_lands(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.open().await;
    let mut writes = jobs_writes([job("kept-not", 1, JobState::Queued)]);
    writes
        .logs
        .push(log("no-such-job", 0, LogStream::Stdout, 0, b"x"));
    let err = store.commit(&writes).await.unwrap_err();
    assert!(
        matches!(&err, StoreError::Database(sqlx::Error::Database(e)) if e.is_foreign_key_violation()),
        "the chunk's foreign key refused the batch: {err}"
    );
    assert_eq!(store.get_job("kept-not").await.unwrap(), None);
    for round in 0..2u64 {
        let id = format!("lands-{round}");
        store
            .commit(&jobs_writes([job(&id, 2 + round, JobState::Queued)]))
            .await
            .unwrap();
        assert!(store.get_job(&id).await.unwrap().is_some());
    }
    // Nothing of the failed batch was left pending to commit with them.
    assert_eq!(store.get_job("kept-not").await.unwrap(), None);
}

#[tokio::test]
async fn sqlite_creates_nested_data_directories() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("nested/data");
    let store = SqliteStore::open(&path).await.unwrap();
    store
        .commit(&jobs_writes([job("a", 1, JobState::Queued)]))
        .await
        .unwrap();
    assert!(path.join("hodei.db").exists());
    store.close().await;
}

on_both_backends!(
    commit_and_get_round_trip_every_field,
    upsert_replaces_the_record,
    list_by_state_pages_with_the_seq_cursor,
    logs_read_in_arrival_order_and_trimmed_to_the_offset,
    max_bytes_paging_reads_everything_exactly_once,
    recover_after_reopen,
    big_batch_commits,
    corrupt_rows_are_reported_not_panicked_on,
    large_chunks_read_back_from_any_offset,
    awkward_text_and_bytes_round_trip,
    a_failed_commit_keeps_nothing_and_the_next_lands
);
