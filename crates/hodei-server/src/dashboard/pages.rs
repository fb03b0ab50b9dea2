//! The dashboard's handlers: each reads what its page shows (store, engine,
//! statistics) and renders a template; errors render as pages too.

use askama::Template;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use hodei_core::Job;
use hodei_core::api::Stats;
use hodei_core::spec::validate_job_id;
use serde::Deserialize;
use utoipa::IntoParams;

use super::views::{
    JobRow, Moment, WorkerRow, fmt_duration, inline_json, moments, run_time, shell_words,
    state_names,
};
use crate::http::{AppState, collect_stats, jobs::ListQuery, jobs::list_page, jobs::worker_list};
use crate::reactor::now_ms;
use crate::store::JobFilter;

const STYLESHEET: &str = include_str!("assets/app.css");
/// The ANSI renderer, then the pages' code, as one script.
const SCRIPT: &str = concat!(
    include_str!("assets/ansi.js"),
    include_str!("assets/app.js")
);
/// Only this server's own script, styles and API.
const CSP: &str =
    "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'";
/// Jobs on the overview page.
const RECENT_JOBS: u32 = 10;
/// Jobs per page of the jobs list.
const PAGE_SIZE: u32 = 50;

fn html<T: Template>(status: StatusCode, page: &T) -> Response {
    match page.render() {
        Ok(body) => (
            status,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (header::CONTENT_SECURITY_POLICY, CSP),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot render the page: {e}"),
        )
            .into_response(),
    }
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    nav: &'static str,
    title: String,
    message: String,
}

fn error_page(status: StatusCode, title: &str, message: impl Into<String>) -> Response {
    let page = ErrorPage {
        nav: "",
        title: title.to_string(),
        message: message.into(),
    };
    html(status, &page)
}

/// The dashboard lives under `/ui`.
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 303, description = "Redirect to the dashboard, `/ui`")))]
pub async fn root() -> Redirect {
    Redirect::to("/ui")
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: &'static str,
    stats: Stats,
    stats_json: String,
    connected: u64,
    /// The latest jobs.
    rows: Vec<JobRow>,
}

/// Overview: queue depth, running jobs, jobs finished in the last hour,
/// jobs per minute, workers, the latest jobs.
#[utoipa::path(get, path = "/ui", tag = "dashboard",
    responses((status = 200, description = "Overview page", content_type = "text/html", body = String)))]
pub async fn overview(State(app): State<AppState>) -> Response {
    let stats = match collect_stats(&app).await {
        Ok(s) => s,
        Err(e) => return error_page(e.status, "Unavailable", e.body.message),
    };
    let filter = JobFilter {
        limit: RECENT_JOBS + 1,
        ..JobFilter::default()
    };
    let recent = match list_page(&app, &filter).await {
        Ok(page) => page.jobs,
        Err(e) => return error_page(e.status, "Unavailable", e.body.message),
    };
    let now = now_ms();
    let page = OverviewPage {
        nav: "overview",
        stats_json: inline_json(&stats),
        connected: stats.workers.ready + stats.workers.busy + stats.workers.draining,
        rows: recent.iter().map(|j| JobRow::of(j, now)).collect(),
        stats,
    };
    html(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    nav: &'static str,
    states: Vec<&'static str>,
    state: String,
    label: String,
    worker: String,
    name_prefix: String,
    page_size: u32,
    first_page: bool,
    rows: Vec<JobRow>,
    next_url: Option<String>,
    error: Option<String>,
}

/// Percent-encodes a query value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Jobs: the filtered list, live.
#[utoipa::path(get, path = "/ui/jobs", tag = "dashboard", params(ListQuery),
    responses((status = 200, description = "Jobs page", content_type = "text/html", body = String)))]
pub async fn jobs(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, "Bad filter", e.body_text()),
    };
    let mut page = JobsPage {
        nav: "jobs",
        states: state_names(),
        state: q.state.clone().unwrap_or_default(),
        label: q.label.clone().unwrap_or_default(),
        worker: q.worker.clone().unwrap_or_default(),
        name_prefix: q.name_prefix.clone().unwrap_or_default(),
        page_size: q.limit.unwrap_or(PAGE_SIZE),
        first_page: q.cursor.as_deref().unwrap_or("").is_empty(),
        rows: Vec::new(),
        next_url: None,
        error: None,
    };
    let q = ListQuery {
        limit: Some(page.page_size),
        ..q
    };
    let listed = match q.filter() {
        Ok(filter) => list_page(&app, &filter).await,
        Err(e) => Err(e),
    };
    match listed {
        Ok(list) => {
            let now = now_ms();
            page.rows = list.jobs.iter().map(|j| JobRow::of(j, now)).collect();
            page.next_url = list.next_cursor.map(|cursor| {
                let mut url = format!("/ui/jobs?cursor={cursor}&limit={}", page.page_size);
                for (key, value) in [
                    ("state", &page.state),
                    ("label", &page.label),
                    ("worker", &page.worker),
                    ("name_prefix", &page.name_prefix),
                ] {
                    if !value.is_empty() {
                        url.push_str(&format!("&{key}={}", encode(value)));
                    }
                }
                url
            });
        }
        Err(e) => page.error = Some(e.body.message),
    }
    html(StatusCode::OK, &page)
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JobPageQuery {
    /// Show this attempt's log instead of following the current one.
    attempt: Option<u32>,
}

