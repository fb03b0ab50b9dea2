//! Job and worker endpoints: submit, get, list (filters, cursor paging),
//! cancel, workers.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use hodei_core::api::{JobList, SubmitRequest, SubmitResponse};
use hodei_core::engine::{Input, Reply, WorkerInfo};
use hodei_core::spec::{limits, validate_job_id, validate_label, validate_worker_id};
use hodei_core::{Job, JobState};
use serde::Deserialize;
use utoipa::IntoParams;

use super::schema::{
    ErrorBodySchema, JobListSchema, JobSchema, SubmitRequestSchema, SubmitResponseSchema,
    WorkerInfoSchema,
};
use super::{ApiError, AppState};
use crate::auth::api::check_cancel;
use crate::auth::{Auth, Principal};
use crate::store::JobFilter;

/// Default and largest page of `GET /api/v1/jobs`.
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// Validates a job id taken from the path.
pub(super) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path?;
    validate_job_id(&id).map_err(|e| ApiError::invalid(&e.field, e.to_string()))?;
    Ok(id)
}

/// Submit a job (the same spec as `hodei run`). Idempotent on `id`.
#[utoipa::path(
    post,
    path = "/api/v1/jobs",
    tag = "jobs",
    request_body = SubmitRequestSchema,
    responses(
        (status = 201, description = "Job created", body = SubmitResponseSchema),
        (status = 200, description = "An identical job with this id existed", body = SubmitResponseSchema),
        (status = 400, description = "Malformed JSON, unknown field or invalid spec", body = ErrorBodySchema),
        (status = 409, description = "The id exists with another spec", body = ErrorBodySchema),
        (status = 413, description = "Body over 4 MiB", body = ErrorBodySchema),
        (status = 415, description = "Not `application/json`", body = ErrorBodySchema),
        (status = 503, description = "The orchestrator is stopping", body = ErrorBodySchema),
    )
)]
pub async fn submit(
    State(app): State<AppState>,
    who: Option<Extension<Principal>>,
    secrets: Option<Extension<crate::secrets::Secrets>>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let Json(request) = body?;
    let (id, spec) = request.into_parts();
    if !spec.secrets.is_empty() {
        let secrets = super::secrets::secrets_of(secrets)?;
        secrets.check_known(&spec.secrets).await?;
    }
    let fresh = id.is_none();
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    // The caller's token (when auth is on) is recorded on a new job, in the
    // commit that creates it.
    let submitter = who.map(|Extension(who)| who.id);
    let reply = app
        .hub
        .request(|req| Input::Submit {
            req,
            id,
            spec,
            submitter,
            fresh,
            existing: None,
        })
        .await?;
    match reply {
        Reply::Submitted { job, created } => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok((status, Json(SubmitResponse { job: *job, created })))
        }
        other => Err(ApiError::from_reply(other)),
    }
}

/// One job.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job", body = JobSchema),
        (status = 400, description = "Invalid job id", body = ErrorBodySchema),
        (status = 404, description = "No such job", body = ErrorBodySchema),
    )
)]
pub async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(path)?;
    match app.store.get_job(&id).await? {
        Some(job) => Ok(Json(job)),
        None => Err(ApiError::not_found(&id)),
    }
}

/// Filters and paging of the job list. Filters combine with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only jobs in this state (queued, assigned, running, succeeded,
    /// failed, cancelled, timed_out, lost).
    pub state: Option<String>,
    /// Only jobs that require this label.
    pub label: Option<String>,
    /// Only jobs whose current (or last) attempt was on this worker.
    pub worker: Option<String>,
    /// Only jobs whose name starts with this (case-sensitive).
    pub name_prefix: Option<String>,
    /// Page size, 1 to 1000 (default 100).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Blank query values mean "no filter" (an empty form field).
fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

