//! Accepting TLS connections for the accept loop ([`crate::serve`]), and
//! giving each request its connection's [`PeerIdentity`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::serve::Listener;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::PeerIdentity;

/// A client gets this long to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; connections beyond are dropped (and
/// logged) so that slow or idle clients cannot pile up.
pub const MAX_PENDING_HANDSHAKES: usize = 512;

/// A TLS connection whose handshake succeeded, with the identity its client
/// certificate proved (if it presented one).
pub struct TlsConnection {
    stream: TlsStream<TcpStream>,
    peer: Option<PeerIdentity>,
}

impl TlsConnection {
    pub fn peer(&self) -> Option<&PeerIdentity> {
        self.peer.as_ref()
    }
}

impl AsyncRead for TlsConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A listener (`axum::serve::Listener`) that hands out connections only once their TLS
/// handshake has succeeded. Handshakes run in their own tasks (so one slow
/// client delays no one) with a deadline; a failed one is logged and the
/// accept loop goes on.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsConnection, SocketAddr)>,
    local_addr: SocketAddr,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Starts accepting on `tcp` with `config`.
    pub fn new(tcp: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<TlsListener> {
        let local_addr = tcp.local_addr()?;
        let (tx, ready) = mpsc::channel(64);
        let accept_task = tokio::spawn(accept_loop(tcp, TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            ready,
            local_addr,
            accept_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsConnection;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TlsConnection, SocketAddr) {
        match self.ready.recv().await {
            Some(ready) => ready,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local_addr)
    }
}

/// Errors on accept that concern one connection only.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn accept_loop(
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsConnection, SocketAddr)>,
) {
    let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
    loop {
        let (stream, addr) = match tcp.accept().await {
            Ok(accepted) => accepted,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                tracing::error!(error = %e, "cannot accept connections; retrying in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::warn!(peer = %addr, limit = MAX_PENDING_HANDSHAKES, "TLS handshake refused: too many handshakes in progress");
            continue;
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let acceptor = acceptor.clone();
        let ready = ready.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Some(connection) = handshake(&acceptor, stream, addr).await {
                // Fails only when the server stops accepting: then the
                // connection is closed, as it should be.
                let _ = ready.send((connection, addr)).await;
            }
        });
    }
}

/// Runs one handshake; logs why it failed.
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    addr: SocketAddr,
) -> Option<TlsConnection> {
    let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => {
            // Port probes and TCP health checks connect and hang up.
            tracing::debug!(peer = %addr, "connection closed during the TLS handshake");
            return None;
        }
        Ok(Err(e)) => {
            tracing::warn!(peer = %addr, reason = %e, "TLS handshake refused");
            return None;
        }
        Err(_) => {
            tracing::warn!(peer = %addr, reason = "timed out", timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake refused");
            return None;
        }
    };
    let peer = match stream.get_ref().1.peer_certificates() {
        None | Some([]) => None,
        Some([leaf, ..]) => match PeerIdentity::from_certificate(leaf) {
            Some(peer) => Some(peer),
            None => {
                tracing::warn!(peer = %addr, reason = "the client certificate names no one (no CN, no DNS name)", "TLS connection refused");
                return None;
            }
        },
    };
    match &peer {
        Some(p) => {
            tracing::debug!(peer = %addr, name = %p.name, fingerprint = %p.fingerprint_sha256, "TLS connection with a verified client certificate")
        }
        None => tracing::debug!(peer = %addr, "TLS connection without a client certificate"),
    }
    Some(TlsConnection { stream, peer })
}

/// The verified client of a TLS connection, for [`crate::serve::serve`].
pub fn tls_peer(io: &TlsConnection) -> Option<PeerIdentity> {
    io.peer.clone()
}

/// One connection's service: the app, with the connection's facts added to
/// each request.
#[derive(Clone)]
pub struct PeerService {
    app: axum::Router,
    peer: Option<PeerIdentity>,
    remote: SocketAddr,
}

impl PeerService {
    /// `app` for one connection from `remote`, verified as `peer` (if any).
    pub fn new(app: axum::Router, peer: Option<PeerIdentity>, remote: SocketAddr) -> PeerService {
        PeerService { app, peer, remote }
    }
}

impl tower::Service<axum::extract::Request> for PeerService {
    type Response = axum::response::Response;
    type Error = Infallible;
    type Future = axum::routing::future::RouteFuture<Infallible>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        <axum::Router as tower::Service<axum::extract::Request>>::poll_ready(&mut self.app, cx)
    }

    fn call(&mut self, mut req: axum::extract::Request) -> Self::Future {
        let extensions = req.extensions_mut();
        extensions.insert(ConnectInfo(self.remote));
        // A client cannot smuggle an identity in: extensions come from the
        // connection only, never from headers.
        match &self.peer {
            Some(peer) => {
                extensions.insert(peer.clone());
            }
            None => {
                extensions.remove::<PeerIdentity>();
            }
        }
        self.app.call(req)
    }
}
