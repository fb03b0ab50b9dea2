//! Starting and stopping an orchestrator: open the store, recover the
//! engine, start the reactor, and serve on one port: gRPC (HWP, health
//! `grpc.health.v1`, reflection v1 and v1alpha) and HTTP (API, metrics,
//! dashboard).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use hodei_core::engine::{EngineConfig, Input};
use hwp_proto::pb::worker_service_server::WorkerServiceServer;
use tokio::net::TcpListener;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower::Layer as _;

use crate::grpc::HwpService;
use crate::grpc_metrics::GrpcMetricsLayer;
use crate::http::{self, AppState};
use crate::reactor::{self, Hub};
use crate::serve::no_peer;
use crate::store::{Store, StoreError};
use crate::tls::{RequirePeerIdentity, TlsListener, tls_peer};

/// Agents told of a shutdown redial within this window, spread at random.
const AGENT_RECONNECT_SPREAD_MS: u64 = 5_000;

/// How long open streams get to finish after a shutdown request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// Headroom of an outgoing message (an assignment) over the job spec it
/// carries.
const MESSAGE_OVERHEAD: usize = 1024 * 1024;

/// How to run an orchestrator.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// A `postgres://` URL to keep state in PostgreSQL; `None`: the embedded
    /// SQLite database in `data_dir`.
    pub database: Option<String>,
    pub heartbeat_interval: Duration,
    pub lease_grace: Duration,
    /// TLS on the port (and client certificates); `None`: plain HTTP.
    pub tls: Option<crate::tls::TlsSettings>,
    /// Input limits: gRPC message, HTTP body, job spec, argv and env.
    pub limits: hodei_core::spec::Limits,
    /// Authentication: submission rate, sessions per identity, bootstrap.
    pub auth: crate::auth::AuthConfig,
    /// The secrets key (and old keys to rotate from).
    pub secrets: crate::secrets::SecretsConfig,
    /// Most bytes of output one job's log keeps (0: no limit).
    pub max_log_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            data_dir: PathBuf::from("hodei-data"),
            database: None,
            heartbeat_interval: Duration::from_secs(10),
            lease_grace: Duration::from_secs(30),
            tls: None,
            limits: hodei_core::spec::Limits::default(),
            auth: crate::auth::AuthConfig::default(),
            secrets: crate::secrets::SecretsConfig::default(),
            max_log_bytes: crate::secrets::DEFAULT_MAX_LOG_BYTES,
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
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("invalid limits: {0}")]
    Limits(String),
    #[error("invalid leases: {0}")]
    Leases(String),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Secrets(#[from] crate::secrets::SecretsError),
}

/// A started orchestrator.
pub struct Server {
    pub addr: SocketAddr,
    hub: Hub,
    listener: TcpListener,
    /// `Some`: the port speaks TLS only.
    tls: Option<Arc<rustls::ServerConfig>>,
    app: axum::Router,
    health: HealthReporter,
    reactor: tokio::task::JoinHandle<Result<(), StoreError>>,
    auth: crate::auth::Auth,
    bootstrap: Option<crate::auth::Bootstrap>,
}

