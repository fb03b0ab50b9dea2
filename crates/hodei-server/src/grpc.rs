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

use crate::auth::{Auth, Principal};
use crate::convert;
use crate::reactor::{Hub, now_ms};
use crate::store::Store;

/// Largest log entry accepted. Agents send at most 1 MiB at a time.
pub const MAX_LOG_ENTRY: usize = 4 * 1024 * 1024;

/// The raw bytes of a log entry, refused when over [`MAX_LOG_ENTRY`].
pub fn log_bytes(entry: &mut pb::LogEntry) -> Result<Bytes, Status> {
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
    /// Credentials; `None` (in-process tests of the service alone): every
    /// caller may do everything.
    auth: Option<Auth>,
    /// Secret values and the log limit for assignments (see `secrets`).
    delivery: crate::secrets::Delivery,
}

impl HwpService {
    /// Gives assignments their secrets and log limit, and checks that
    /// submissions name known secrets.
    pub fn with_delivery(mut self, delivery: crate::secrets::Delivery) -> HwpService {
        self.delivery = delivery;
        self
    }

    /// Checks callers against `auth` (worker bindings, job ownership,
    /// sessions per identity). The port's auth layer has already
    /// authenticated them and checked their role.
    pub fn with_auth(mut self, auth: Auth) -> HwpService {
        self.auth = Some(auth);
        self
    }

