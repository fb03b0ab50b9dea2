//! `GET /api/v1/events`: job and worker changes as Server-Sent Events, for
//! live pages.
//!
//! The stream subscribes to the reactor's notices (sent after each commit),
//! takes every notice waiting as one burst, and sends the *current* record
//! of each job named in it once: a burst of changes to one job costs one
//! event and one store read. Workers are sent at most every 250 ms, each
//! changed one once. Intermediate states may be skipped; the last event of
//! a job or worker is always its latest state. A client too slow to keep up
//! gets `lagged` and should reload what it shows.

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use hodei_core::api::events;
use hodei_core::engine::Notice;
use hodei_core::spec::validate_job_id;
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::IntoParams;

use super::jobs::worker_list;
use super::schema::ErrorBodySchema;
use super::{ApiError, AppState};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only changes of this job (and no worker events).
    job: Option<String>,
}

/// Job and worker changes, live (Server-Sent Events).
///
/// Events: `ready` once subscribed; `job` (the Job as stored, JSON) when a
/// job changes state; `worker` (WorkerInfo JSON) when a worker attaches,
/// detaches, drains, goes offline or its running jobs change; `lagged`
/// (number of missed changes) when the client fell behind.
#[utoipa::path(
    get,
    path = "/api/v1/events",
    tag = "events",
    params(EventsQuery),
    responses(
        (status = 200, description = "`text/event-stream` of `ready`, `job` (Job JSON), `worker` (WorkerInfo JSON) and `lagged` events", content_type = "text/event-stream", body = String),
        (status = 400, description = "Unknown parameter or invalid job id", body = ErrorBodySchema),
    )
)]
pub async fn events(
    State(app): State<AppState>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query?;
    let job = q.job.filter(|j| !j.is_empty());
    if let Some(id) = &job {
        validate_job_id(id).map_err(|e| ApiError::invalid(&e.field, e.to_string()))?;
    }
    let pump = Pump {
        notices: app.hub.subscribe(),
        app,
        job,
    };
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(pump.run(tx));
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

type Tx = mpsc::Sender<Result<Event, Infallible>>;

/// Worker events are sent at most this often per stream.
const WORKER_EVERY: Duration = Duration::from_millis(250);

struct Pump {
    app: AppState,
    notices: broadcast::Receiver<Notice>,
    job: Option<String>,
}

/// What one burst of notices named.
#[derive(Default)]
struct Burst {
    jobs: BTreeSet<String>,
    workers: BTreeSet<String>,
    lagged: u64,
}

/// Why a stream stops.
enum Stop {
    /// The client went away.
    Gone,
    /// A read failed; tell the client.
    Failed(String),
}

impl Pump {
    async fn run(mut self, tx: Tx) {
        let ready = Event::default().event(events::READY).data("{}");
        if tx.send(Ok(ready)).await.is_err() {
            return;
        }
        // Worker changes are sent at most every WORKER_EVERY: each needs a
        // round trip to the reactor, and a busy cluster changes constantly.
        let mut workers = BTreeSet::new();
        let mut workers_due: Option<Instant> = None;
        loop {
            let due = async {
                match workers_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                notice = self.notices.recv() => notice,
                () = due => {
                    workers_due = None;
                    if let Err(stop) = self.send_workers(std::mem::take(&mut workers), &tx).await {
                        return stopped(stop, &tx).await;
                    }
                    continue;
                }
                () = tx.closed() => return,
            };
            let mut burst = Burst::default();
            match first {
                Ok(notice) => self.note(notice, &mut burst),
                Err(RecvError::Lagged(n)) => burst.lagged += n,
                Err(RecvError::Closed) => return,
            }
            loop {
                match self.notices.try_recv() {
                    Ok(notice) => self.note(notice, &mut burst),
                    Err(TryRecvError::Lagged(n)) => burst.lagged += n,
                    Err(_) => break,
                }
            }
            if let Err(stop) = self.send_jobs(&mut burst, &tx).await {
                return stopped(stop, &tx).await;
            }
            workers.append(&mut burst.workers);
            if !workers.is_empty() && workers_due.is_none() {
                workers_due = Some(Instant::now() + WORKER_EVERY);
            }
        }
    }

    fn note(&self, notice: Notice, burst: &mut Burst) {
        match notice {
            Notice::JobChanged { job_id, .. } if self.job.as_ref().is_none_or(|j| *j == job_id) => {
                burst.jobs.insert(job_id);
            }
            Notice::WorkerChanged { worker_id } if self.job.is_none() => {
                burst.workers.insert(worker_id);
            }
            _ => {}
        }
    }

    /// Sends `lagged` and the jobs of a burst; adds their workers to it
    /// (a job changing state changes its worker's running jobs).
    async fn send_jobs(&self, burst: &mut Burst, tx: &Tx) -> Result<(), Stop> {
        if burst.lagged > 0 {
            let ev = Event::default()
                .event(events::LAGGED)
                .data(burst.lagged.to_string());
            tx.send(Ok(ev)).await.map_err(|_| Stop::Gone)?;
        }
        if burst.jobs.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = std::mem::take(&mut burst.jobs).into_iter().collect();
        let jobs = self
            .app
            .store
            .get_jobs(&ids)
            .await
            .map_err(|e| Stop::Failed(e.to_string()))?;
        for job in jobs {
            if self.job.is_none()
                && let Some(w) = &job.worker
            {
                burst.workers.insert(w.clone());
            }
            let data = serde_json::to_string(&job).map_err(|e| Stop::Failed(e.to_string()))?;
            let ev = Event::default().event(events::JOB).data(data);
            tx.send(Ok(ev)).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }

    async fn send_workers(&self, ids: BTreeSet<String>, tx: &Tx) -> Result<(), Stop> {
        let workers = worker_list(&self.app)
            .await
            .map_err(|e| Stop::Failed(e.body.message))?;
        for worker in workers.iter().filter(|w| ids.contains(&w.id)) {
            let data = serde_json::to_string(worker).map_err(|e| Stop::Failed(e.to_string()))?;
            let ev = Event::default().event(events::WORKER).data(data);
            tx.send(Ok(ev)).await.map_err(|_| Stop::Gone)?;
        }
        Ok(())
    }
}

async fn stopped(stop: Stop, tx: &Tx) {
    if let Stop::Failed(message) = stop {
        let _ = tx
            .send(Ok(Event::default().event("error").data(message)))
            .await;
    }
}