#[derive(Template)]
#[template(path = "job.html")]
struct JobPage {
    nav: &'static str,
    job: Job,
    row: JobRow,
    command: String,
    moments: Vec<Moment>,
    queue_wait: String,
    run_time: String,
    attempts: Vec<u32>,
    /// The attempt whose log is shown; 0 until the job is first assigned.
    shown_attempt: u32,
    pinned: bool,
    terminal: bool,
    timeout: String,
    kill_grace: String,
    job_json: String,
}

/// One job: spec, attempts, timing, exit code, live log, cancel.
#[utoipa::path(get, path = "/ui/jobs/{id}", tag = "dashboard",
    params(("id" = String, Path, description = "Job id"), JobPageQuery),
    responses(
        (status = 200, description = "Job page", content_type = "text/html", body = String),
        (status = 404, description = "No such job (a page)", content_type = "text/html", body = String),
    ))]
pub async fn job(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<JobPageQuery>, QueryRejection>,
) -> Response {
    let id = match path {
        Ok(Path(id)) => id,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, "Bad job id", e.body_text()),
    };
    if let Err(e) = validate_job_id(&id) {
        return error_page(StatusCode::BAD_REQUEST, "Bad job id", e.to_string());
    }
    let attempt = match query {
        Ok(Query(q)) => q.attempt,
        Err(e) => return error_page(StatusCode::BAD_REQUEST, "Bad request", e.body_text()),
    };
    let job = match app.store.get_job(&id).await {
        Ok(Some(job)) => job,
        Ok(None) => {
            return error_page(
                StatusCode::NOT_FOUND,
                "Job not found",
                format!("There is no job {id}."),
            );
        }
        Err(e) => {
            return error_page(
                StatusCode::SERVICE_UNAVAILABLE,
                "Unavailable",
                e.to_string(),
            );
        }
    };
    let now = now_ms();
    let queue_wait = job
        .started_at
        .or(job.assigned_at)
        .map(|t| fmt_duration(t - job.created_at))
        .unwrap_or_else(|| "—".into());
    let pinned = attempt.is_some_and(|a| a != job.attempt);
    let page = JobPage {
        nav: "jobs",
        row: JobRow::of(&job, now),
        command: shell_words(&job.spec.command),
        moments: moments(&job),
        queue_wait,
        run_time: run_time(&job, now)
            .map(fmt_duration)
            .unwrap_or_else(|| "—".into()),
        attempts: (1..=job.attempt).collect(),
        shown_attempt: attempt.unwrap_or(job.attempt),
        pinned,
        terminal: job.state.is_terminal(),
        timeout: job
            .spec
            .timeout_ms
            .map(|t| fmt_duration(t as i64))
            .unwrap_or_else(|| "none".into()),
        kill_grace: fmt_duration(job.spec.kill_grace_ms() as i64),
        job_json: inline_json(&job),
        job,
    };
    html(StatusCode::OK, &page)
}

#[derive(Template)]
#[template(path = "workers.html")]
struct WorkersPage {
    nav: &'static str,
    rows: Vec<WorkerRow>,
}

/// Workers: state, labels, slots in use, running jobs, last heartbeat; live.
#[utoipa::path(get, path = "/ui/workers", tag = "dashboard",
    responses((status = 200, description = "Workers page", content_type = "text/html", body = String)))]
pub async fn workers(State(app): State<AppState>) -> Response {
    match worker_list(&app).await {
        Ok(list) => html(
            StatusCode::OK,
            &WorkersPage {
                nav: "workers",
                rows: list.iter().map(WorkerRow::of).collect(),
            },
        ),
        Err(e) => error_page(e.status, "Unavailable", e.body.message),
    }
}

/// The dashboard's stylesheet.
#[utoipa::path(get, path = "/ui/static/app.css", tag = "dashboard",
    responses((status = 200, description = "CSS", content_type = "text/css", body = String)))]
pub async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", STYLESHEET)
}

/// The dashboard's script.
#[utoipa::path(get, path = "/ui/static/app.js", tag = "dashboard",
    responses((status = 200, description = "JavaScript", content_type = "text/javascript", body = String)))]
pub async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode("a b&c=d/é"), "a%20b%26c%3Dd%2F%C3%A9");
        assert_eq!(encode("ok-1_2.~"), "ok-1_2.~");
    }
}
