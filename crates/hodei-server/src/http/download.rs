//! The full log download: one attempt's stdout, stderr, or both merged by
//! the time the agent read each chunk.
//!
//! Each stream is read from the store page by page, in offset order; the
//! merge always sends the waiting chunk with the earlier timestamp (stdout
//! on a tie), so the bytes of each stream stay in order however the agent's
//! clock behaves, and the download needs memory for one page per stream.

use std::collections::VecDeque;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hodei_core::LogStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::jobs::job_id;
use super::logs::{LogParams, PAGE_BYTES, parse_stream};
use super::schema::ErrorBodySchema;
use super::{ApiError, AppState};
use crate::store::{LogChunk, LogQuery, Store, StoreError};

/// One stream being read: what was read and not sent yet, and where the
/// next page starts.
struct Cursor {
    query: LogQuery,
    waiting: VecDeque<LogChunk>,
    done: bool,
}

impl Cursor {
    fn new(job_id: &str, attempt: u32, stream: LogStream) -> Cursor {
        Cursor {
            query: LogQuery {
                job_id: job_id.to_string(),
                attempt,
                stream: Some(stream),
                from: [0, 0],
                max_bytes: PAGE_BYTES,
            },
            waiting: VecDeque::new(),
            done: false,
        }
    }

    /// Reads the next page if nothing is waiting.
    async fn fill(&mut self, store: &dyn Store) -> Result<(), StoreError> {
        if !self.waiting.is_empty() || self.done {
            return Ok(());
        }
        let chunks = store.read_logs(&self.query).await?;
        self.done = chunks.is_empty();
        for chunk in chunks {
            self.query.from[chunk.stream.index()] = chunk.offset + chunk.data.len() as u64;
            self.waiting.push_back(chunk);
        }
        Ok(())
    }
}

/// Sends the chunks of `cursors` merged by timestamp until all are read.
async fn merge(
    store: Arc<dyn Store>,
    mut cursors: Vec<Cursor>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    loop {
        for cursor in &mut cursors {
            if let Err(e) = cursor.fill(store.as_ref()).await {
                let _ = tx.send(Err(std::io::Error::other(e.to_string()))).await;
                return;
            }
        }
        let next = cursors
            .iter_mut()
            .filter(|c| !c.waiting.is_empty())
            .min_by_key(|c| c.waiting.front().map(|chunk| chunk.timestamp_ms));
        let Some(chunk) = next.and_then(|c| c.waiting.pop_front()) else {
            return;
        };
        if tx.send(Ok(chunk.data)).await.is_err() {
            return;
        }
    }
}

/// Download one attempt's whole log as raw bytes.
///
/// `stream=both` (the default) interleaves stdout and stderr by the time
/// the agent read each piece.
#[utoipa::path(
    get,
    path = "/api/v1/jobs/{id}/logs",
    tag = "logs",
    params(("id" = String, Path, description = "Job id"), LogParams),
    responses(
        (status = 200, description = "The log bytes (output need not be UTF-8)", content_type = "application/octet-stream", body = String),
        (status = 400, description = "Invalid id or stream, unknown parameter", body = ErrorBodySchema),
        (status = 404, description = "No such job", body = ErrorBodySchema),
    )
)]
pub async fn download(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    params: Result<Query<LogParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = job_id(path)?;
    let Query(p) = params?;
    let stream = parse_stream(p.stream.as_deref())?;
    if p.from.is_some() {
        return Err(ApiError::invalid(
            "from",
            "a download is always the whole log; `from` is for follow",
        ));
    }
    let job = app
        .store
        .get_job(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(&id))?;
    let attempt = p.attempt.unwrap_or(job.attempt);
    let streams = match stream {
        Some(s) => vec![s],
        None => LogStream::BOTH.to_vec(),
    };
    let cursors = streams
        .into_iter()
        .map(|s| Cursor::new(&id, attempt, s))
        .collect();
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(merge(app.store.clone(), cursors, tx));
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(ReceiverStream::new(rx)),
    )
        .into_response())
}
