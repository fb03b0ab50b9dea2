//! Transport security on the orchestrator's one port: TLS with rustls (ring
//! provider), optional client certificates (mTLS), and the verified client
//! identity handed to every request as a [`PeerIdentity`].
//!
//! One port serves agents (gRPC HWP) and people (browser, CLI, `curl`), so
//! client certificates are asked for according to a [`ClientAuth`] mode:
//!
//! - `optional`: a presented certificate must verify against the client CA
//!   (otherwise the handshake is refused) and becomes the request's
//!   [`PeerIdentity`]; connections without one are served as well;
//! - `workers` (the default once a client CA is given): as `optional`, and
//!   every HWP call (`/hwp.WorkerService/*`) without a verified client
//!   certificate is refused with `UNAUTHENTICATED`; the dashboard, the HTTP
//!   API, health and reflection stay reachable without one;
//! - `all`: every connection must present a verified certificate; the
//!   handshake is refused otherwise.
//!
//! ALPN offers `h2` and `http/1.1`, so gRPC clients, browsers and `curl`
//! all work. A refused handshake is logged at warn with the peer address and
//! rustls' reason, and never stops the accept loop.

mod identity;
mod listener;
mod require;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

pub use identity::{PeerIdentity, sha256_hex};
pub use listener::{PeerService, TlsConnection, TlsListener, tls_peer};
pub use require::RequirePeerIdentity;

/// When client certificates are required (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientAuth {
    /// Verified when presented; never required.
    Optional,
    /// Required for HWP (`/hwp.WorkerService/*`); verified when presented
    /// elsewhere.
    #[default]
    Workers,
    /// Required for every connection, at the handshake.
    All,
}

impl ClientAuth {
    pub const NAMES: [&'static str; 3] = ["optional", "workers", "all"];

    pub fn parse(s: &str) -> Result<ClientAuth, String> {
        match s {
            "optional" => Ok(ClientAuth::Optional),
            "workers" => Ok(ClientAuth::Workers),
            "all" => Ok(ClientAuth::All),
            _ => Err(format!(
                "unknown client-auth mode {s:?}: use optional, workers or all"
            )),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuth::Optional => "optional",
            ClientAuth::Workers => "workers",
            ClientAuth::All => "all",
        }
    }
}

/// Client certificate verification: the CA that issues client certificates
/// and when a certificate is required.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCertSettings {
    /// PEM file with the CA certificate(s) client certificates must chain to.
    pub ca: PathBuf,
    pub mode: ClientAuth,
}

/// TLS for the orchestrator's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of that certificate.
    pub key: PathBuf,
    /// `None`: no client certificates are asked for.
    pub client: Option<ClientCertSettings>,
}

impl TlsSettings {
    /// Whether HWP calls need a verified client certificate at the request
    /// level (in `all` mode the handshake already ensures it).
    pub fn workers_need_certificate(&self) -> bool {
        self.client
            .as_ref()
            .is_some_and(|c| c.mode != ClientAuth::Optional)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read the {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the {what} {path} is not valid PEM: {message}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("the {what} {path} holds no certificate")]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("the client CA {path} cannot be used: {message}")]
    ClientCa { path: PathBuf, message: String },
    #[error("cannot use the server certificate {cert} with the key {key}: {message}")]
    CertKey {
        cert: PathBuf,
        key: PathBuf,
        message: String,
    },
}

/// Whether an orchestrator listening on `ip` without TLS exposes plain text
/// beyond this machine (then it warns at start-up).
pub fn plaintext_beyond_loopback(ip: IpAddr, tls: bool) -> bool {
    !tls && !ip.is_loopback()
}

/// The crypto provider of every TLS configuration here: ring.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    tokio::fs::read(path)
        .await
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
}

