//! N simulated agents (default 10,000) attached to an orchestrator in a
//! process of its own: each is a real HWP `Attach` session on its own TCP
//! connection (HTTP/2), says `Hello`, waits for `Welcome` and then sends a
//! heartbeat at the interval the server asks for, like `hodei agent` does;
//! nothing else of the agent runs. Reports the time to register them all,
//! and the server's resident memory and CPU use while they idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hwp_proto::pb;
use hwp_proto::pb::agent_message::Body;
use hwp_proto::pb::worker_service_client::WorkerServiceClient;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use super::Plan;
use super::report::Report;
use super::rig::{ServerProcess, cpu_seconds, nofile};

/// Sessions being set up at once (connect, Hello, Welcome).
const DIAL_AT_ONCE: usize = 256;

pub async fn run(plan: &Plan) -> anyhow::Result<Report> {
    let n = plan.n(10_000, 200);
    // Each agent holds one socket here and one in the server, plus slack.
    let needed = n as u64 + 256;
    if nofile() < needed {
        bail!(
            "fan-out of {n} agents needs {needed} open files; the limit is {} (raise `ulimit -n`)",
            nofile()
        );
    }
    let server = ServerProcess::start().await?;
    let rss_before = server.rss_bytes()?;
    let registered = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let dialing = Arc::new(Semaphore::new(DIAL_AT_ONCE));
    let (stop, stop_rx) = watch::channel(false);
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let agent = SimAgent {
            url: server.url.clone(),
            token: server.join_token.clone(),
            name: format!("sim-{i:05}"),
            registered: registered.clone(),
            dialing: dialing.clone(),
            stop: stop_rx.clone(),
        };
        let failed = failed.clone();
        tasks.spawn(async move {
            if let Err(e) = agent.run().await
                && failed.fetch_add(1, Ordering::Relaxed) == 0
            {
                eprintln!("bench: a simulated agent failed: {e:#}");
            }
        });
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while registered.load(Ordering::Relaxed) < n {
        if failed.load(Ordering::Relaxed) > 0 || Instant::now() > deadline {
            let _ = stop.send(true);
            server.stop().await;
            bail!(
                "{} of {n} simulated agents registered, {} failed",
                registered.load(Ordering::Relaxed),
                failed.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let to_register = start.elapsed();
    // Let the registration burst settle, then sample the idle server.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cpu0 = cpu_seconds(server.pid)?;
    let t0 = Instant::now();
    tokio::time::sleep(Duration::from_secs(plan.idle_secs)).await;
    let cpu = (cpu_seconds(server.pid)? - cpu0) / t0.elapsed().as_secs_f64();
    let rss = server.rss_bytes()?;
    let still = registered.load(Ordering::Relaxed);
    let failures = failed.load(Ordering::Relaxed);
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    server.stop().await;
    let mib = |b: u64| (b as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
    let cpu_pct = (cpu * 1000.0).round() / 10.0;
    let mut r = Report::new("fanout");
    r.set("agents", n);
    r.set("connections", "one TCP (HTTP/2) connection per agent");
    r.set("seconds_to_register_all", to_register.as_secs_f64());
    r.set(
        "agents_registered_per_second",
        (n as f64 / to_register.as_secs_f64()).round(),
    );
    r.set("server_rss_mib_before", mib(rss_before));
    r.set("server_rss_mib", mib(rss));
    r.set(
        "server_rss_kib_per_agent",
        ((rss.saturating_sub(rss_before)) as f64 / 1024.0 / n as f64).round(),
    );
    r.set("server_idle_cpu_percent_of_one_core", cpu_pct);
    r.set("idle_seconds_sampled", plan.idle_secs);
    r.set("agents_failed", failures);
    r.sane(
        still == n && failures == 0,
        format!("{still} of {n} agents attached, {failures} failed"),
    );
    r.sane(rss > 0, "no server memory read");
    r.target("server_rss_mib", mib(rss), false, 1024.0);
    r.target("server_idle_cpu_percent", cpu_pct, false, 10.0);
    Ok(r)
}

/// One simulated agent: an `Attach` session with heartbeats.
struct SimAgent {
    url: String,
    /// The join token, sent as `authorization: Bearer` with `Attach`.
    token: Option<String>,
    name: String,
    registered: Arc<AtomicUsize>,
    dialing: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
}

impl SimAgent {
    async fn run(mut self) -> anyhow::Result<()> {
        let permit = self.dialing.clone().acquire_owned().await?;
        let channel = Endpoint::from_shared(self.url.clone())?
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(30))
            .connect()
            .await
            .context("connect")?;
        let mut client = WorkerServiceClient::new(channel);
        let (tx, rx) = mpsc::channel::<pb::AgentMessage>(4);
        let hello = pb::Hello {
            registration: Some(pb::WorkerRegistration {
                worker_id: self.name.clone(),
                capabilities: vec!["bench-sim".into()],
                slots: 1,
                hostname: self.name.clone(),
                agent_version: env!("CARGO_PKG_VERSION").to_string(),
            }),
            labels: Vec::new(),
            running: Vec::new(),
            protocol_version: hwp_proto::PROTOCOL_VERSION,
            prefetch: 0,
        };
        tx.send(message(Body::Hello(hello))).await?;
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse()?);
        }
        let mut inbound = client.attach(request).await.context("attach")?.into_inner();
        let every = match inbound.message().await.context("welcome")? {
            Some(pb::ServerMessage {
                body: Some(pb::server_message::Body::Welcome(w)),
            }) => Duration::from_millis(w.heartbeat_interval_ms.max(100)),
            other => bail!("expected Welcome, got {other:?}"),
        };
        drop(permit);
        self.registered.fetch_add(1, Ordering::Relaxed);
        let mut beat = tokio::time::interval(every);
        beat.tick().await;
        let result = loop {
            tokio::select! {
                _ = beat.tick() => {
                    let hb = pb::Heartbeat { timestamp_ms: now_ms(), running: Vec::new() };
                    if tx.send(message(Body::Heartbeat(hb))).await.is_err() {
                        break Err(anyhow::anyhow!("session closed"));
                    }
                }
                msg = inbound.message() => match msg {
                    Ok(Some(_)) => {}
                    Ok(None) => break Err(anyhow::anyhow!("server ended the session")),
                    Err(status) => break Err(anyhow::anyhow!("session failed: {}", status.message())),
                },
                _ = async { self.stop.wait_for(|s| *s).await.map(|_| ()) } => break Ok(()),
            }
        };
        if result.is_err() {
            self.registered.fetch_sub(1, Ordering::Relaxed);
        }
        result
    }
}

fn message(body: Body) -> pb::AgentMessage {
    pb::AgentMessage { body: Some(body) }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
