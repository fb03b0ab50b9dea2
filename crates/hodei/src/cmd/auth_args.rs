//! Authentication flags: the server's (limits tied to credentials, bootstrap
//! provisioning), and how clients and agents find their token.
//!
//! A client command uses `--token` / `HODEI_TOKEN`, else the file named by
//! `--token-file` / `HODEI_TOKEN_FILE`, else the `admin.token` that a local
//! server wrote in its data directory (`HODEI_DATA_DIR`, default
//! `hodei-data`). An agent uses `--token` / `HODEI_JOIN_TOKEN`, else
//! `--token-file`, else that data directory's `agent.token`.

use std::path::{Path, PathBuf};

use hodei_server::auth::{ADMIN_TOKEN_FILE, AGENT_TOKEN_FILE, AuthConfig, read_token_file};

/// `hodei server` flags about authentication.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerAuthArgs {
    /// Job submissions per token per second (HTTP and seed AssignJob); 0:
    /// unlimited. Over it: 429 / RESOURCE_EXHAUSTED.
    #[arg(long, env = "HODEI_SUBMIT_RATE", default_value_t = 1000.0)]
    pub submit_rate: f64,
    /// Submissions a token may make at once before the rate applies.
    #[arg(long, env = "HODEI_SUBMIT_BURST", default_value_t = 2000.0)]
    pub submit_burst: f64,
    /// Agent sessions open at once per worker identity (join token or
    /// certificate); 0: unlimited.
    #[arg(long, env = "HODEI_MAX_AGENT_SESSIONS", default_value_t = 16_384)]
    pub max_sessions_per_identity: usize,
    /// Serve /metrics without a token (for a scraper on a trusted network).
    #[arg(long)]
    pub public_metrics: bool,
    /// At the first start, create this admin token instead of a random one
    /// (provisioning; `hodei_<id>_<secret>`, id 12 and secret 40 letters or
    /// digits). Ignored once the data directory has tokens.
    #[arg(long, env = "HODEI_BOOTSTRAP_ADMIN_TOKEN", hide_env_values = true)]
    pub bootstrap_admin_token: Option<String>,
    /// At the first start, create this agent join token instead of a random one.
    #[arg(long, env = "HODEI_BOOTSTRAP_JOIN_TOKEN", hide_env_values = true)]
    pub bootstrap_join_token: Option<String>,
}

impl ServerAuthArgs {
    pub fn config(&self) -> AuthConfig {
        AuthConfig {
            submit_rate: self.submit_rate,
            submit_burst: self.submit_burst,
            max_sessions_per_identity: self.max_sessions_per_identity,
            public_metrics: self.public_metrics,
            bootstrap_admin: self.bootstrap_admin_token.clone(),
            bootstrap_agent: self.bootstrap_join_token.clone(),
        }
    }
}

/// The local server's data directory (`HODEI_DATA_DIR`, default `hodei-data`).
fn local_data_dir() -> PathBuf {
    std::env::var_os("HODEI_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("hodei-data"))
}

fn from_file(path: &Path) -> anyhow::Result<String> {
    read_token_file(path).ok_or_else(|| anyhow::anyhow!("no token in {}", path.display()))
}

/// How a client command authenticates.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientAuthArgs {
    /// API token (`hodei_<id>_<secret>`).
    #[arg(long, env = "HODEI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the API token.
    #[arg(long, env = "HODEI_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl ClientAuthArgs {
    /// The token to send, if one is found.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(t) = &self.token {
            return Ok(Some(t.trim().to_string()));
        }
        if let Some(f) = &self.token_file {
            return from_file(f).map(Some);
        }
        Ok(read_token_file(&local_data_dir().join(ADMIN_TOKEN_FILE)))
    }
}

/// How an agent authenticates.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentAuthArgs {
    /// Join token (`hodei token create --role agent`).
    #[arg(long = "token", env = "HODEI_JOIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the join token.
    #[arg(long = "token-file", env = "HODEI_JOIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

impl AgentAuthArgs {
    pub fn token(&self) -> anyhow::Result<Option<hodei_core::auth::Secret>> {
        let token = match (&self.token, &self.token_file) {
            (Some(t), _) => Some(t.trim().to_string()),
            (None, Some(f)) => Some(from_file(f)?),
            (None, None) => read_token_file(&local_data_dir().join(AGENT_TOKEN_FILE)),
        };
        Ok(token.map(hodei_core::auth::Secret::new))
    }
}
