//! `/readyz` against the real router: ready with a working store and
//! reactor; 503 with a JSON error naming what failed when the store stops
//! answering or the reactor is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hodei_core::engine::{Engine, EngineConfig, Writes};
use hodei_core::{Job, JobState, Millis};
use hodei_server::http::{AppState, router};
use hodei_server::reactor;
use hodei_server::store::{
    FinishedCount, JobFilter, LogChunk, LogQuery, Recovery, SqliteStore, Store, StoreError,
};
use tower::ServiceExt as _;

/// The SQLite store, whose `ping` can be made to fail.
struct Flaky {
    inner: SqliteStore,
    broken: AtomicBool,
}

#[async_trait::async_trait]
impl Store for Flaky {
    async fn commit(&self, writes: &Writes) -> Result<(), StoreError> {
        self.inner.commit(writes).await
    }
    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        self.inner.get_jobs(ids).await
    }
    async fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<Job>, StoreError> {
        self.inner.list_jobs(filter).await
    }
    async fn count_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        self.inner.count_by_state().await
    }
    async fn finished_since(&self, since: Millis) -> Result<Vec<FinishedCount>, StoreError> {
        self.inner.finished_since(since).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        if self.broken.load(Ordering::Relaxed) {
            return Err(StoreError::Database(sqlx::Error::PoolClosed));
        }
        self.inner.ping().await
    }
    async fn read_logs(&self, query: &LogQuery) -> Result<Vec<LogChunk>, StoreError> {
        self.inner.read_logs(query).await
    }
    async fn recover(&self) -> Result<Recovery, StoreError> {
        self.inner.recover().await
    }
}

async fn readyz(app: &axum::Router) -> (StatusCode, String) {
    let req = Request::get("/readyz")
        .body(Body::empty())
        .expect("request");
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test]
async fn readiness_follows_the_store_and_the_reactor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Flaky {
        inner: SqliteStore::open(dir.path()).await.expect("open"),
        broken: AtomicBool::new(false),
    });
    let (hub, task) = reactor::start(Engine::new(EngineConfig::default()), store.clone());
    let app = router(AppState {
        hub,
        store: store.clone(),
        limits: Default::default(),
    });
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
