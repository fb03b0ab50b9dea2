//! The HTTP API (`/api/v1`), served on the same port as gRPC.

mod error;
mod jobs;
mod logs;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::reactor::Hub;
use crate::store::Store;

pub use error::ApiError;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
}

/// Largest request body accepted (a job spec with a big environment).
const MAX_BODY: usize = 4 * 1024 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/v1/jobs", post(jobs::submit).get(jobs::list))
        .route("/api/v1/jobs/{id}", get(jobs::get))
        .route("/api/v1/jobs/{id}/cancel", post(jobs::cancel))
        .route("/api/v1/jobs/{id}/logs", get(logs::download))
        .route("/api/v1/jobs/{id}/logs/follow", get(logs::follow))
        .route("/api/v1/workers", get(jobs::workers))
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}
