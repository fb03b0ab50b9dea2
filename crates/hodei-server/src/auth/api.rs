//! `/api/v1/tokens`: create, list and revoke API and join tokens (admin).

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Extension, Path};
use axum::http::StatusCode;
use hodei_core::auth::{
    CreateTokenRequest, CreatedToken, MAX_TOKEN_NAME, Role, TokenInfo, parse_ttl,
};
use serde::Serialize;
use utoipa::ToSchema;

use super::{Auth, AuthError, Principal};
use crate::http::ApiError;
use crate::reactor::now_ms;

/// What a token may do.
#[derive(Serialize, ToSchema)]
#[schema(as = Role)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum RoleSchema {
    Admin,
    Submit,
    Read,
    Agent,
}

/// A token (never its secret).
#[derive(Serialize, ToSchema)]
#[schema(as = TokenInfo)]
#[allow(dead_code)]
pub struct TokenInfoSchema {
    id: String,
    name: String,
    role: RoleSchema,
    /// Unix ms.
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
}

/// A new token: its record and, this once, its value.
#[derive(Serialize, ToSchema)]
#[schema(as = CreatedToken)]
#[allow(dead_code)]
pub struct CreatedTokenSchema {
    id: String,
    name: String,
    role: RoleSchema,
    created_at: i64,
    expires_at: Option<i64>,
    revoked_at: Option<i64>,
    /// `hodei_<id>_<secret>`: shown only in this answer.
    token: String,
}

/// `POST /api/v1/tokens`.
#[derive(Serialize, ToSchema)]
#[schema(as = CreateTokenRequest)]
#[allow(dead_code)]
pub struct CreateTokenRequestSchema {
    role: RoleSchema,
    name: Option<String>,
    /// Lifetime: `30d`, `12h`, `90m`, `45s`. None: no expiry.
    expires_in: Option<String>,
}

fn auth_of(auth: Option<Extension<Auth>>) -> Result<Auth, ApiError> {
    auth.map(|Extension(a)| a).ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "authentication is not configured",
        )
    })
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> ApiError {
        tracing::error!(error = %e, "token store failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

/// Create a token. The answer is the only time its value is shown.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens",
    request_body = CreateTokenRequestSchema,
    responses(
        (status = 201, description = "Created", body = CreatedTokenSchema),
        (status = 400, description = "Unknown role, bad lifetime or name"),
        (status = 415, description = "Not `application/json`"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Not an admin token"),
    ))]
pub async fn create(
    auth: Option<Extension<Auth>>,
    who: Option<Extension<Principal>>,
    body: Result<Json<CreateTokenRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    let auth = auth_of(auth)?;
    let Json(req) = body?;
    let role: Role = req.role.ok_or_else(|| {
        ApiError::invalid(
            "role",
            "invalid role: missing; use admin, submit, read or agent",
        )
    })?;
    let name = req.name.unwrap_or_else(|| format!("{role}-token"));
    if name.is_empty() || name.len() > MAX_TOKEN_NAME || name.chars().any(|c| c.is_control()) {
        return Err(ApiError::invalid(
            "name",
            format!("invalid name: 1 to {MAX_TOKEN_NAME} characters, no control characters"),
        ));
    }
    let expires_at = match req.expires_in.as_deref() {
        None => None,
        Some(ttl) => Some(
            now_ms()
                + parse_ttl(ttl).map_err(|m| {
                    ApiError::invalid("expires_in", format!("invalid expires_in: {m}"))
                })?,
        ),
    };
    let (info, token) = auth.create(role, &name, expires_at).await?;
    if let Some(Extension(who)) = who {
        tracing::info!(by = %who.id, token = %info.id, %role, "token created through the API");
    }
    Ok((StatusCode::CREATED, Json(CreatedToken { info, token })))
}

/// Every token, revoked and expired ones included (never secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses(
        (status = 200, description = "Tokens, oldest first", body = [TokenInfoSchema]),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Not an admin token"),
    ))]
pub async fn list(auth: Option<Extension<Auth>>) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(auth_of(auth)?.list()))
}

/// Revoke a token: it is refused from now on, dashboard sessions included.
#[utoipa::path(post, path = "/api/v1/tokens/{id}/revoke", tag = "tokens",
    params(("id" = String, Path, description = "Token id")),
    responses(
        (status = 200, description = "Revoked (or already was)", body = TokenInfoSchema),
        (status = 404, description = "No such token"),
        (status = 401, description = "No or bad token"),
        (status = 403, description = "Not an admin token"),
    ))]
pub async fn revoke(
    auth: Option<Extension<Auth>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<TokenInfo>, ApiError> {
    let auth = auth_of(auth)?;
    let Path(id) = id?;
    match auth.revoke(&id).await? {
        Some(info) => Ok(Json(info)),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("token {id} not found"),
        )),
    }
}

/// A `submit` token cancels only the jobs it submitted (403 otherwise; an
/// unknown job is left to the usual 404).
pub(crate) async fn check_cancel(
    auth: Option<&Extension<Auth>>,
    who: Option<&Extension<Principal>>,
    store: &dyn crate::store::Store,
    job_id: &str,
) -> Result<(), ApiError> {
    let (Some(_), Some(Extension(who))) = (auth, who) else {
        return Ok(());
    };
    if super::may_cancel(store, who, job_id).await? {
        return Ok(());
    }
    tracing::warn!(token = %who.id, job = %job_id, "cancel refused: not the submitter");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "permission_denied",
        format!(
            "job {job_id} was submitted by another token; a {} token cancels only its own jobs",
            who.role
        ),
    ))
}