impl Server {
    /// Opens the store, recovers every unfinished job and binds the port.
    pub async fn start(config: &ServerConfig) -> Result<Server, ServerError> {
        config.limits.check().map_err(ServerError::Limits)?;
        check_leases(config.heartbeat_interval, config.lease_grace).map_err(ServerError::Leases)?;
        // Bad TLS files fail the start before anything else is touched.
        let tls = match &config.tls {
            Some(settings) => Some(crate::tls::server_config(settings).await?),
            None => None,
        };
        let workers_need_certificate = config
            .tls
            .as_ref()
            .is_some_and(|t| t.workers_need_certificate());
        let store: Arc<dyn Store> =
            crate::store::open(config.database.as_deref(), &config.data_dir).await?;
        let engine_config = EngineConfig {
            heartbeat_interval_ms: config.heartbeat_interval.as_millis() as u64,
            lease_grace_ms: config.lease_grace.as_millis() as u64,
        };
        tracing::info!(data_dir = %config.data_dir.display(), "opened the store");
        let engine = crate::recovery::recover_engine(store.as_ref(), engine_config)
            .await?
            .with_limits(config.limits);
        let (hub, reactor) = reactor::start(engine, store.clone());
        // With PostgreSQL, tokens and secrets are shared by every replica.
        let pg = store.pg_pool();
        let (auth, bootstrap) =
            crate::auth::Auth::open(&config.data_dir, config.auth.clone(), pg.clone()).await?;
        auth.sessions().set_secure(tls.is_some());
        let secrets = crate::secrets::Secrets::open(&config.data_dir, &config.secrets, pg).await?;
        let grpc = HwpService::new(
            hub.clone(),
            store.clone(),
            engine_config.heartbeat_interval_ms,
            engine_config.lease_grace_ms,
        )
        .with_auth(auth.clone())
        .with_delivery(crate::secrets::Delivery::new(
            Some(secrets.clone()),
            config.max_log_bytes,
        ));
        // Messages over the limit are refused by `GrpcFrameLimit` with
        // RESOURCE_EXHAUSTED as soon as their prefix arrives (tonic's own
        // check, OUT_OF_RANGE, is the backstop). Each handler applies its
        // own, smaller limits with a precise status: log entries over
        // [`crate::grpc::MAX_LOG_ENTRY`] are RESOURCE_EXHAUSTED, specs over
        // the limits INVALID_ARGUMENT. Outgoing assignments carry a spec.
        let limits = config.limits;
        let grpc = WorkerServiceServer::new(grpc)
            .max_decoding_message_size(limits.max_grpc_message_bytes)
            .max_encoding_message_size(
                (limits.max_spec_bytes.saturating_add(MESSAGE_OVERHEAD))
                    .max(limits.max_grpc_message_bytes),
            );
        let grpc = tower::util::MapRequestLayer::new(crate::limits::GrpcFrameLimit::wrap(
            limits.max_grpc_message_bytes,
        ))
        .layer(grpc);
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
            limits,
        })
        .route_service(
            "/hwp.WorkerService/{*method}",
            counted.layer(RequirePeerIdentity::new(grpc, workers_need_certificate)),
        )
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
        )
        // Every route, HTTP and gRPC, those added later included: who is
        // calling and may they (see `auth::middleware`).
        .layer(axum::middleware::from_fn_with_state(
            auth.clone(),
            crate::auth::middleware::authenticate,
        ))
        .layer(axum::Extension(auth.clone()))
        .layer(axum::Extension(secrets));
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr()?;
        if crate::tls::plaintext_beyond_loopback(addr.ip(), tls.is_some()) {
            tracing::warn!(%addr, "listening beyond loopback without TLS: job specs, logs and credentials cross the network in clear text; use --tls-cert and --tls-key");
        }
        Ok(Server {
            addr,
            hub,
            listener,
            tls,
            app,
            health,
            reactor,
            auth,
            bootstrap,
        })
    }

    /// The admin token created at this first start, to show once; `None`
    /// when the data directory already had tokens (or it was provisioned).
    pub fn first_start_admin_token(&self) -> Option<&str> {
        self.bootstrap.as_ref()?.print_admin.as_deref()
    }

    /// The local admin token (the data directory's `admin.token`), for
    /// in-process clients (`hodei demo`, `hodei bench`).
    pub fn admin_token(&self) -> Option<String> {
        self.auth.local_admin_token()
    }

    /// The local agent join token (`agent.token`), for in-process agents.
    pub fn join_token(&self) -> Option<String> {
        self.auth.local_agent_token()
    }

    /// `https` when the port speaks TLS, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() { "https" } else { "http" }
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
            tls,
            app,
            health,
            mut reactor,
            ..
        } = self;
        tracing::info!(%addr, tls = tls.is_some(), "hodei server listening (gRPC HWP and HTTP API)");
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
        let graceful = async move {
            let _ = graceful.wait_for(|stop| *stop).await;
        };
        // Both ways give handlers `ConnectInfo<SocketAddr>`; over TLS also
        // the client's verified `PeerIdentity`.
        let serve: std::pin::Pin<Box<dyn Future<Output = ()> + Send>> = match tls {
            Some(config) => Box::pin(crate::serve::serve(
                TlsListener::new(listener, config)?,
                app,
                tls_peer,
                graceful,
            )),
            None => {
                let listener = listener.tap_io(|tcp| {
                    if let Err(e) = tcp.set_nodelay(true) {
                        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
                    }
                });
                Box::pin(crate::serve::serve(listener, app, no_peer, graceful))
            }
        };
        let mut deadline = stop_rx;
        let _upkeep = AbortOnDrop(upkeep);
        tokio::select! {
            () = serve => {}
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

/// Agents must be able to renew their lease: a heartbeat interval of zero,
/// or one not shorter than the lease grace, is refused.
fn check_leases(heartbeat: Duration, grace: Duration) -> Result<(), String> {
    if heartbeat.is_zero() {
        return Err("the heartbeat interval must be more than 0".into());
    }
    if heartbeat >= grace {
        return Err(format!(
            "the heartbeat interval ({heartbeat:?}) must be shorter than the lease grace ({grace:?}), or every worker would be declared lost between two heartbeats"
        ));
    }
    Ok(())
}
