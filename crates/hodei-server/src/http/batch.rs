//! `POST /api/v1/jobs/batch`: many submissions in one request, checked item
//! by item before anything is submitted, then applied by the reactor in one
//! batch and committed in one transaction.

use axum::Json;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use hodei_core::api::{BatchSubmitRequest, BatchSubmitResponse, MAX_BATCH_JOBS};
use hodei_core::engine::{EngineError, Input, Reply};
use hodei_core::spec::validate_job_id;
use serde::Serialize;
use utoipa::ToSchema;

use super::schema::{ErrorBodySchema, SubmitRequestSchema};
use super::{ApiError, AppState};

/// Several job submissions.
#[derive(Serialize, ToSchema)]
#[schema(as = BatchSubmitRequest)]
#[allow(dead_code)] // Only read by the OpenAPI derive.
pub struct BatchSubmitRequestSchema {
    /// 1 to 10,000 submissions, each as for `POST /api/v1/jobs`.
    jobs: Vec<SubmitRequestSchema>,
}

/// The reply to a batch submission, in the order of the request's items.
#[derive(Serialize, ToSchema)]
#[schema(as = BatchSubmitResponse)]
#[allow(dead_code)] // Only read by the OpenAPI derive.
pub struct BatchSubmitResponseSchema {
    /// The job ids (generated where the item had none).
    ids: Vec<String>,
    /// False where an identical job with that id already existed.
    created: Vec<bool>,
}

/// The field of item `index` at fault, e.g. `jobs[3].command`.
fn item_field(index: usize, field: &str) -> String {
    format!("jobs[{index}].{field}")
}

/// Submit up to 10,000 jobs at once, in one transaction. Every item is
/// checked first: one invalid item refuses the whole request (nothing is
/// submitted) with the item's index in the error's `field`. Idempotent per
/// item on `id`; an item whose id exists with another spec answers 409
/// naming it, and the other items are submitted: sending the same batch
/// again is safe.
#[utoipa::path(
    post,
    path = "/api/v1/jobs/batch",
    tag = "jobs",
    request_body = BatchSubmitRequestSchema,
    responses(
        (status = 200, description = "Every job submitted (or already there, identical)", body = BatchSubmitResponseSchema),
        (status = 400, description = "Malformed JSON, no or too many items, or an invalid item (`field` is e.g. `jobs[3].command`)", body = ErrorBodySchema),
        (status = 409, description = "An item's id exists with another spec (`field` is `jobs[i].id`); the other items were submitted", body = ErrorBodySchema),
        (status = 413, description = "Body over 4 MiB", body = ErrorBodySchema),
        (status = 415, description = "Not `application/json`", body = ErrorBodySchema),
        (status = 503, description = "The orchestrator is stopping", body = ErrorBodySchema),
    )
)]
pub async fn submit_batch(
    State(app): State<AppState>,
    who: Option<axum::Extension<crate::auth::Principal>>,
    secrets: Option<axum::Extension<crate::secrets::Secrets>>,
    body: Result<Json<BatchSubmitRequest>, JsonRejection>,
) -> Result<Json<BatchSubmitResponse>, ApiError> {
    let Json(request) = body?;
    let n = request.jobs.len();
    if n == 0 || n > MAX_BATCH_JOBS {
        return Err(ApiError::invalid(
            "jobs",
            format!("must hold 1 to {MAX_BATCH_JOBS} jobs, not {n}"),
        ));
    }
    // The caller's token (when auth is on), recorded on each new job.
    let submitter = who.map(|axum::Extension(who)| who.id);
    let mut ids = Vec::with_capacity(n);
    let mut inputs = Vec::with_capacity(n);
    for (i, item) in request.jobs.into_iter().enumerate() {
        let (id, spec) = item.into_parts();
        let spec = spec.normalized();
        let checked = match &id {
            Some(id) => validate_job_id(id)
                .map_err(|e| ApiError::invalid(&item_field(i, "id"), e.to_string())),
            None => Ok(()),
        };
        checked?;
        spec.validate_with(&app.limits)
            .map_err(|e| ApiError::invalid(&item_field(i, &e.field), e.to_string()))?;
        if !spec.secrets.is_empty() {
            let known = super::secrets::secrets_of(secrets.clone())?;
            known
                .check_known(&spec.secrets)
                .await
                .map_err(|e| match e {
                    crate::secrets::SecretsError::Invalid { .. } => {
                        ApiError::invalid(&item_field(i, "secrets"), e.to_string())
                    }
                    other => other.into(),
                })?;
        }
        let fresh = id.is_none();
        let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        ids.push(id.clone());
        inputs.push(Input::Submit {
            req: app.hub.next_id(),
            id,
            spec,
            submitter: submitter.clone(),
            fresh,
            existing: None,
        });
    }
    let replies = app.hub.request_all(inputs).await?;
    let mut created = Vec::with_capacity(n);
    let mut refused = None;
    for (i, reply) in replies.into_iter().enumerate() {
        match reply {
            Reply::Submitted { created: c, .. } => created.push(c),
            Reply::Error(e) => {
                created.push(false);
                refused.get_or_insert((i, e));
            }
            other => return Err(ApiError::from_reply(other)),
        }
    }
    match refused {
        None => Ok(Json(BatchSubmitResponse { ids, created })),
        Some((i, EngineError::AlreadyExists(id))) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                "already_exists",
                format!(
                    "job {id} exists with another spec; the batch's other items were submitted"
                ),
            );
            e.body.field = Some(item_field(i, "id"));
            Err(e)
        }
        Some((i, other)) => {
            let mut e = ApiError::from(other);
            e.body.field = Some(item_field(i, e.body.field.as_deref().unwrap_or("id")));
            Err(e)
        }
    }
}
