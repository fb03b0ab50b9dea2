//! TLS to the orchestrator: which CA to trust and which client certificate
//! to present (mTLS). The files are read again at every dial, so renewed
//! certificates are used from the next reconnect on, without a restart.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The agent's TLS files. All `None`: for an `https://` server the system's
/// trusted roots and no client certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentTls {
    /// PEM CA certificate(s) to trust instead of the system's roots.
    pub ca: Option<PathBuf>,
    /// PEM client certificate and its key, presented to the server.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl AgentTls {
    pub fn is_empty(&self) -> bool {
        self == &AgentTls::default()
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
    #[error("a client certificate needs its key, and a key its certificate")]
    HalfIdentity,
    #[error("invalid TLS settings for {url}: {message}")]
    Config { url: String, message: String },
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

/// Whether `url` asks for TLS.
pub fn is_https(url: &str) -> bool {
    url.get(..8)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("https://"))
}

/// `endpoint` with TLS set up from `tls` (reading its files now) when `url`
/// is `https://`; unchanged for `http://`.
pub async fn configure(
    endpoint: Endpoint,
    url: &str,
    tls: &AgentTls,
) -> Result<Endpoint, TlsError> {
    if !is_https(url) {
        return Ok(endpoint);
    }
    let mut config = ClientTlsConfig::new();
    config = match &tls.ca {
        Some(ca) => config.ca_certificate(Certificate::from_pem(read("CA certificate", ca).await?)),
        None => config.with_native_roots(),
    };
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            let cert = read("client certificate", cert).await?;
            let key = read("client key", key).await?;
            config = config.identity(Identity::from_pem(cert, key));
        }
        (None, None) => {}
        _ => return Err(TlsError::HalfIdentity),
    }
    endpoint.tls_config(config).map_err(|e| TlsError::Config {
        url: url.to_string(),
        message: error_chain(&e),
    })
}

/// Dials `endpoint`, first re-reading the TLS files (so rotated
/// certificates are picked up at every reconnect).
pub async fn connect(endpoint: &Endpoint, url: &str, tls: &AgentTls) -> Result<Channel, String> {
    let endpoint = configure(endpoint.clone(), url, tls)
        .await
        .map_err(|e| e.to_string())?;
    endpoint.connect().await.map_err(|e| error_chain(&e))
}

/// An error and its causes, `: `-separated (tonic's own message is only
/// "transport error"; the cause says e.g. which certificate was refused).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_is_recognised_in_any_case() {
        assert!(is_https("https://orchestrator:50051"));
        assert!(is_https("HTTPS://orchestrator:50051"));
        assert!(!is_https("http://127.0.0.1:50051"));
        assert!(!is_https("https:/"));
    }

    #[tokio::test]
    async fn missing_files_and_half_identities_are_refused() {
        let endpoint = Endpoint::from_static("https://127.0.0.1:1");
        let missing = AgentTls {
            ca: Some("/nonexistent/ca.pem".into()),
            ..AgentTls::default()
        };
        let err = configure(endpoint.clone(), "https://127.0.0.1:1", &missing)
            .await
            .expect_err("missing CA");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let dir = tempfile::tempdir().expect("tempdir");
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, "x").expect("write");
        let half = AgentTls {
            ca: None,
            cert: Some(cert),
            key: None,
        };
        assert!(matches!(
            configure(endpoint.clone(), "https://127.0.0.1:1", &half).await,
            Err(TlsError::HalfIdentity)
        ));
        // Plain http ignores TLS files altogether.
        assert!(
            configure(endpoint, "http://127.0.0.1:1", &missing)
                .await
                .is_ok()
        );
    }
}
