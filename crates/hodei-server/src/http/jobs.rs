//! Job and worker endpoints: submit, get, list, cancel, workers.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use hodei_core::api::{JobList, SubmitRequest, SubmitResponse};
use hodei_core::engine::{Input, Reply, WorkerInfo};
use hodei_core::spec::validate_job_id;
use hodei_core::{Job, JobState};
use serde::Deserialize;

use super::{ApiError, AppState};
use crate::store::JobFilter;

/// Validates a job id taken from the path.
pub(super) fn job_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path?;
    validate_job_id(&id).map_err(|e| ApiError::invalid(&e.field, e.to_string()))?;
    Ok(id)
}

pub async fn submit(
    State(app): State<AppState>,
    body: Result<Json<SubmitRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SubmitResponse>), ApiError> {
    let Json(request) = body?;
    let (id, spec) = request.into_parts();
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let reply = app
        .hub
        .request(|req| Input::Submit {
            req,
            id,
            spec,
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

pub async fn list(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<JobList>, ApiError> {
    let Query(q) = query?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(JobState::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "state",
                format!(
                    "unknown state {s:?}; one of {}",
                    JobState::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid("limit", "must be between 1 and 1000"));
    }
    let before_seq = match q.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<u64>().map_err(|_| {
            ApiError::invalid(
                "cursor",
                format!("{c:?} is not a cursor from a previous page"),
            )
        })?),
    };
    let jobs = app
        .store
        .list_jobs(&JobFilter {
            state,
            before_seq,
            limit,
        })
        .await?;
    let next_cursor = (jobs.len() as u32 == limit)
        .then(|| jobs.last().map(|j| j.seq.to_string()))
        .flatten();
    Ok(Json(JobList { jobs, next_cursor }))
}

pub async fn cancel(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Job>, ApiError> {
    let id = job_id(path)?;
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

pub async fn workers(State(app): State<AppState>) -> Result<Json<Vec<WorkerInfo>>, ApiError> {
    match app.hub.request(|req| Input::ListWorkers { req }).await? {
        Reply::Workers(list) => Ok(Json(list)),
        other => Err(ApiError::from_reply(other)),
    }
}
