//! The HWP gRPC service: the four seed RPCs and the agent session (`Attach`).
//! Each handler translates the wire message into an engine input, waits for
//! the reactor's durable reply, and translates it back.

use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hodei_core::engine::{AttemptRef, Input, Reply, SessionId};
use hodei_core::spec::{validate_job_id, validate_worker_id};
use hwp_proto::pb;
use hwp_proto::pb::worker_service_server::WorkerService;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::reactor::{Hub, now_ms};
use crate::store::Store;

/// Largest log entry accepted. Agents send at most 1 MiB at a time.
pub const MAX_LOG_ENTRY: usize = 4 * 1024 * 1024;

/// The raw bytes of a log entry, refused when over [`MAX_LOG_ENTRY`].
fn log_bytes(entry: &mut pb::LogEntry) -> Result<Bytes, Status> {
    let data = if entry.bytes.is_empty() {
        Bytes::from(std::mem::take(&mut entry.data).into_bytes())
    } else {
        std::mem::take(&mut entry.bytes)
    };
    if data.len() > MAX_LOG_ENTRY {
        return Err(Status::resource_exhausted(format!(
            "log entry for job {} is too large: {} bytes; the limit is {MAX_LOG_ENTRY}",
            entry.job_id,
            data.len()
        )));
    }
    Ok(data)
}

/// The orchestrator's implementation of `hwp.WorkerService`.
#[derive(Clone)]
pub struct HwpService {
    hub: Hub,
    store: Arc<dyn Store>,
    heartbeat_ms: u64,
    grace_ms: u64,
}

impl HwpService {
    pub fn new(hub: Hub, store: Arc<dyn Store>, heartbeat_ms: u64, grace_ms: u64) -> HwpService {
        HwpService {
            hub,
            store,
            heartbeat_ms,
            grace_ms,
        }
    }
}

fn unexpected(reply: Reply) -> Status {
    match reply {
        Reply::Error(e) => convert::status(e),
        other => Status::internal(format!("unexpected reply from the engine: {other:?}")),
    }
}

