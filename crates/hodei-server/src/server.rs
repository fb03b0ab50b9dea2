//! Starting and stopping an orchestrator: open the store, recover the
//! engine, start the reactor, and serve on one port: gRPC (HWP, health
//! `grpc.health.v1`, reflection v1 and v1alpha) and HTTP (API, metrics,
//! dashboard).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use hodei_core::engine::{Engine, EngineConfig, Input};
use hwp_proto::pb::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

use crate::grpc::HwpService;
use crate::grpc_metrics::GrpcMetricsLayer;
use crate::http::{self, AppState};
use crate::reactor::{self, Hub, now_ms};
use crate::store::{LogQuery, SqliteStore, Store, StoreError};
use hodei_core::log::StreamTotal;

/// Agents told of a shutdown redial within this window, spread at random.
const AGENT_RECONNECT_SPREAD_MS: u64 = 5_000;

/// How long open streams get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Largest gRPC message the transport decodes (tonic refuses bigger ones
/// with OUT_OF_RANGE). Each handler applies its own, smaller limits with a
/// precise status: log entries over [`crate::grpc::MAX_LOG_ENTRY`] are
/// RESOURCE_EXHAUSTED, oversized spec fields INVALID_ARGUMENT.
const MAX_GRPC_MESSAGE: usize = 16 * 1024 * 1024;

/// How to run an orchestrator.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub heartbeat_interval: Duration,
    pub lease_grace: Duration,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("hodei-data"),
            heartbeat_interval: Duration::from_secs(5),
            lease_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the reactor stopped unexpectedly")]
    ReactorGone,
    #[error("cannot build the gRPC reflection service: {0}")]
    Reflection(String),
}

/// Size and checksum of the stored log of each unfinished attempt, read back
/// from the store, so that results reported after a restart are verified
/// against everything stored, not only what arrived since.
async fn stored_totals(
    store: &dyn Store,
    log_ends: &HashMap<(String, u32), [u64; 2]>,
) -> Result<HashMap<(String, u32), [StreamTotal; 2]>, StoreError> {
    let mut totals = HashMap::new();
    for ((job_id, attempt), ends) in log_ends {
        let mut sums = [StreamTotal::default(); 2];
        let mut query = LogQuery {
            job_id: job_id.clone(),
            attempt: *attempt,
            stream: None,
            from: [0, 0],
            max_bytes: 4 * 1024 * 1024,
        };
        while query.from != *ends {
            let chunks = store.read_logs(&query).await?;
            if chunks.is_empty() {
                break;
            }
            for chunk in chunks {
                let i = chunk.stream.index();
                sums[i] = sums[i].append(&chunk.data);
                query.from[i] = chunk.offset + chunk.data.len() as u64;
            }
        }
        totals.insert((job_id.clone(), *attempt), sums);
    }
    Ok(totals)
}

/// A started orchestrator.
pub struct Server {
    pub addr: SocketAddr,
    hub: Hub,
    listener: TcpListener,
    app: axum::Router,
    health: HealthReporter,
    reactor: tokio::task::JoinHandle<Result<(), StoreError>>,
}

impl Server {
    /// Opens the store, recovers every unfinished job and binds the port.
    pub async fn start(config: &ServerConfig) -> Result<Server, ServerError> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.data_dir).await?);
        let recovery = store.recover().await?;
        let engine_config = EngineConfig {
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            lease_grace_ms: config.lease_grace.as_millis() as u64,
        };
        tracing::info!(
            unfinished = recovery.unfinished.len(),
            workers = recovery.workers.len(),
            data_dir = %config.data_dir.display(),
            "recovered state from the store"
        );
        let totals = stored_totals(store.as_ref(), &recovery.log_ends).await?;
        let engine = Engine::recover(
            engine_config,
            recovery.unfinished,
            &totals,
            recovery.workers,
            recovery.max_seq,
            now_ms(),
        );
        let (hub, reactor) = reactor::start(engine, store.clone());
        let grpc = HwpService::new(
            hub.clone(),
            store.clone(),
            engine_config.heartbeat_interval_ms,
            engine_config.lease_grace_ms,
        );
        let grpc = WorkerServiceServer::new(grpc)
            .max_decoding_message_size(MAX_GRPC_MESSAGE)
            .max_encoding_message_size(MAX_GRPC_MESSAGE);
        crate::metrics::install();
        let (health, health_service) = tonic_health::server::health_reporter();
        health
            .set_serving::<WorkerServiceServer<HwpService>>()
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(hwp_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| ServerError::Reflection(e.to_string()))?;
        // gRPC calls are routed by their service path; everything else is
        // HTTP. Every gRPC service is counted by method and status.
        let counted = GrpcMetricsLayer;
        let app = http::router(AppState {
            hub: hub.clone(),
            store,
        })
        .route_service("/hwp.WorkerService/{*method}", counted.layer(grpc))
        .route_service(
            "/grpc.health.v1.Health/{*method}",
            counted.layer(health_service),
        )
        .route_service(
            "/grpc.reflection.v1.ServerReflection/{*method}",
            counted.layer(reflection_v1),
        )
        .route_service(
            "/grpc.reflection.v1alpha.ServerReflection/{*method}",
            counted.layer(reflection_v1alpha),
        );
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        Ok(Server {
            addr,
            hub,
            listener,
            app,
            health,
            reactor,
        })
    }

    /// A handle to the reactor (for in-process use, e.g. `hodei demo`).
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Serves until `shutdown` completes or the reactor fails.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        let Server {
            addr,
            hub,
            listener,
            app,
            health,
            mut reactor,
        } = self;
        tracing::info!(%addr, "hodei server listening (gRPC HWP and HTTP API)");
        let listener = listener.tap_io(|tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        });
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let upkeep = tokio::spawn(async {
            let mut every = tokio::time::interval(crate::metrics::UPKEEP_EVERY);
            loop {
                every.tick().await;
                crate::metrics::upkeep();
            }
        });
        tokio::spawn(async move {
            shutdown.await;
            // Health checkers see the orchestrator going away first.
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            health
                .set_not_serving::<WorkerServiceServer<HwpService>>()
                .await;
            tracing::info!(
                "shutting down: refusing new connections, telling agents to reconnect later"
            );
            // Agents end their sessions and redial with jitter; their jobs
            // keep running, and nothing they sent is lost: only what was
            // committed was acknowledged.
            let _ = hub
                .send(Input::Shutdown {
                    reconnect_within_ms: AGENT_RECONNECT_SPREAD_MS,
                })
                .await;
            let _ = stop_tx.send(true);
        });
        let mut graceful = stop_rx.clone();
        let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        });
        let mut deadline = stop_rx;
        let _upkeep = AbortOnDrop(upkeep);
        tokio::select! {
            served = serve => served?,
            // Long-lived streams (agent sessions, log followers) do not end
            // by themselves: give them a moment, then stop.
            _ = async {
                let _ = deadline.wait_for(|stop| *stop).await;
                tokio::time::sleep(SHUTDOWN_GRACE).await;
            } => tracing::info!("closing remaining connections"),
            stopped = &mut reactor => {
                return match stopped {
                    Ok(Err(e)) => Err(e.into()),
                    _ => Err(ServerError::ReactorGone),
                };
            }
        }
        Ok(())
    }
}

/// Stops a background task when the server stops.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
