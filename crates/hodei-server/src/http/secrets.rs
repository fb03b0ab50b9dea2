//! `/api/v1/secrets`: set, list (names and times only) and delete secrets.
//! Values go in, never out. Admin only (see `hodei_core::auth`).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path};
use axum::http::{Method, StatusCode};
use axum::routing::{delete, get, put};
use hodei_core::api::{SecretInfo, SecretList, SetSecretRequest};
use hodei_core::mask::validate_secret_name;
use serde::Serialize;
use utoipa::ToSchema;

use super::schema::ErrorBodySchema;
use super::{ApiError, Route};
use crate::reactor::now_ms;
use crate::secrets::{Secrets, SecretsError};

/// The routes of this file, for [`super::routes`].
pub(super) fn routes() -> Vec<Route> {
    vec![
        Route {
            method: Method::GET,
            path: "/api/v1/secrets",
            handler: get(list),
        },
        Route {
            method: Method::PUT,
            path: "/api/v1/secrets/{name}",
            handler: put(set),
        },
        Route {
            method: Method::DELETE,
            path: "/api/v1/secrets/{name}",
            handler: delete(remove),
        },
    ]
}

/// `PUT /api/v1/secrets/{name}`.
#[derive(Serialize, ToSchema)]
#[schema(as = SetSecretRequest)]
#[allow(dead_code)]
pub struct SetSecretRequestSchema {
    /// 4 bytes to 32 KiB of text without NUL. Never returned.
    value: String,
}

/// A stored secret (never its value).
#[derive(Serialize, ToSchema)]
#[schema(as = SecretInfo)]
#[allow(dead_code)]
pub struct SecretInfoSchema {
    name: String,
    /// Unix ms.
    created_at: i64,
    /// Unix ms.
    updated_at: i64,
}

/// `GET /api/v1/secrets`.
#[derive(Serialize, ToSchema)]
#[schema(as = SecretList)]
#[allow(dead_code)]
pub struct SecretListSchema {
    secrets: Vec<SecretInfoSchema>,
}

impl From<SecretsError> for ApiError {
    fn from(e: SecretsError) -> ApiError {
        match e {
            SecretsError::Invalid { field, .. } => ApiError::invalid(field, e.to_string()),
            SecretsError::Store(e) => e.into(),
            other => {
                tracing::error!(error = %other, "secrets failure");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    other.to_string(),
                )
            }
        }
    }
}

pub(super) fn secrets_of(secrets: Option<Extension<Secrets>>) -> Result<Secrets, ApiError> {
    secrets.map(|Extension(s)| s).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this orchestrator keeps no secrets",
        )
    })
}

fn name_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path?;
    validate_secret_name(&name).map_err(|m| ApiError::invalid("name", m))?;
    Ok(name)
}

/// Set a secret (create or replace). The value is encrypted at rest and
/// reaches only the agents that run jobs naming it.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name: also the job's environment variable")),
    request_body = SetSecretRequestSchema,
    responses(
        (status = 201, description = "Created", body = SecretInfoSchema),
        (status = 200, description = "Replaced", body = SecretInfoSchema),
        (status = 400, description = "Bad name or value (the message never shows the value)", body = ErrorBodySchema),
        (status = 401, description = "No valid token", body = ErrorBodySchema),
        (status = 403, description = "Not an admin token", body = ErrorBodySchema),
        (status = 413, description = "Body over the server's limit", body = ErrorBodySchema),
        (status = 415, description = "Not application/json", body = ErrorBodySchema),
    )
)]
pub async fn set(
    secrets: Option<Extension<Secrets>>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<SetSecretRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<SecretInfo>), ApiError> {
    let secrets = secrets_of(secrets)?;
    let name = name_of(path)?;
    let Json(request) = body?;
    let now = now_ms();
    let created = secrets.put(&name, &request.value, now).await?;
    tracing::info!(secret = %name, created, "secret set");
    let info = secrets
        .list()
        .await?
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or(SecretInfo {
            name,
            created_at: now,
            updated_at: now,
        });
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(info)))
}

/// Every secret's name and times, by name (never values).
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses(
        (status = 200, description = "The secrets", body = SecretListSchema),
        (status = 403, description = "Not an admin token", body = ErrorBodySchema),
    )
)]
pub async fn list(secrets: Option<Extension<Secrets>>) -> Result<Json<SecretList>, ApiError> {
    let secrets = secrets_of(secrets)?.list().await?;
    Ok(Json(SecretList { secrets }))
}

/// Delete a secret. Queued jobs that name it fail when they are dispatched.
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "Secret name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such secret", body = ErrorBodySchema),
        (status = 403, description = "Not an admin token", body = ErrorBodySchema),
    )
)]
pub async fn remove(
    secrets: Option<Extension<Secrets>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let secrets = secrets_of(secrets)?;
    let name = name_of(path)?;
    if secrets.delete(&name).await? {
        tracing::info!(secret = %name, "secret deleted");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("secret {name} not found"),
        ))
    }
}