impl ListQuery {
    /// The store filter for this query (asking one job more than the page,
    /// to know whether another page follows), or what is wrong with it.
    pub fn filter(self) -> Result<JobFilter, ApiError> {
        let state = match non_empty(self.state) {
            None => None,
            Some(s) => Some(JobState::parse(&s).ok_or_else(|| {
                ApiError::invalid(
                    "state",
                    format!(
                        "unknown state {s:?}; one of {}",
                        JobState::ALL.map(|s| s.as_str()).join(", ")
                    ),
                )
            })?),
        };
        let label = non_empty(self.label);
        if let Some(l) = &label {
            validate_label(l).map_err(|m| ApiError::invalid("label", m))?;
        }
        let worker = non_empty(self.worker);
        if let Some(w) = &worker {
            validate_worker_id(w).map_err(|e| ApiError::invalid("worker", e.message))?;
        }
        let name_prefix = non_empty(self.name_prefix);
        if let Some(p) = &name_prefix
            && (p.len() > limits::MAX_NAME_LEN || p.contains('\0'))
        {
            return Err(ApiError::invalid(
                "name_prefix",
                format!("must be at most {} bytes without NUL", limits::MAX_NAME_LEN),
            ));
        }
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let before_seq = match non_empty(self.cursor) {
            None => None,
            Some(c) => Some(c.parse::<u64>().map_err(|_| {
                ApiError::invalid(
                    "cursor",
                    format!("{c:?} is not a cursor from a previous page"),
                )
            })?),
        };
        Ok(JobFilter {
            state,
            label,
            worker,
            name_prefix,
            before_seq,
            limit: limit + 1,
        })
    }
}

/// Reads one page; `filter.limit` is the page size plus one.
pub(crate) async fn list_page(app: &AppState, filter: &JobFilter) -> Result<JobList, ApiError> {
    let page = filter.limit.saturating_sub(1) as usize;
    let mut jobs = app.store.list_jobs(filter).await?;
    let more = jobs.len() > page;
    jobs.truncate(page);
    let next_cursor = more
        .then(|| jobs.last().map(|j| j.seq.to_string()))
        .flatten();
    Ok(JobList { jobs, next_cursor })
}

/// Jobs, newest first, filtered, one page at a time.
#[utoipa::path(
    get,
    path = "/api/v1/jobs",
    tag = "jobs",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs; `next_cursor` is absent on the last page", body = JobListSchema),
        (status = 400, description = "Unknown parameter or invalid filter", body = ErrorBodySchema),
    )
)]
pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query?;
    let filter = q.filter()?;
    Ok(Json(list_page(&app, &filter).await?))
}

/// Cancel a job: a queued job at once; an assigned or running one is killed
/// by its agent (the job ends `cancelled` when the agent reports).
/// Cancelling a finished job changes nothing.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/{id}/cancel",
    tag = "jobs",
    params(("id" = String, Path, description = "Job id")),
    responses(
        (status = 200, description = "The job after the request", body = JobSchema),
        (status = 400, description = "Invalid job id", body = ErrorBodySchema),
        (status = 403, description = "A `submit` token cancelling another token's job", body = ErrorBodySchema),
        (status = 404, description = "No such job", body = ErrorBodySchema),
        (status = 503, description = "The orchestrator is stopping", body = ErrorBodySchema),
    )
)]
pub async fn cancel(
    State(app): State<AppState>,
    auth: Option<Extension<Auth>>,
    who: Option<Extension<Principal>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(path)?;
    check_cancel(auth.as_ref(), who.as_ref(), app.store.as_ref(), &id).await?;
    let reply = app
        .hub
        .request(|req| Input::Cancel {
            req,
            id,
            reason: "cancelled by user".into(),
            existing: None,
        })
        .await?;
    match reply {
        Reply::Cancelled { job } => Ok(Json(*job)),
        other => Err(ApiError::from_reply(other)),
    }
}

/// The workers: labels, slots, running jobs, state, last heartbeat.
pub(crate) async fn worker_list(app: &AppState) -> Result<Vec<WorkerInfo>, ApiError> {
    match app.hub.request(|req| Input::ListWorkers { req }).await? {
        Reply::Workers(list) => Ok(list),
        other => Err(ApiError::from_reply(other)),
    }
}

/// Every worker that ever registered, with its labels, slots, running jobs
/// (slots in use), state and last heartbeat.
#[utoipa::path(
    get,
    path = "/api/v1/workers",
    tag = "workers",
    responses(
        (status = 200, description = "Workers by id", body = Vec<WorkerInfoSchema>),
        (status = 503, description = "The orchestrator is stopping", body = ErrorBodySchema),
    )
)]
pub async fn workers(State(app): State<AppState>) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    Ok(Json(worker_list(&app).await?))
}