/// Every certificate in a PEM file (at least one).
pub async fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(what, path).await?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            what,
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub async fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "private key";
    let pem = read(what, path).await?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Pem {
        what,
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Reads the files named in `settings` and builds the rustls configuration:
/// TLS 1.2 and 1.3 with ring, ALPN `h2` and `http/1.1`, client
/// certificates per [`ClientAuth`].
pub async fn server_config(settings: &TlsSettings) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let provider = provider();
    let chain = read_certificates("server certificate", &settings.cert).await?;
    let key = read_private_key(&settings.key).await?;
    let verifier = match &settings.client {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(client) => {
            let mut roots = rustls::RootCertStore::empty();
            for ca in read_certificates("client CA", &client.ca).await? {
                roots.add(ca).map_err(|e| TlsError::ClientCa {
                    path: client.ca.clone(),
                    message: e.to_string(),
                })?;
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let builder = match client.mode {
                ClientAuth::All => builder,
                ClientAuth::Optional | ClientAuth::Workers => builder.allow_unauthenticated(),
            };
            builder.build().map_err(|e| TlsError::ClientCa {
                path: client.ca.clone(),
                message: e.to_string(),
            })?
        }
    };
    let cert_key = |message: String| TlsError::CertKey {
        cert: settings.cert.clone(),
        key: settings.key.clone(),
        message,
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| cert_key(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| cert_key(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_beyond_loopback_is_flagged() {
        let any: IpAddr = "0.0.0.0".parse().expect("ip");
        let lan: IpAddr = "192.0.2.10".parse().expect("ip");
        let v4: IpAddr = "127.0.0.1".parse().expect("ip");
        let v6: IpAddr = "::1".parse().expect("ip");
        assert!(plaintext_beyond_loopback(any, false));
        assert!(plaintext_beyond_loopback(lan, false));
        assert!(!plaintext_beyond_loopback(any, true));
        assert!(!plaintext_beyond_loopback(v4, false));
        assert!(!plaintext_beyond_loopback(v6, false));
    }

    #[test]
    fn client_auth_modes_parse() {
        for name in ClientAuth::NAMES {
            assert_eq!(ClientAuth::parse(name).map(ClientAuth::as_str), Ok(name));
        }
        assert!(ClientAuth::parse("required").is_err());
    }

    #[test]
    fn only_optional_mode_lets_workers_in_without_a_certificate() {
        let settings = |mode: Option<ClientAuth>| TlsSettings {
            cert: "c".into(),
            key: "k".into(),
            client: mode.map(|mode| ClientCertSettings {
                ca: "ca".into(),
                mode,
            }),
        };
        assert!(!settings(None).workers_need_certificate());
        assert!(!settings(Some(ClientAuth::Optional)).workers_need_certificate());
        assert!(settings(Some(ClientAuth::Workers)).workers_need_certificate());
        assert!(settings(Some(ClientAuth::All)).workers_need_certificate());
    }

    #[tokio::test]
    async fn unreadable_or_mismatched_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let a = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("a");
        let b = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("b");
        let cert = write("cert.pem", &a.cert.pem());
        let other_key = write("other-key.pem", &b.signing_key.serialize_pem());
        let garbage = write("garbage.pem", "not pem at all");
        let missing = dir.path().join("missing.pem");
        let settings = |cert: &Path, key: &Path| TlsSettings {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            client: None,
        };
        let err = server_config(&settings(&missing, &other_key))
            .await
            .expect_err("missing cert");
        assert!(err.to_string().contains("missing.pem"), "{err}");
        let err = server_config(&settings(&garbage, &other_key))
            .await
            .expect_err("no certificate");
        assert!(err.to_string().contains("holds no certificate"), "{err}");
        let err = server_config(&settings(&cert, &garbage))
            .await
            .expect_err("bad key");
        assert!(err.to_string().contains("garbage.pem"), "{err}");
        let err = server_config(&settings(&cert, &other_key))
            .await
            .expect_err("mismatched key");
        assert!(err.to_string().contains("cert.pem"), "{err}");
        let good_key = write("key.pem", &a.signing_key.serialize_pem());
        let config = server_config(&settings(&cert, &good_key))
            .await
            .expect("config");
        assert_eq!(config.alpn_protocols[0], b"h2");
    }
}
