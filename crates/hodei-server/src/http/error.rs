//! API errors: every failure is JSON `{code, message, field?}` with the right
//! HTTP status, made in this one place.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use hodei_core::api::ErrorBody;
use hodei_core::engine::{EngineError, Reply};

use crate::reactor::HubError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub body: ErrorBody,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            body: ErrorBody {
                code: code.to_string(),
                message: message.into(),
                field: None,
            },
        }
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> ApiError {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", message);
        e.body.field = Some(field.to_string());
        e
    }

    pub fn not_found(job_id: &str) -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {job_id} not found"),
        )
    }

    /// The error carried by an engine reply that was not the expected one.
    pub fn from_reply(reply: Reply) -> ApiError {
        match reply {
            Reply::Error(e) => e.into(),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("unexpected reply from the engine: {other:?}"),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::Invalid(i) => ApiError::invalid(&i.field.clone(), i.to_string()),
            EngineError::NotFound(id) => ApiError::not_found(&id),
            EngineError::AlreadyExists(_) => {
                ApiError::new(StatusCode::CONFLICT, "already_exists", e.to_string())
            }
            EngineError::FailedPrecondition(m) => {
                ApiError::new(StatusCode::CONFLICT, "failed_precondition", m)
            }
            EngineError::PermissionDenied(m) => {
                ApiError::new(StatusCode::FORBIDDEN, "permission_denied", m)
            }
        }
    }
}

impl From<HubError> for ApiError {
    fn from(e: HubError) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store read failed");
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        let (status, code) = match &r {
            // Well-formed JSON of the wrong shape is a bad request like any
            // other (axum would say 422).
            JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
                (StatusCode::BAD_REQUEST, "invalid_argument")
            }
            JsonRejection::MissingJsonContentType(_) => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large")
            }
            other => (other.status(), "invalid_argument"),
        };
        let mut err = ApiError::new(status, code, r.body_text());
        err.body.field = unknown_field(&err.body.message);
        err
    }
}

/// The field serde names in "unknown field `x`" or "missing field `x`".
fn unknown_field(message: &str) -> Option<String> {
    ["unknown field `", "missing field `"]
        .iter()
        .find_map(|prefix| {
            let rest = &message[message.find(prefix)? + prefix.len()..];
            Some(rest[..rest.find('`')?].to_string())
        })
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", r.body_text())
    }
}

impl From<PathRejection> for ApiError {
    fn from(r: PathRejection) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_argument", r.body_text())
    }
}
