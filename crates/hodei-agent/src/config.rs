//! The agent's settings ([`AgentConfig`]), their parsing helpers and the
//! errors that stop an agent from starting.

use std::path::PathBuf;
use std::time::Duration;

use crate::docker::DockerConfig;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Orchestrator URLs, e.g. `http://127.0.0.1:50051`: replicas the agent
    /// attaches to one at a time, starting with the first, failing over to
    /// the next ([`crate::servers`]).
    pub servers: Vec<String>,
    /// Worker id; unique per agent.
    pub name: String,
    pub labels: Vec<String>,
    pub slots: u32,
    /// Assignments taken beyond `slots`, queued until a slot frees (so the
    /// next job starts without a round trip to the orchestrator); `None`:
    /// as many as the slots (see [`AgentConfig::prefetch()`]). The
    /// orchestrator takes back a queued one when another agent has a free
    /// slot for it, or when a more urgent job would wait behind it.
    pub prefetch: Option<u32>,
    pub work_dir: PathBuf,
    pub keep_work_dirs: bool,
    /// The log spool; `None`: `<work_dir>/spool`.
    pub spool_dir: Option<PathBuf>,
    /// Unacknowledged log bytes the spool holds, all jobs together; output
    /// beyond it is dropped (and the loss marked in the log).
    pub spool_max_bytes: u64,
    /// Reconnect backoff bounds.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Run jobs with an image in Docker containers; `None`: no Docker.
    pub docker: Option<DockerConfig>,
    /// TLS files for an `https://` server (CA to trust, client certificate).
    pub tls: crate::tls::AgentTls,
    /// Join token sent with `Attach` (`authorization: Bearer`).
    pub token: Option<hodei_core::auth::Secret>,
}

impl AgentConfig {
    /// An agent of one orchestrator `server`, named `name`.
    pub fn new(server: impl Into<String>, name: impl Into<String>) -> AgentConfig {
        AgentConfig {
            servers: vec![server.into()],
            name: name.into(),
            labels: Vec::new(),
            slots: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            prefetch: None,
            work_dir: std::env::temp_dir().join("hodei-work"),
            keep_work_dirs: false,
            spool_dir: None,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            docker: None,
            tls: crate::tls::AgentTls::default(),
            token: None,
        }
    }
}

impl AgentConfig {
    /// Assignments the agent takes beyond its slots: as set, else as many
    /// as its slots; at most what an orchestrator takes
    /// ([`hodei_core::engine::MAX_PREFETCH`]).
    pub fn prefetch(&self) -> u32 {
        self.prefetch
            .unwrap_or(self.slots)
            .min(hodei_core::engine::MAX_PREFETCH)
    }

    /// The same agent with these orchestrator URLs (replicas) instead.
    pub fn with_servers(mut self, servers: Vec<String>) -> AgentConfig {
        self.servers = servers;
        self
    }

    /// Where the log spool is.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool_dir
            .clone()
            .unwrap_or_else(|| self.work_dir.join("spool"))
    }
}

/// The default bound of the log spool: 1 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 1 << 30;

/// Parses a byte size: a number with an optional binary suffix `K`, `M`,
/// `G` or `T` (also `KiB`, `MB`, ...: all mean powers of 1024), e.g. `512M`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(digits);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected e.g. 512M or 1G"))?;
    let shift = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("invalid size {s:?}: unknown unit {unit:?}")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no server URL given")]
    NoServer,
    #[error("invalid server URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error("cannot create work directory {path}: {source}")]
    WorkDir {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot open the log spool {path}: {source}")]
    Spool {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}
