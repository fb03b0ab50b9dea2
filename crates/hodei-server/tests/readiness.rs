//! `/readyz` against the real router: ready with a working store and
//! reactor; 503 with a JSON error naming what failed when the store stops
//! answering or the reactor is gone.

mod probe;

use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::http::{Request, StatusCode};

async fn readyz(app: &axum::Router) -> (StatusCode, String) {
    let req = Request::get("/readyz")
        .body(Body::empty())
        .expect("request");
    let (status, body) = probe::call(app, req).await;
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readiness_follows_the_store_and_the_reactor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, app, task) = probe::serve(dir.path()).await;
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ready".to_string()));

    store.broken.store(true, Ordering::Relaxed);
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let err: serde_json::Value = serde_json::from_str(&body).expect("JSON error");
    assert_eq!(err["code"], "unavailable");
    assert!(
        err["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("store:")),
        "{err}"
    );

    store.broken.store(false, Ordering::Relaxed);
    task.abort();
    let _ = task.await;
    let (status, body) = readyz(&app).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("reactor:"), "{body}");
    assert!(!body.contains("store:"), "{body}");
}
