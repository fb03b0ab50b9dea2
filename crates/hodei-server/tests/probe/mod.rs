//! The SQLite store with probes for tests that drive the reactor: its
//! `ping` can be made to fail, and it counts the reactor's lookups
//! (`get_jobs`). Everything else goes to the real store.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use hodei_core::engine::{Engine, EngineConfig};
use hodei_server::http::{AppState, router};
use hodei_server::reactor;
use tower::ServiceExt as _;

use hodei_core::engine::Writes;
use hodei_core::{Job, JobState, Millis};
use hodei_server::store::{
    FinishedCount, JobFilter, LogChunk, LogQuery, Recovery, SqliteStore, Store, StoreError,
};

pub struct ProbeStore {
    inner: SqliteStore,
    /// `ping` fails while set.
    pub broken: AtomicBool,
    /// `get_jobs` calls so far.
    pub lookups: AtomicUsize,
}

impl ProbeStore {
    pub async fn open(dir: &Path) -> ProbeStore {
        ProbeStore {
            inner: SqliteStore::open(dir).await.expect("open the store"),
            broken: AtomicBool::new(false),
            lookups: AtomicUsize::new(0),
        }
    }
}

/// The real router over a reactor whose store is a [`ProbeStore`] in `dir`.
pub async fn serve(
    dir: &Path,
) -> (
    Arc<ProbeStore>,
    axum::Router,
    tokio::task::JoinHandle<Result<(), StoreError>>,
) {
    let store = Arc::new(ProbeStore::open(dir).await);
    let (hub, task) = reactor::start(Engine::new(EngineConfig::default()), store.clone());
    let app = router(AppState {
        hub,
        store: store.clone(),
        limits: Default::default(),
    });
    (store, app, task)
}

/// Sends `req` through `app`: the status and the body.
pub async fn call(app: &axum::Router, req: Request<Body>) -> (StatusCode, Vec<u8>) {
    let resp = app.clone().oneshot(req).await.expect("infallible");
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .expect("body");
    (status, body.to_vec())
}

#[async_trait::async_trait]
impl Store for ProbeStore {
    async fn commit(&self, writes: &Writes) -> Result<(), StoreError> {
        self.inner.commit(writes).await
    }
    async fn get_job(&self, id: &str) -> Result<Option<Job>, StoreError> {
        self.inner.get_job(id).await
    }
    async fn get_jobs(&self, ids: &[String]) -> Result<Vec<Job>, StoreError> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
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