fn invalid(e: hodei_core::InvalidInput) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl WorkerService for HwpService {
    async fn register_worker(
        &self,
        request: Request<pb::WorkerRegistration>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        let reg = request.into_inner();
        validate_worker_id(&reg.worker_id).map_err(invalid)?;
        let labels = validated_labels(reg.capabilities)?;
        let reply = self
            .hub
            .request(|req| Input::Register {
                req,
                worker_id: reg.worker_id,
                labels,
                slots: reg.slots,
            })
            .await?;
        match reply {
            Reply::Worker(info) => Ok(Response::new(convert::worker_status(&info))),
            other => Err(unexpected(other)),
        }
    }

    async fn assign_job(
        &self,
        request: Request<pb::AssignJobRequest>,
    ) -> Result<Response<pb::JobAccepted>, Status> {
        let req = request.into_inner();
        let spec = convert::spec_from_request(&req)?;
        let id = if req.job_id.is_empty() {
            uuid::Uuid::now_v7().to_string()
        } else {
            req.job_id
        };
        let reply = self
            .hub
            .request(|r| Input::Submit {
                req: r,
                id,
                spec,
                existing: None,
            })
            .await?;
        match reply {
            Reply::Submitted { job, created } => Ok(Response::new(pb::JobAccepted {
                job_id: job.id,
                state: job.state.to_string(),
                created,
            })),
            other => Err(unexpected(other)),
        }
    }

    async fn stream_logs(
        &self,
        request: Request<Streaming<pb::LogEntry>>,
    ) -> Result<Response<pb::Empty>, Status> {
        let mut entries = request.into_inner();
        while let Some(entry) = entries.next().await {
            let mut entry = entry?;
            validate_job_id(&entry.job_id).map_err(invalid)?;
            let stream = convert::log_stream(entry.stream)?;
            let data = log_bytes(&mut entry)?;
            let job_id = entry.job_id;
            let reply = self
                .hub
                .request(|req| Input::Log {
                    session: None,
                    req: Some(req),
                    job_id: job_id.clone(),
                    attempt: entry.attempt,
                    stream,
                    offset: entry.has_offset.then_some(entry.offset),
                    data,
                    timestamp_ms: if entry.timestamp_ms > 0 {
                        entry.timestamp_ms
                    } else {
                        now_ms()
                    },
                })
                .await?;
            match reply {
                Reply::LogAppended => {}
                Reply::Error(hodei_core::engine::EngineError::NotFound(_)) => {
                    return Err(self.closed_or_missing(&job_id).await);
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn cancel_job(
        &self,
        request: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let req = request.into_inner();
        validate_job_id(&req.job_id).map_err(invalid)?;
        let reason = if req.reason.is_empty() {
            "cancelled through HWP CancelJob".to_string()
        } else {
            req.reason
        };
        let reply = self
            .hub
            .request(|r| Input::Cancel {
                req: r,
                id: req.job_id,
                reason,
                existing: None,
            })
            .await?;
        match reply {
            Reply::Cancelled { .. } => Ok(Response::new(pb::Empty {})),
            other => Err(unexpected(other)),
        }
    }

    type AttachStream = ReceiverStream<Result<pb::ServerMessage, Status>>;

    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let mut inbound = request.into_inner();
        let hello = match inbound.next().await {
            Some(Ok(pb::AgentMessage {
                body: Some(pb::agent_message::Body::Hello(hello)),
            })) => hello,
            Some(Err(status)) => return Err(status),
            _ => {
                return Err(Status::invalid_argument(
                    "invalid session: the first message of Attach must be Hello",
                ));
            }
        };
        let reg = hello.registration.unwrap_or_default();
        validate_worker_id(&reg.worker_id).map_err(invalid)?;
        let mut labels = validated_labels(reg.capabilities)?;
        labels.extend(validated_labels(hello.labels)?);
        let running = hello
            .running
            .into_iter()
            .map(|r| AttemptRef {
                job_id: r.job_id,
                attempt: r.attempt,
            })
            .collect();
        let (session, mut to_agent) = self.hub.open_session().await?;
        self.hub
            .send(Input::Attach {
                session,
                worker_id: reg.worker_id.clone(),
                labels,
                slots: reg.slots.max(1),
                running,
            })
            .await?;
        tracing::info!(worker = %reg.worker_id, session, "agent attached");

        let (tx, rx) = mpsc::channel(256);
        let (hb, grace) = (self.heartbeat_ms, self.grace_ms);
        let session_name = session.to_string();
        // Outbound: engine messages to the agent. Ends when the engine drops
        // the session (replaced, expired) or the agent goes away.
        tokio::spawn(async move {
            while let Some(msg) = to_agent.recv().await {
                let msg = convert::server_message(msg, &session_name, hb, grace);
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
        });
        // Inbound: agent reports to the engine.
        let hub = self.hub.clone();
        let worker = reg.worker_id;
        tokio::spawn(async move {
            let result = pump_reports(&hub, session, &mut inbound).await;
            match result {
                Ok(()) => tracing::info!(%worker, session, "agent session closed"),
                Err(status) => {
                    tracing::warn!(%worker, session, error = %status.message(), "agent session broken")
                }
            }
            let _ = hub.send(Input::Detach { session }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

impl HwpService {
    /// NOT_FOUND for an unknown job; FAILED_PRECONDITION for a finished one.
    async fn closed_or_missing(&self, job_id: &str) -> Status {
        match self.store.get_job(job_id).await {
            Ok(Some(job)) if job.state.is_terminal() => Status::failed_precondition(format!(
                "job {job_id} has finished ({}); its log is closed",
                job.state
            )),
            Ok(_) => Status::not_found(format!("job {job_id} not found")),
            Err(e) => Status::unavailable(e.to_string()),
        }
    }
}

fn validated_labels(labels: Vec<String>) -> Result<Vec<String>, Status> {
    for l in &labels {
        hodei_core::spec::validate_label(l)
            .map_err(|m| Status::invalid_argument(format!("invalid capabilities: {m}")))?;
    }
    Ok(labels)
}

/// Forwards one session's agent messages to the engine until the stream ends.
async fn pump_reports(
    hub: &Hub,
    session: SessionId,
    inbound: &mut Streaming<pb::AgentMessage>,
) -> Result<(), Status> {
    use pb::agent_message::Body;
    while let Some(msg) = inbound.next().await {
        let Some(body) = msg?.body else { continue };
        let input = match body {
            Body::Hello(_) => {
                return Err(Status::invalid_argument(
                    "invalid session: Hello sent twice",
                ));
            }
            Body::Heartbeat(_) => Input::Heartbeat { session },
            Body::Started(s) => Input::Started {
                session,
                job_id: s.job_id,
                attempt: s.attempt,
            },
            Body::Rejected(r) => Input::Rejected {
                session,
                job_id: r.job_id,
                attempt: r.attempt,
                reason: r.reason,
            },
            Body::Log(mut entry) => {
                let stream = convert::log_stream(entry.stream)?;
                let data = log_bytes(&mut entry)?;
                Input::Log {
                    session: Some(session),
                    req: None,
                    job_id: entry.job_id,
                    attempt: entry.attempt,
                    stream,
                    offset: Some(entry.offset),
                    data,
                    timestamp_ms: entry.timestamp_ms,
                }
            }
            Body::Result(result) => Input::Result {
                session,
                outcome: convert::outcome(&result)?,
                totals: convert::totals(&result),
                job_id: result.job_id,
                attempt: result.attempt,
            },
            Body::Drain(_) => Input::Drain { session },
        };
        hub.send(input)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
    }
    Ok(())
}
