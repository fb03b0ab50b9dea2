//! The web dashboard under `/ui`: server-rendered pages (askama templates in
//! `crates/hodei-server/templates/`) and one stylesheet and one script,
//! embedded in the binary. No external assets: the pages work offline.
//!
//! The pages are complete without JavaScript; the script makes them live
//! through the API: the job-state event stream (`/api/v1/events`), the log
//! follow (`/api/v1/jobs/{id}/logs/follow`) and `/api/v1/stats`.
//!
//! - [`pages`]: the handlers;
//! - [`views`]: what the templates show, formatted.

pub mod pages;
mod views;

use crate::http::Route;

/// The dashboard's routes.
pub fn routes() -> Vec<Route> {
    vec![
        Route::get("/", pages::root),
        Route::get("/ui", pages::overview),
        Route::get("/ui/jobs", pages::jobs),
        Route::get("/ui/jobs/{id}", pages::job),
        Route::get("/ui/workers", pages::workers),
        Route::get("/ui/static/app.css", pages::stylesheet),
        Route::get("/ui/static/app.js", pages::script),
        Route::get("/ui/login", crate::auth::session::login_form),
        Route::post("/ui/login", crate::auth::session::login),
        Route::post("/ui/logout", crate::auth::session::logout),
    ]
}
