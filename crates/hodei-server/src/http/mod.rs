//! The HTTP side of the orchestrator's port: the JSON API (`/api/v1`), the
//! operator endpoints (`/healthz`, `/readyz`, `/metrics`) and the dashboard
//! (`/ui`). gRPC shares the port; `server.rs` routes it by service path.
//!
//! Every HTTP route is one entry of [`routes`]; the router is built from
//! that table, and the OpenAPI document ([`openapi`]) is checked against it
//! by a test, so a route cannot be added without being described.

mod batch;
mod download;
mod error;
mod events;
pub mod jobs;
pub mod logs;
pub mod openapi;
mod ops;
mod schema;
mod secrets;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::{MethodRouter, get, post};

use crate::dashboard;
use crate::reactor::Hub;
use crate::store::Store;

pub use error::ApiError;
pub(crate) use ops::collect_stats;

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub hub: Hub,
    pub store: Arc<dyn Store>,
    /// The input limits (request body size, and what handlers check before
    /// the engine does).
    pub limits: hodei_core::spec::Limits,
}

/// One HTTP route: method, path (axum syntax, which is also OpenAPI's for
/// `{param}`) and handler.
pub struct Route {
    pub method: Method,
    pub path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Route {
    pub fn get<H, T>(path: &'static str, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: Method::GET,
            path,
            handler: get(handler),
        }
    }

    pub fn post<H, T>(path: &'static str, handler: H) -> Route
    where
        H: Handler<T, AppState>,
        T: 'static,
    {
        Route {
            method: Method::POST,
            path,
            handler: post(handler),
        }
    }
}

/// Every HTTP route the server answers (gRPC services excluded).
pub fn routes() -> Vec<Route> {
    let mut routes = vec![
        Route::get("/healthz", ops::healthz),
        Route::get("/readyz", ops::readyz),
        Route::get("/metrics", ops::metrics),
        Route::get("/api/v1/openapi.json", ops::openapi_json),
        Route::post("/api/v1/jobs", jobs::submit),
        Route::post("/api/v1/jobs/batch", batch::submit_batch),
        Route::get("/api/v1/jobs", jobs::list),
        Route::get("/api/v1/jobs/{id}", jobs::get),
        Route::post("/api/v1/jobs/{id}/cancel", jobs::cancel),
        Route::get("/api/v1/jobs/{id}/logs", download::download),
        Route::get("/api/v1/jobs/{id}/logs/follow", logs::follow),
        Route::get("/api/v1/workers", jobs::workers),
        Route::get("/api/v1/stats", ops::stats),
        Route::get("/api/v1/events", events::events),
        Route::post("/api/v1/tokens", crate::auth::api::create),
        Route::get("/api/v1/tokens", crate::auth::api::list),
        Route::post("/api/v1/tokens/{id}/revoke", crate::auth::api::revoke),
    ];
    routes.extend(secrets::routes());
    routes.extend(dashboard::routes());
    routes
}

pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    for route in routes() {
        // Routes of one path with different methods are merged by axum.
        router = router.route(route.path, route.handler);
    }
    router
        .fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint",
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                axum::http::StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not answer that method",
            )
        })
        .layer(DefaultBodyLimit::max(state.limits.max_http_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            state.limits.max_http_body_bytes,
            crate::limits::http_body_limit,
        ))
        .with_state(state)
}
