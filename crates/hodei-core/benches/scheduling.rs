//! The scheduler's hot paths at fleet sizes from 10 to 10,000 idle workers:
//! placing one batch of 250 jobs with the room indexes the engine keeps
//! (`place_in`), the same with the indexes built from worker views for
//! each call (`place`: what keeping them saves), and a whole engine batch
//! of 250 submissions (validation, transitions, placement, assignments),
//! which should not grow with the fleet. `cargo bench -p hodei-core`;
//! `-- --quick` for a short run.

use std::collections::{BTreeMap, BTreeSet};
use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, BenchmarkId, Criterion, criterion_group, criterion_main};
use hodei_core::engine::{Engine, EngineConfig, Input, Output, ToAgent};
use hodei_core::job::Outcome;
use hodei_core::scheduler::{QueueKey, QueuedJob, Rooms, WorkerView, place, place_in, rooms_of};
use hodei_core::spec::JobSpec;

const FLEETS: [usize; 3] = [10, 1_000, 10_000];
const BATCH: usize = 250;

fn queue() -> BTreeMap<QueueKey, QueuedJob> {
    (0..BATCH as u64)
        .map(|i| {
            let job = QueuedJob {
                id: format!("job-{i:04}"),
                requires: Vec::new(),
            };
            (QueueKey::new(0, i), job)
        })
        .collect()
}

fn worker_id(i: usize) -> String {
    format!("worker-{i:05}")
}

/// `n` idle workers, each with slots enough that the batch fits.
fn views(n: usize) -> Vec<WorkerView> {
    let slots = (BATCH / n).max(1) as u32;
    (0..n)
        .map(|i| WorkerView {
            id: worker_id(i),
            labels: ["linux".to_string()].into(),
            free_slots: slots,
            queue_room: slots,
            draining: false,
        })
        .collect()
}

fn placement(c: &mut Criterion) {
    let q = queue();
    let mut group = c.benchmark_group("place 250 jobs");
    for n in FLEETS {
        let views = views(n);
        let (slots, room) = rooms_of(&views);
        group.bench_with_input(BenchmarkId::new("indexed", n), &n, |b, _| {
            b.iter_batched(
                || (slots.clone(), room.clone()),
                // The indexes are handed back, to be dropped outside the timing.
                |(mut s, mut r)| {
                    let placed = place_in(&q, &mut s, &mut r);
                    (black_box(placed), s, r)
                },
                BatchSize::LargeInput,
            )
        });
        group.bench_with_input(BenchmarkId::new("indexes built per call", n), &n, |b, _| {
            b.iter(|| black_box(place(&q, &views)))
        });
    }
    group.finish();
}

/// 250 jobs that need the label `gpu`, on `n` idle workers of which 10
/// have it, with less room than the others: they come last in pick order.
fn labeled_placement(c: &mut Criterion) {
    let q: BTreeMap<QueueKey, QueuedJob> = (0..BATCH as u64)
        .map(|i| {
            let job = QueuedJob {
                id: format!("gpu-job-{i:04}"),
                requires: vec!["gpu".to_string()],
            };
            (QueueKey::new(0, i), job)
        })
        .collect();
    let mut group = c.benchmark_group("place 250 jobs needing a label 10 workers have");
    for n in FLEETS.into_iter().filter(|n| *n > 10) {
        let mut slots = Rooms::default();
        for i in 0..n {
            let (label, room) = if i % (n / 10) == 0 {
                ("gpu", BATCH as u32 / 10)
            } else {
                ("linux", BATCH as u32)
            };
            slots.set(&worker_id(i), room, &BTreeSet::from([label.to_string()]));
        }
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || slots.clone(),
                |mut s| {
                    let placed = place_in(&q, &mut s, &mut Rooms::default());
                    assert_eq!(placed.len(), BATCH);
                    (black_box(placed), s)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

/// An engine with `n` idle workers attached.
fn engine_with(n: usize) -> Engine {
    let mut e = Engine::new(EngineConfig::default());
    let mut out = Output::default();
    let slots = (BATCH / n).max(1) as u32;
    for i in 0..n {
        let attach = Input::Attach {
            session: i as u64 + 1,
            worker_id: worker_id(i),
            labels: vec!["linux".into()],
            slots,
            prefetch: slots,
            running: Vec::new(),
        };
        e.handle(attach, 0, &mut out);
    }
    e.end_batch(0, &mut out);
    e
}

fn submissions(round: u64) -> Vec<Input> {
    (0..BATCH)
        .map(|i| Input::Submit {
            req: i as u64,
            id: format!("job-{round}-{i:04}"),
            spec: JobSpec::command(["true"]),
            submitter: None,
            fresh: true,
            existing: None,
        })
        .collect()
}

/// The inputs that end every attempt `out` assigned: started, then exited 0.
fn endings(out: &Output) -> Vec<Input> {
    let mut inputs = Vec::new();
    for (session, message) in &out.messages {
        if let ToAgent::Assign { job, .. } = message {
            let (job_id, attempt) = (job.id.clone(), job.attempt);
            inputs.push(Input::Started {
                session: *session,
                job_id: job_id.clone(),
                attempt,
            });
            inputs.push(Input::Result {
                session: *session,
                job_id,
                attempt,
                outcome: Outcome::Exited { code: 0 },
                totals: None,
            });
        }
    }
    inputs
}

/// Times the submission batch only; the batch that ends its jobs (so the
/// next one finds the fleet idle again) runs outside the timing.
fn engine_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("engine batch of 250 submissions");
    for n in FLEETS {
        let mut e = engine_with(n);
        let mut round = 0;
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    round += 1;
                    let inputs = submissions(round);
                    let start = Instant::now();
                    let mut out = Output::default();
                    for input in inputs {
                        e.handle(input, 1, &mut out);
                    }
                    e.end_batch(1, &mut out);
                    spent += start.elapsed();
                    let mut done = Output::default();
                    for input in endings(black_box(&out)) {
                        e.handle(input, 2, &mut done);
                    }
                    e.end_batch(2, &mut done);
                }
                spent
            })
        });
    }
    group.finish();
}

criterion_group!(benches, placement, labeled_placement, engine_batch);
criterion_main!(benches);
