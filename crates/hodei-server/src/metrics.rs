//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and the
//! Prometheus exporter's recorder (no listener of its own: the orchestrator
//! serves the text on its port).
//!
//! The recorder is process-wide (the `metrics` facade has one global
//! recorder), so orchestrators sharing a process share their metrics.
//!
//! | metric | kind | from |
//! |---|---|---|
//! | `hodei_jobs{state}` | gauge | store, at scrape |
//! | `hodei_queue_depth` | gauge | engine, after each batch |
//! | `hodei_jobs_submitted_total` | counter | reactor |
//! | `hodei_jobs_finished_total{state}` | counter | reactor |
//! | `hodei_job_dispatch_latency_seconds` | histogram | submit → running |
//! | `hodei_job_run_seconds` | histogram | running → finished |
//! | `hodei_workers{state}`, `hodei_workers_connected` | gauge | engine, at scrape |
//! | `hodei_log_bytes_received_total{stream}` | counter | log data from agents and seed clients |
//! | `hodei_log_bytes_stored_total{stream}` | counter | log data written (duplicates dropped) |
//! | `hodei_store_commit_seconds`, `hodei_store_commit_failures_total` | histogram, counter | reactor |
//! | `hodei_grpc_requests_total{method, status}` | counter | `grpc_metrics` layer |

use std::sync::OnceLock;
use std::time::Duration;

use hodei_core::engine::{Input, Notice, Output, Reply, WorkerInfo};
use hodei_core::{JobState, LogStream};
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const JOBS: &str = "hodei_jobs";
pub const QUEUE_DEPTH: &str = "hodei_queue_depth";
pub const SUBMITTED: &str = "hodei_jobs_submitted_total";
pub const FINISHED: &str = "hodei_jobs_finished_total";
pub const DISPATCH_LATENCY: &str = "hodei_job_dispatch_latency_seconds";
pub const RUN_TIME: &str = "hodei_job_run_seconds";
pub const WORKERS: &str = "hodei_workers";
pub const WORKERS_CONNECTED: &str = "hodei_workers_connected";
pub const LOG_RECEIVED: &str = "hodei_log_bytes_received_total";
pub const LOG_STORED: &str = "hodei_log_bytes_stored_total";
pub const COMMIT_SECONDS: &str = "hodei_store_commit_seconds";
pub const COMMIT_FAILURES: &str = "hodei_store_commit_failures_total";
pub const STORE_DOWN: &str = "hodei_store_unavailable";
pub const STORE_OUTAGES: &str = "hodei_store_outages_total";
pub const GRPC_REQUESTS: &str = "hodei_grpc_requests_total";

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
const RUN_BUCKETS: &[f64] = &[
    0.01, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0,
    86400.0,
];
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// How often histograms are folded into their buckets when nobody scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(10);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder (once per process) and describes the
/// metrics. Returns false if another global recorder was installed first
/// (then `/metrics` shows nothing).
pub fn install() -> bool {
    HANDLE
        .get_or_init(|| {
            let builder = [
                (DISPATCH_LATENCY, LATENCY_BUCKETS),
                (RUN_TIME, RUN_BUCKETS),
                (COMMIT_SECONDS, COMMIT_BUCKETS),
            ]
            .into_iter()
            .try_fold(PrometheusBuilder::new(), |b, (name, buckets)| {
                b.set_buckets_for_metric(Matcher::Full(name.to_string()), buckets)
            });
            let recorder = match builder {
                Ok(b) => b.build_recorder(),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics disabled: bad histogram buckets");
                    return None;
                }
            };
            let handle = recorder.handle();
            if let Err(e) = metrics::set_global_recorder(recorder) {
                tracing::warn!(error = %e, "metrics disabled: another recorder is installed");
                return None;
            }
            describe();
            Some(handle)
        })
        .is_some()
}

