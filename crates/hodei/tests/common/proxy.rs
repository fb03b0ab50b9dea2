//! A TCP proxy for fault injection. It accepts on a loopback port of its
//! own and forwards every connection to an upstream address, both ways.
//! [`Proxy::blackhole`] partitions the network: nothing is forwarded in
//! either direction, but no socket is closed and no byte is dropped (the
//! bytes wait, as in a network that stops delivering packets for a while);
//! [`Proxy::heal`] resumes forwarding, held bytes first.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy. Dropping it closes the listener and every connection.
pub struct Proxy {
    addr: SocketAddr,
    blackholed: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Starts a proxy to `upstream` (`host:port`) on `127.0.0.1:0`.
    pub async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy bind");
        let addr = listener.local_addr().expect("proxy address");
        let (blackholed, _) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            upstream.to_string(),
            blackholed.clone(),
            accepted.clone(),
        ));
        Proxy {
            addr,
            blackholed,
            accepted,
            task,
        }
    }

    /// The URL to give a client instead of the upstream's.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops forwarding in both directions, holding the bytes.
    pub fn blackhole(&self) {
        self.blackholed.send_replace(true);
    }

    /// Resumes forwarding.
    pub fn heal(&self) {
        self.blackholed.send_replace(false);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Dropping the accept task drops its JoinSet, which aborts every
        // connection's pumps and closes their sockets.
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: String,
    blackholed: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            conn = listener.accept() => {
                let Ok((client, _)) = conn else { continue };
                accepted.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                let (a, b) = (blackholed.subscribe(), blackholed.subscribe());
                conns.spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return; // Upstream down: the client sees the connection close.
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (client_rx, client_tx) = client.into_split();
                    let (server_rx, server_tx) = server.into_split();
                    tokio::join!(pump(client_rx, server_tx, a), pump(server_rx, client_tx, b));
                });
            }
            // Reap finished connections so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Copies `from` to `to` while the network is up. While it is blackholed,
/// a chunk already read is held, and nothing more is read (the rest waits
/// in the kernel's buffers). End of stream and errors are forwarded too,
/// but only once the partition heals.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut blackholed: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if blackholed.wait_for(|b| !*b).await.is_err() {
            return;
        }
        let read = from.read(&mut buf).await;
        if blackholed.wait_for(|b| !*b).await.is_err() {
            return;
        }
        match read {
            Ok(n) if n > 0 => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            _ => {
                let _ = to.shutdown().await;
                return;
            }
        }
    }
}
