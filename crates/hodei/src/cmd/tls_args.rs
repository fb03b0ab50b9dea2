//! TLS options: the server's (`hodei server`) and a client's (`hodei agent`
//! and every client command), flattened into their argument structs.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hodei_server::tls::{ClientAuth, ClientCertSettings, TlsSettings};

/// TLS on the orchestrator's port.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// Serve TLS only (https and gRPC over TLS) with this PEM certificate
    /// chain; needs --tls-key.
    #[arg(
        long,
        env = "HODEI_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "HODEI_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Verify client certificates against this PEM CA (mTLS); needs TLS.
    #[arg(
        long,
        env = "HODEI_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_client_ca: Option<PathBuf>,
    /// When a client certificate is required: `workers` (default: for
    /// every HWP call; browsers and the CLI may come without one),
    /// `optional` (verified when presented, never required) or `all` (every
    /// connection, at the handshake).
    #[arg(
        long,
        env = "HODEI_TLS_CLIENT_AUTH",
        value_name = "MODE",
        value_parser = ClientAuth::parse,
        requires = "tls_client_ca"
    )]
    pub tls_client_auth: Option<ClientAuth>,
}

impl ServerTlsArgs {
    pub fn settings(&self) -> Option<TlsSettings> {
        let (cert, key) = (self.tls_cert.clone()?, self.tls_key.clone()?);
        Some(TlsSettings {
            cert,
            key,
            client: self.tls_client_ca.clone().map(|ca| ClientCertSettings {
                ca,
                mode: self.tls_client_auth.unwrap_or_default(),
            }),
        })
    }
}

/// How a client (agent or CLI) talks TLS to an `https://` server URL.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClientTlsArgs {
    /// Trust only this PEM CA for an https:// server (default: the system's
    /// trusted roots).
    #[arg(long, env = "HODEI_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Present this PEM client certificate (mTLS); needs --tls-key.
    #[arg(
        long,
        env = "HODEI_TLS_CLIENT_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(
        long,
        env = "HODEI_TLS_CLIENT_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    // A few small files, read once before any request.
    tokio::task::block_in_place(|| std::fs::read(path))
        .with_context(|| format!("cannot read the {what} {}", path.display()))
}

impl ClientTlsArgs {
    /// For the agent: the files, read at each dial.
    pub fn agent(&self) -> hodei_agent::tls::AgentTls {
        hodei_agent::tls::AgentTls {
            ca: self.tls_ca.clone(),
            cert: self.tls_cert.clone(),
            key: self.tls_key.clone(),
        }
    }

    /// For the HTTP client: the PEM contents.
    pub fn client(&self) -> anyhow::Result<hodei_client::TlsOptions> {
        let ca_pem = match &self.tls_ca {
            Some(path) => Some(read("CA certificate", path)?),
            None => None,
        };
        let identity_pem = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let mut pem = read("client certificate", cert)?;
                pem.push(b'\n');
                pem.extend(read("client key", key)?);
                Some(pem)
            }
            _ => None,
        };
        Ok(hodei_client::TlsOptions {
            ca_pem,
            identity_pem,
        })
    }
}
