//! The accept loop: every connection, plain or TLS, served by hyper's
//! HTTP/1 and HTTP/2 connection builder with our HTTP/2 settings, each
//! request carrying the connection's facts (`ConnectInfo<SocketAddr>`, and
//! over TLS the client's verified `PeerIdentity`), until shutdown.
//!
//! `axum::serve` does the same with hyper's defaults, which cannot be
//! changed; the one that matters here is HTTP/2's largest frame. An agent
//! sends its output in messages of up to 1 MiB (`MAX_MESSAGE_BYTES`); at
//! the default 16 KiB a message crossed as 64 frames, each a write on the
//! agent and a read and a frame to parse here. [`MAX_FRAME_BYTES`] lets a
//! message cross in one or two.

use std::future::Future;
use std::net::SocketAddr;

use axum::serve::Listener;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite};
use tower::ServiceExt as _;

use crate::tls::{PeerIdentity, PeerService};

/// The largest HTTP/2 frame a peer may send us (`SETTINGS_MAX_FRAME_SIZE`;
/// the protocol's default is 16 KiB, its maximum 16 MiB − 1).
pub const MAX_FRAME_BYTES: u32 = 1024 * 1024;

/// Serves `app` on every connection `listener` accepts until `shutdown`
/// completes; then stops accepting, asks every open connection to finish
/// (HTTP/2 `GOAWAY`; HTTP/1 closes after its current response) and returns
/// once they all have. `peer` tells a connection's verified client, if any.
pub async fn serve<L>(
    mut listener: L,
    app: axum::Router,
    peer: fn(&L::Io) -> Option<PeerIdentity>,
    shutdown: impl Future<Output = ()>,
) where
    L: Listener<Addr = SocketAddr>,
    L::Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http2()
        .max_frame_size(MAX_FRAME_BYTES)
        // HTTP/2 websockets (CONNECT), as `axum::serve` allows.
        .enable_connect_protocol();
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let service = PeerService::new(app.clone(), peer(&io), remote)
            .map_request(|req: http::Request<Incoming>| req.map(axum::body::Body::new));
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::trace!(peer = %remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// No verified client: a plain TCP connection.
pub fn no_peer<T>(_: &T) -> Option<PeerIdentity> {
    None
}