fn describe() {
    describe_gauge!(
        JOBS,
        "Jobs in each state (read from the store at scrape time)"
    );
    describe_gauge!(QUEUE_DEPTH, "Jobs waiting for a worker");
    describe_counter!(SUBMITTED, "Jobs created");
    describe_counter!(FINISHED, "Jobs that reached a final state, by state");
    describe_histogram!(
        DISPATCH_LATENCY,
        metrics::Unit::Seconds,
        "Time from submission to running"
    );
    describe_histogram!(
        RUN_TIME,
        metrics::Unit::Seconds,
        "Time from running to finished"
    );
    describe_gauge!(WORKERS, "Workers in each state");
    describe_gauge!(WORKERS_CONNECTED, "Workers with an open session");
    describe_counter!(LOG_RECEIVED, metrics::Unit::Bytes, "Log bytes received");
    describe_counter!(
        LOG_STORED,
        metrics::Unit::Bytes,
        "Log bytes stored (resent duplicates dropped)"
    );
    describe_histogram!(
        COMMIT_SECONDS,
        metrics::Unit::Seconds,
        "Duration of a store commit (one per reactor batch)"
    );
    describe_counter!(COMMIT_FAILURES, "Store commits that failed");
    describe_gauge!(
        STORE_DOWN,
        "1 while the store is unavailable and the orchestrator refuses work"
    );
    describe_counter!(
        STORE_OUTAGES,
        "Times the store failed and the orchestrator rebuilt its state from it"
    );
    describe_counter!(GRPC_REQUESTS, "gRPC calls completed, by method and status");
}

/// The metrics in the Prometheus text format.
pub fn render() -> String {
    match HANDLE.get() {
        Some(Some(handle)) => handle.render(),
        _ => "# metrics are disabled in this process\n".to_string(),
    }
}

/// Folds recorded histogram samples into buckets (bounded memory).
pub fn upkeep() {
    if let Some(Some(handle)) = HANDLE.get() {
        handle.run_upkeep();
    }
}

fn seconds(ms: i64) -> f64 {
    ms.max(0) as f64 / 1000.0
}

/// Counts an input before the engine takes it.
pub fn on_input(input: &Input) {
    if let Input::Log { stream, data, .. } = input {
        counter!(LOG_RECEIVED, "stream" => stream.as_str()).increment(data.len() as u64);
    }
}

/// Records one store commit.
pub fn on_commit(took: Duration, ok: bool) {
    histogram!(COMMIT_SECONDS).record(took.as_secs_f64());
    if !ok {
        counter!(COMMIT_FAILURES).increment(1);
    }
}

/// Records whether the store is unavailable (the orchestrator refusing work).
pub fn on_store_outage(down: bool) {
    gauge!(STORE_DOWN).set(if down { 1.0 } else { 0.0 });
    if down {
        counter!(STORE_OUTAGES).increment(1);
    }
}

/// Records what a committed batch did.
pub fn on_batch(out: &Output, queue_depth: usize) {
    gauge!(QUEUE_DEPTH).set(queue_depth as f64);
    let mut stored = [0u64; 2];
    for log in &out.writes.logs {
        stored[log.stream.index()] += log.data.len() as u64;
    }
    for stream in LogStream::BOTH {
        if stored[stream.index()] > 0 {
            counter!(LOG_STORED, "stream" => stream.as_str()).increment(stored[stream.index()]);
        }
    }
    let created = out
        .replies
        .iter()
        .filter(|(_, r)| matches!(r, Reply::Submitted { created: true, .. }))
        .count();
    if created > 0 {
        counter!(SUBMITTED).increment(created as u64);
    }
    for notice in &out.notices {
        let Notice::JobChanged { job_id, state } = notice else {
            continue;
        };
        let Some(job) = out.writes.jobs.get(job_id) else {
            continue;
        };
        if *state == JobState::Running
            && let Some(started) = job.started_at
        {
            histogram!(DISPATCH_LATENCY).record(seconds(started - job.created_at));
        }
        if state.is_terminal() {
            counter!(FINISHED, "state" => state.as_str()).increment(1);
            if let (Some(started), Some(finished)) = (job.started_at, job.finished_at) {
                histogram!(RUN_TIME).record(seconds(finished - started));
            }
        }
    }
}

/// Sets `hodei_jobs{state}` from the store's counts (absent states are 0).
pub fn set_jobs_by_state(counts: &[(JobState, u64)]) {
    for state in JobState::ALL {
        let n = counts
            .iter()
            .find(|(s, _)| *s == state)
            .map_or(0, |(_, n)| *n);
        gauge!(JOBS, "state" => state.as_str()).set(n as f64);
    }
}

/// Sets the worker gauges from the engine's list.
pub fn set_workers(workers: &[WorkerInfo]) {
    let mut connected = 0;
    for state in ["ready", "busy", "draining", "offline"] {
        let n = workers.iter().filter(|w| w.state == state).count();
        if state != "offline" {
            connected += n;
        }
        gauge!(WORKERS, "state" => state).set(n as f64);
    }
    gauge!(WORKERS_CONNECTED).set(connected as f64);
}