    pub fn new(hub: Hub, store: Arc<dyn Store>, heartbeat_ms: u64, grace_ms: u64) -> HwpService {
        HwpService {
            hub,
            store,
            heartbeat_ms,
            grace_ms,
            auth: None,
            delivery: Default::default(),
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
        let caller = caller(&request);
        let reg = request.into_inner();
        validate_worker_id(&reg.worker_id).map_err(invalid)?;
        self.bind(&reg.worker_id, caller.as_ref()).await?;
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
        let caller = caller(&request);
        let req = request.into_inner();
        let spec = convert::spec_from_request(&req)?;
        self.delivery.check_known(&spec.secrets).await?;
        let fresh = req.job_id.is_empty();
        let id = if fresh {
            uuid::Uuid::now_v7().to_string()
        } else {
            req.job_id
        };
        // Recorded on the new job, in the commit that creates it.
        let submitter = match (&self.auth, caller) {
            (Some(_), Some(c)) => Some(c.id),
            _ => None,
        };
        let reply = self
            .hub
            .request(|r| Input::Submit {
                req: r,
                id,
                spec,
                submitter,
                fresh,
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
        let only_workers = match caller(&request) {
            Some(c) if c.role != hodei_core::auth::Role::Admin => match &self.auth {
                Some(auth) => Some(auth.workers_of(&c.identity()).await),
                None => None,
            },
            _ => None,
        };
        let who = caller(&request).map(|c| c.id).unwrap_or_default();
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
                    only_workers: only_workers.clone(),
                })
                .await?;
            match reply {
                Reply::LogAppended => {}
                Reply::Error(hodei_core::engine::EngineError::PermissionDenied(why)) => {
                    tracing::warn!(token = %who, job = %job_id, reason = %why, "StreamLogs refused: permission denied");
                    return Err(Status::permission_denied(why));
                }
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
        let caller = caller(&request);
        let req = request.into_inner();
        validate_job_id(&req.job_id).map_err(invalid)?;
        self.may_cancel(&req.job_id, caller.as_ref()).await?;
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
        let caller = caller(&request);
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
        self.bind(&reg.worker_id, caller.as_ref()).await?;
        let guard = match (&self.auth, &caller) {
            (Some(auth), Some(c)) => Some(auth.open_session(&c.identity()).map_err(|max| {
                tracing::warn!(token = %c.id, worker = %reg.worker_id, max, "Attach refused: too many sessions for this identity");
                Status::resource_exhausted(format!(
                    "identity {} already has {max} open agent sessions (the limit)",
                    c.identity()
                ))
            })?),
            _ => None,
        };
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
                prefetch: hello.prefetch,
                running,
            })
            .await?;
        tracing::info!(worker = %reg.worker_id, session, "agent attached");

        let (tx, rx) = mpsc::channel(256);
        // The inbound side ends the agent's stream with the status that
        // broke the session (e.g. a message over the size limit). It holds
        // only a weak sender: when the engine drops the session, the stream
        // must end even while the agent's side is silent (partitioned).
        let broken_tx = tx.downgrade();
        let (hb, grace) = (self.heartbeat_ms, self.grace_ms);
        let session_name = session.to_string();
        let denied_worker = reg.worker_id.clone();
        let delivery = self.delivery.clone();
        // Outbound: engine messages to the agent. Ends when the engine drops
        // the session (replaced, expired) or the agent goes away.
        tokio::spawn(async move {
            while let Some(msg) = to_agent.recv().await {
                let mut msg = convert::server_message(msg, &session_name, hb, grace);
                if let Ok(msg) = &mut msg {
                    delivery.complete(msg).await;
                }
                if let Err(status) = &msg {
                    tracing::warn!(worker = %denied_worker, session = %session_name, reason = %status.message(), "agent session refused: permission denied");
                }
                let end = msg.is_err();
                if tx.send(msg).await.is_err() || end {
                    return;
                }
            }
        });
        // Inbound: agent reports to the engine.
        let hub = self.hub.clone();
        let worker = reg.worker_id;
        let max_log_bytes = self.delivery.max_log_bytes();
        tokio::spawn(async move {
            // The session counts against its identity's limit until it ends.
            let _guard = guard;
            let result = pump_reports(&hub, session, &mut inbound, max_log_bytes).await;
            match result {
                Ok(()) => tracing::info!(%worker, session, "agent session closed"),
                Err(status) => {
                    tracing::warn!(%worker, session, error = %status.message(), "agent session broken");
                    if let Some(tx) = broken_tx.upgrade() {
                        let _ = tx.send(Err(status)).await;
                    }
                }
            }
            drop(broken_tx);
            let _ = hub.send(Input::Detach { session }).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// The caller the auth layer found.
fn caller<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

impl HwpService {
    /// Binds `worker_id` to the caller's identity (first claim), or refuses.
    async fn bind(&self, worker_id: &str, caller: Option<&Principal>) -> Result<(), Status> {
        let (Some(auth), Some(c)) = (&self.auth, caller) else {
            return Ok(());
        };
        match auth.bind_worker(worker_id, &c.identity()).await {
            Ok(()) => Ok(()),
            Err(crate::auth::BindError::Conflict) => {
                tracing::warn!(token = %c.id, worker = %worker_id, "worker registration refused: the worker id belongs to another identity");
                Err(Status::permission_denied(format!(
                    "worker id {worker_id} is registered to another identity"
                )))
            }
            Err(crate::auth::BindError::Store(e)) => Err(Status::unavailable(e.to_string())),
        }
    }

    /// A `submit` token cancels only the jobs it submitted.
    async fn may_cancel(&self, job_id: &str, caller: Option<&Principal>) -> Result<(), Status> {
        let (Some(_), Some(c)) = (&self.auth, caller) else {
            return Ok(());
        };
        // An unknown job is allowed through: NOT_FOUND from the engine.
        match crate::auth::may_cancel(self.store.as_ref(), c, job_id).await {
            Ok(true) => Ok(()),
            Ok(false) => {
                tracing::warn!(token = %c.id, job = %job_id, "CancelJob refused: not the submitter");
                Err(Status::permission_denied(format!(
                    "job {job_id} was submitted by another token; a {} token cancels only its own jobs",
                    c.role
                )))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

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
    max_log_bytes: u64,
) -> Result<(), Status> {
    while let Some(msg) = inbound.next().await {
        let Some(body) = msg?.body else { continue };
        let Some(input) = convert::agent_report(session, body, max_log_bytes)? else {
            continue;
        };
        hub.send(input)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
    }
    Ok(())
}
