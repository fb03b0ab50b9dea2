//! A scripted fake orchestrator for the agent's protocol tests: each
//! `Attach` call becomes a [`Session`] the test reads from and answers.

#![allow(dead_code)]

use std::time::Duration;

use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body as A;
use hwp_proto::pb::server_message::Body as S;
use hwp_proto::pb::worker_service_server::{WorkerService, WorkerServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

pub const DEADLINE: Duration = Duration::from_secs(30);

/// One `Attach` call: what the agent sends, and a way to answer.
pub struct Session {
    inbound: Streaming<pb::AgentMessage>,
    outbound: mpsc::Sender<Result<pb::ServerMessage, Status>>,
}

impl Session {
    pub async fn recv(&mut self) -> A {
        let msg = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("agent message in time")
            .expect("stream ok")
            .expect("stream open");
        msg.body.expect("body")
    }

    /// The next message that is not a heartbeat.
    pub async fn next(&mut self) -> A {
        loop {
            match self.recv().await {
                A::Heartbeat(_) => {}
                other => return other,
            }
        }
    }

    /// The agent's drain: its `Drain`, then the end of its side of the
    /// stream; the session is then closed from this side too.
    pub async fn drained(mut self) {
        assert!(matches!(self.next().await, A::Drain(_)), "Drain");
        let end = tokio::time::timeout(DEADLINE, self.inbound.message())
            .await
            .expect("agent ends its stream in time");
        assert!(
            matches!(end, Ok(None)),
            "the agent's side ends cleanly: {end:?}"
        );
    }

    pub async fn send(&self, body: S) {
        let msg = pb::ServerMessage { body: Some(body) };
        self.outbound.send(Ok(msg)).await.expect("agent listening");
    }

    /// Takes the agent's `Hello` and welcomes it; returns the attempts it
    /// says it still holds.
    pub async fn welcome(&mut self) -> Vec<(String, u32)> {
        let A::Hello(hello) = self.next().await else {
            panic!("Hello first")
        };
        self.send(welcome()).await;
        hello
            .running
            .into_iter()
            .map(|r| (r.job_id, r.attempt))
            .collect()
    }
}

/// The `Welcome` the fake sends.
pub fn welcome() -> S {
    S::Welcome(pb::Welcome {
        worker_id: "agent-1".into(),
        session_id: "s".into(),
        heartbeat_interval_ms: 60_000,
        lease_grace_ms: 30_000,
    })
}

struct Fake {
    sessions: mpsc::UnboundedSender<Session>,
}

#[tonic::async_trait]
impl WorkerService for Fake {
    async fn register_worker(
        &self,
        _: Request<pb::WorkerRegistration>,
    ) -> Result<Response<pb::WorkerStatus>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn assign_job(
        &self,
        _: Request<pb::AssignJobRequest>,
    ) -> Result<Response<pb::JobAccepted>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn stream_logs(
        &self,
        _: Request<Streaming<pb::LogEntry>>,
    ) -> Result<Response<pb::Empty>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn cancel_job(
        &self,
        _: Request<pb::CancelJobRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        Err(Status::unimplemented("fake"))
    }
    type AttachStream = ReceiverStream<Result<pb::ServerMessage, Status>>;
    async fn attach(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::AttachStream>, Status> {
        let (tx, rx) = mpsc::channel(64);
        let _ = self.sessions.send(Session {
            inbound: request.into_inner(),
            outbound: tx,
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// A fake orchestrator on its own port: its URL and its sessions.
pub async fn fake_server() -> (String, mpsc::UnboundedReceiver<Session>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let incoming = futures::stream::unfold(listener, |l| async move {
        let conn = l.accept().await.map(|(s, _)| s);
        Some((conn, l))
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(Fake { sessions: tx }))
            .serve_with_incoming(incoming),
    );
    (format!("http://{addr}"), rx)
}

/// The agent's next session: it dialled within the deadline.
pub async fn dialled(sessions: &mut mpsc::UnboundedReceiver<Session>) -> Session {
    tokio::time::timeout(DEADLINE, sessions.recv())
        .await
        .expect("agent dials")
        .expect("session")
}

/// Runs an agent with the process executor in the background: its task,
/// and the switch that drains it (send `true`).
pub fn start_agent(
    config: hodei_agent::AgentConfig,
) -> (
    tokio::task::JoinHandle<Result<(), hodei_agent::AgentError>>,
    tokio::sync::watch::Sender<bool>,
) {
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let executor = std::sync::Arc::new(hodei_agent::process::ProcessExecutor::new());
    let agent = tokio::spawn(hodei_agent::run(config, executor, drain_rx));
    (agent, drain_tx)
}
