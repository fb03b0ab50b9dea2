//! Operator endpoints: liveness, readiness, Prometheus metrics, the
//! overview statistics and the OpenAPI document.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hodei_core::JobState;
use hodei_core::api::{Finished, MinuteStats, Stats, WorkerCounts};
use utoipa::OpenApi as _;

use super::jobs::worker_list;
use super::schema::{ErrorBodySchema, StatsSchema};
use super::{ApiError, AppState};
use crate::reactor::now_ms;

/// How long readiness waits for the store and the reactor.
const READY_TIMEOUT: Duration = Duration::from_secs(2);
const MINUTE_MS: i64 = 60_000;
/// Minutes in the overview chart (the last one is the current minute).
const CHART_MINUTES: i64 = 60;

/// Liveness: the process serves HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    responses((status = 200, description = "`ok`", content_type = "text/plain", body = String))
)]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the store answers a read and the reactor answers a request.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, description = "`ready`", content_type = "text/plain", body = String),
        (status = 503, description = "Not ready; the message says what failed", body = ErrorBodySchema),
    )
)]
pub async fn readyz(State(app): State<AppState>) -> Result<&'static str, ApiError> {
    let mut problems = Vec::new();
    match tokio::time::timeout(READY_TIMEOUT, app.store.ping()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => problems.push(format!("store: {e}")),
        Err(_) => problems.push("store: no answer within 2 s".to_string()),
    }
    match tokio::time::timeout(READY_TIMEOUT, worker_list(&app)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => problems.push(format!("reactor: {}", e.body.message)),
        Err(_) => problems.push("reactor: no answer within 2 s".to_string()),
    }
    if problems.is_empty() {
        Ok("ready")
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            problems.join("; "),
        ))
    }
}

/// Prometheus metrics (text exposition format 0.0.4).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses((status = 200, description = "Metrics in the Prometheus text format", content_type = "text/plain; version=0.0.4", body = String))
)]
pub async fn metrics(State(app): State<AppState>) -> Response {
    // Gauges that are cheaper to read at scrape time than to keep current.
    match app.store.count_by_state().await {
        Ok(counts) => crate::metrics::set_jobs_by_state(&counts),
        Err(e) => tracing::warn!(error = %e, "metrics: cannot count jobs"),
    }
    match worker_list(&app).await {
        Ok(workers) => crate::metrics::set_workers(&workers),
        Err(e) => tracing::warn!(error = %e.body.message, "metrics: cannot list workers"),
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
        .into_response()
}

/// The overview numbers: jobs by state, queue depth, jobs finished in the
/// last hour and per minute, workers by state.
pub(crate) async fn collect_stats(app: &AppState) -> Result<Stats, ApiError> {
    let now = now_ms();
    let first_minute = now - now.rem_euclid(MINUTE_MS) - (CHART_MINUTES - 1) * MINUTE_MS;
    let mut stats = Stats {
        at_ms: now,
        jobs: JobState::ALL
            .iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect(),
        per_minute: (0..CHART_MINUTES)
            .map(|i| MinuteStats {
                start_ms: first_minute + i * MINUTE_MS,
                ..MinuteStats::default()
            })
            .collect(),
        ..Stats::default()
    };
    for (state, n) in app.store.count_by_state().await? {
        stats.jobs.insert(state.as_str().to_string(), n);
        match state {
            JobState::Queued => stats.queue_depth += n,
            JobState::Assigned | JobState::Running => stats.running += n,
            _ => {}
        }
    }
    for count in app.store.finished_since(first_minute).await? {
        let Some(minute) = stats.per_minute.get_mut(count.minute as usize) else {
            continue;
        };
        let mut f = Finished::default();
        f.add(count.state, count.count);
        minute.succeeded += f.succeeded;
        minute.failed += f.failed;
        minute.cancelled += f.cancelled;
        stats.last_hour.add(count.state, count.count);
    }
    let mut workers = WorkerCounts::default();
    for w in worker_list(app).await? {
        match w.state.as_str() {
            "ready" => workers.ready += 1,
            "busy" => workers.busy += 1,
            "draining" => workers.draining += 1,
            _ => workers.offline += 1,
        }
    }
    stats.workers = workers;
    Ok(stats)
}

/// The overview numbers of the dashboard.
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    tag = "operations",
    responses(
        (status = 200, description = "Jobs by state, queue depth, jobs finished in the last hour and per minute, workers by state", body = StatsSchema),
        (status = 503, description = "The store or the orchestrator cannot answer", body = ErrorBodySchema),
    )
)]
pub async fn stats(State(app): State<AppState>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(collect_stats(&app).await?))
}

/// This document: the OpenAPI 3 description of every HTTP route.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "operations",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json", body = Object))
)]
pub async fn openapi_json() -> Response {
    // Built once: the document only changes with the code.
    static DOCUMENT: OnceLock<Result<String, String>> = OnceLock::new();
    let document = DOCUMENT.get_or_init(|| {
        super::openapi::ApiDoc::openapi()
            .to_json()
            .map_err(|e| e.to_string())
    });
    match document {
        Ok(json) => ([(header::CONTENT_TYPE, "application/json")], json.clone()).into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the OpenAPI document: {e}"),
        )
        .into_response(),
    }
}
