//! A simulated agent for the fan-out scenario: a real HWP `Attach` session
//! on its own TCP connection (HTTP/2) that says `Hello`, waits for `Welcome`
//! and heartbeats at the interval the server asks for, like `hodei agent`
//! does. It runs no process: it answers each assignment at once with
//! `JobStarted` and a successful `JobResult` (no output), so that the
//! orchestrator's dispatch across a large fleet can be measured without the
//! cost of the jobs themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use hwp_proto::pb::server_message::Body as ServerBody;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

/// What a fleet of simulated agents shares: where to dial, and counters.
#[derive(Clone)]
pub struct Fleet {
    pub url: String,
    /// The join token, sent as `authorization: Bearer` with `Attach`.
    pub token: Option<String>,
    /// Slots each agent offers.
    pub slots: u32,
    /// Agents whose session is up.
    pub registered: Arc<AtomicUsize>,
    /// Results the orchestrator acknowledged (committed).
    pub done: Arc<AtomicUsize>,
    /// Sessions being set up at once.
    pub dialing: Arc<Semaphore>,
    pub stop: watch::Receiver<bool>,
}

/// One simulated agent of `fleet`, named `name`.
pub async fn run(fleet: Fleet, name: String) -> anyhow::Result<()> {
    let permit = fleet.dialing.clone().acquire_owned().await?;
    let channel = Endpoint::from_shared(fleet.url.clone())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(30))
        .connect()
        .await
        .context("connect")?;
    let mut client = WorkerServiceClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(64);
    let hello = pb::Hello {
        registration: Some(pb::WorkerRegistration {
            worker_id: name.clone(),
            capabilities: vec!["bench-sim".into()],
            slots: fleet.slots,
            hostname: name,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
        }),
        labels: Vec::new(),
        running: Vec::new(),
        protocol_version: hwp_proto::PROTOCOL_VERSION,
        prefetch: 0,
    };
    tx.send(message(Body::Hello(hello))).await?;
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    if let Some(token) = &fleet.token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse()?);
    }
    let mut inbound = client.attach(request).await.context("attach")?.into_inner();
    let every = match inbound.message().await.context("welcome")? {
        Some(pb::ServerMessage {
            body: Some(ServerBody::Welcome(w)),
        }) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
        other => bail!("expected Welcome, got {other:?}"),
    };
    drop(permit);
    fleet.registered.fetch_add(1, Ordering::Relaxed);
    let mut beat = tokio::time::interval(every);
    beat.tick().await;
    let mut stop = fleet.stop.clone();
    let result = loop {
        tokio::select! {
            _ = beat.tick() => {
                let hb = pb::Heartbeat { timestamp_ms: now_ms(), running: Vec::new() };
                if tx.send(message(Body::Heartbeat(hb))).await.is_err() {
                    break Err(anyhow::anyhow!("session closed"));
                }
            }
            msg = inbound.message() => match msg {
                Ok(Some(pb::ServerMessage { body: Some(ServerBody::Assign(a)) })) => {
                    if answer(&tx, a).await.is_err() {
                        break Err(anyhow::anyhow!("session closed"));
                    }
                }
                Ok(Some(pb::ServerMessage { body: Some(ServerBody::ResultAck(_)) })) => {
                    fleet.done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Some(_)) => {}
                Ok(None) => break Err(anyhow::anyhow!("server ended the session")),
                Err(status) => break Err(anyhow::anyhow!("session failed: {}", status.message())),
            },
            _ = async { stop.wait_for(|s| *s).await.map(|_| ()) } => break Ok(()),
        }
    };
    if result.is_err() {
        fleet.registered.fetch_sub(1, Ordering::Relaxed);
    }
    result
}

/// Reports `a` started and finished with exit code 0 and no output.
async fn answer(
    tx: &mpsc::Sender<pb::AgentMessage>,
    a: pb::Assignment,
) -> Result<(), mpsc::error::SendError<pb::AgentMessage>> {
    let started = pb::JobStarted {
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        pid: 0,
    };
    tx.send(message(Body::Started(started))).await?;
    let result = pb::JobResult {
        job_id: a.job_id,
        exit_code: 0,
        attempt: a.attempt,
        outcome: pb::Outcome::Exited as i32,
        signal: 0,
        message: String::new(),
        stdout: Some(pb::StreamSummary::default()),
        stderr: Some(pb::StreamSummary::default()),
    };
    tx.send(message(Body::Result(result))).await
}

fn message(body: Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
