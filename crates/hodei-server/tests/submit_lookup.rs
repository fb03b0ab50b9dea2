//! A submission is looked up in the store only when it may name a stored
//! job: an id the orchestrator made (a new UUIDv7) cannot, so the reactor
//! reads nothing for it; a client's id is looked up (idempotent
//! resubmission), unless the job is live in the engine. Through the real
//! router, reactor and SQLite store; the store (`probe`) counts `get_jobs` calls.

mod probe;

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};

async fn post(app: &axum::Router, path: &str, body: &str) -> (StatusCode, serde_json::Value) {
    let req = Request::post(path)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("request");
    let (status, body) = probe::call(app, req).await;
    (status, serde_json::from_slice(&body).expect("JSON"))
}

#[tokio::test]
async fn only_a_client_chosen_id_is_looked_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, app, task) = probe::serve(dir.path()).await;
    let lookups = || store.lookups.load(Ordering::SeqCst);

    // The server makes the id: nothing to look up.
    let (status, body) = post(&app, "/api/v1/jobs", r#"{"command":["true"]}"#).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let made = body["job"]["id"].as_str().expect("id").to_string();
    let (status, body) = post(
        &app,
        "/api/v1/jobs/batch",
        r#"{"jobs":[{"command":["true"]},{"command":["false"]}]}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(lookups(), 0, "no lookup for ids the server made");

    // A client's id may name a stored job: looked up once...
    let (status, _) = post(&app, "/api/v1/jobs", r#"{"id":"mine","command":["true"]}"#).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(lookups(), 1);
    // ...and not again while the engine holds it; the same spec is the
    // same job.
    let (status, body) = post(&app, "/api/v1/jobs", r#"{"id":"mine","command":["true"]}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["created"], false);
    assert_eq!(lookups(), 1);
    // A client that reuses an id the server made gets that job back.
    let again = format!(r#"{{"id":"{made}","command":["true"]}}"#);
    let (status, body) = post(&app, "/api/v1/jobs", &again).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["job"]["id"], made.as_str());

    task.abort();
    let _ = task.await;
}
