//! Authentication and authorization on the orchestrator's port.
//!
//! - [`Auth`]: the tokens (cached in memory, hashed on disk), worker
//!   bindings, dashboard sessions and the limits that belong to
//!   credentials (submissions per token per second, sessions per worker
//!   identity); [`may_cancel`]: a job's submitter (recorded on the job
//!   row, in the same commit) decides who may cancel it;
//! - [`middleware`]: one axum layer over every route (HTTP and gRPC alike)
//!   that authenticates the request and checks the role the route table
//!   ([`hodei_core::auth::need_of`]) asks for;
//! - [`api`]: `/api/v1/tokens`; [`session`]: the dashboard's login, session
//!   cookie and CSRF check; `bootstrap`: the first start's tokens;
//!   `follow`: other replicas' token changes.
//!
//! With PostgreSQL, tokens and bindings live in the database every replica
//! shares: a token created or revoked on one replica is announced to the
//! others, which refresh their cache, and a token not in the cache yet is
//! looked up in the database. Dashboard sessions stay with the replica
//! that signed in.
//!
//! The decisions are plain functions in [`hodei_core::auth`]. A token's
//! secret is never logged or stored: only its id and the SHA-256 of its
//! secret are.

pub mod api;
mod bootstrap;
mod follow;
pub mod middleware;
pub mod session;
mod store;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use hodei_core::Millis;
use hodei_core::auth::{
    Binding, Bucket, Refusal, Role, RouteOptions, TOKEN_ID_LEN, TOKEN_SECRET_LEN, TokenInfo, ct_eq,
    parse_token, token_state,
};
use sqlx::postgres::PgPool;

use crate::reactor::now_ms;
use crate::store::{Store, StoreError};
pub(crate) use bootstrap::random_secret;
use bootstrap::sha256;
pub use bootstrap::{ADMIN_TOKEN_FILE, AGENT_TOKEN_FILE, Bootstrap, read_token_file};
use follow::merge;
pub use store::{AuthStore, TokenRow};

/// Settings of authentication and of the limits tied to credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthConfig {
    /// Submissions per token per second (HTTP submit and batch requests,
    /// seed `AssignJob`); 0: unlimited.
    pub submit_rate: f64,
    /// Submissions a token may make at once before the rate applies.
    pub submit_burst: f64,
    /// Agent sessions open at once per worker identity; 0: unlimited.
    pub max_sessions_per_identity: usize,
    /// `/metrics` without a token.
    pub public_metrics: bool,
    /// Tokens to create at the first start instead of random ones
    /// (provisioning): admin, then agent join token.
    pub bootstrap_admin: Option<String>,
    pub bootstrap_agent: Option<String>,
}

impl Default for AuthConfig {
    fn default() -> AuthConfig {
        AuthConfig {
            submit_rate: 1000.0,
            submit_burst: 2000.0,
            max_sessions_per_identity: 16_384,
            public_metrics: false,
            bootstrap_admin: None,
            bootstrap_agent: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot write {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "invalid bootstrap token: expected hodei_<id>_<secret> with a {TOKEN_ID_LEN}-character id and a {TOKEN_SECRET_LEN}-character secret"
    )]
    BadBootstrap,
}

/// How a request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Bearer,
    /// The dashboard's session cookie: state-changing requests need CSRF.
    Cookie,
    /// A verified client certificate (mTLS).
    Certificate,
}

/// Who is calling: put in every authenticated request's extensions.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token id, or `cert:<name>` for a certificate.
    pub id: String,
    pub name: String,
    pub role: Role,
    pub via: Via,
}

impl Principal {
    /// The identity worker ids are bound to.
    pub fn identity(&self) -> String {
        match self.via {
            Via::Certificate => self.id.clone(),
            _ => format!("token:{}", self.id),
        }
    }
}

impl From<&TokenRow> for TokenInfo {
    fn from(t: &TokenRow) -> TokenInfo {
        TokenInfo {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.role,
            created_at: t.created_at,
            expires_at: t.expires_at,
            revoked_at: t.revoked_at,
        }
    }
}

struct Inner {
    store: AuthStore,
    config: AuthConfig,
    data_dir: PathBuf,
    tokens: Mutex<HashMap<String, TokenRow>>,
    bindings: tokio::sync::Mutex<HashMap<String, String>>,
    buckets: Mutex<HashMap<String, Bucket>>,
    sessions_open: Mutex<HashMap<String, usize>>,
    dashboard: session::Sessions,
    lookups: tokio::sync::Semaphore,
}

/// The orchestrator's credentials and what they may do. Cloning shares it.
#[derive(Clone)]
pub struct Auth(Arc<Inner>);

impl Auth {
    /// Opens the auth state: in `data_dir`'s SQLite database, or in the
    /// PostgreSQL database of `pg` (shared by every replica, whose changes
    /// are then followed). At the first start (no token at all) creates an
    /// admin and an agent join token and writes them, 0600, to
    /// [`ADMIN_TOKEN_FILE`] and [`AGENT_TOKEN_FILE`] in `data_dir`.
    pub async fn open(
        data_dir: &Path,
        config: AuthConfig,
        pg: Option<PgPool>,
    ) -> Result<(Auth, Option<Bootstrap>), AuthError> {
        let store = match pg {
            Some(pool) => AuthStore::postgres(pool),
            None => AuthStore::open(data_dir).await?,
        };
        // Listening first: nothing committed after the tokens are read is
        // missed.
        let events = store.listen().await?;
        let bootstrap = bootstrap::first_start(&store, &config, data_dir).await?;
        let tokens: HashMap<String, TokenRow> = store
            .tokens()
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        if bootstrap.is_none() {
            bootstrap::check_provisioned(&config, &tokens);
        }
        let bindings = store.bindings().await?.into_iter().collect();
        let auth = Auth(Arc::new(Inner {
            store,
            data_dir: data_dir.to_path_buf(),
            tokens: Mutex::new(tokens),
            bindings: tokio::sync::Mutex::new(bindings),
            buckets: Mutex::new(HashMap::new()),
            sessions_open: Mutex::new(HashMap::new()),
            dashboard: session::Sessions::default(),
            lookups: tokio::sync::Semaphore::new(follow::MAX_LOOKUPS),
            config,
        }));
        if let Some(events) = events {
            tokio::spawn(follow::follow(Arc::downgrade(&auth.0), events));
        }
        Ok((auth, bootstrap))
    }

    pub fn config(&self) -> &AuthConfig {
        &self.0.config
    }

    pub fn route_options(&self) -> RouteOptions {
        RouteOptions {
            public_metrics: self.0.config.public_metrics,
        }
    }

    pub(crate) fn sessions(&self) -> &session::Sessions {
        &self.0.dashboard
    }

    /// The bootstrap admin token from the data directory, if it is there.
    pub fn local_admin_token(&self) -> Option<String> {
        read_token_file(&self.0.data_dir.join(ADMIN_TOKEN_FILE))
    }

    /// The bootstrap agent join token from the data directory, if it is there.
    pub fn local_agent_token(&self) -> Option<String> {
        read_token_file(&self.0.data_dir.join(AGENT_TOKEN_FILE))
    }

    /// Creates a token; returns it and its full value (shown once).
    pub async fn create(
        &self,
        role: Role,
        name: &str,
        expires_at: Option<Millis>,
    ) -> Result<(TokenInfo, String), AuthError> {
        let (row, value) = bootstrap::new_token(role, name, expires_at, None)?;
        self.0.store.insert_token(&row).await?;
        let info = TokenInfo::from(&row);
        let id = row.id.clone();
        merge(&mut self.lock_tokens(), row);
        tracing::info!(token = %id, %role, name, "token created");
        Ok((info, value))
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, HashMap<String, TokenRow>> {
        self.0.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        let mut list: Vec<TokenInfo> = self.lock_tokens().values().map(TokenInfo::from).collect();
        list.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        list
    }

    /// Revokes a token (durably, then in memory); `None` if unknown.
    pub async fn revoke(&self, id: &str) -> Result<Option<TokenInfo>, AuthError> {
        if !self.lock_tokens().contains_key(id) && self.0.store.is_shared() {
            // Created on another replica a moment ago?
            self.refresh(id).await?;
        }
        if !self.lock_tokens().contains_key(id) {
            return Ok(None);
        }
        let now = now_ms();
        self.0.store.revoke(id, now).await?;
        let mut tokens = self.lock_tokens();
        let Some(row) = tokens.get_mut(id) else {
            return Ok(None);
        };
        row.revoked_at.get_or_insert(now);
        tracing::info!(token = %id, "token revoked");
        Ok(Some(TokenInfo::from(&*row)))
    }

    /// Checks a presented token; the secret is compared in constant time.
    /// With replicas, a token not in the cache is looked up in the
    /// database (another replica may have created it a moment ago).
    pub async fn verify(&self, token: &str) -> Result<Principal, Refusal> {
        match self.verify_cached(token) {
            Err(Refusal::Unknown(id)) if self.0.store.is_shared() => {
                self.look_up(&id).await?;
                self.verify_cached(token)
            }
            checked => checked,
        }
    }

    fn verify_cached(&self, token: &str) -> Result<Principal, Refusal> {
        let parts = parse_token(token).ok_or(Refusal::Malformed)?;
        let tokens = self.lock_tokens();
        let row = tokens
            .get(parts.id)
            .ok_or_else(|| Refusal::Unknown(parts.id.to_string()))?;
        if !ct_eq(&sha256(parts.secret.as_bytes()), &row.secret_sha256) {
            return Err(Refusal::Mismatch(row.id.clone()));
        }
        token_state(&row.id, row.revoked_at, row.expires_at, now_ms())?;
        Ok(Principal {
            id: row.id.clone(),
            name: row.name.clone(),
            role: row.role,
            via: Via::Bearer,
        })
    }

    /// The principal of a token id already verified (a dashboard session),
    /// if it is still valid.
    pub fn still_valid(&self, id: &str) -> Result<Principal, Refusal> {
        let tokens = self.lock_tokens();
        let row = tokens
            .get(id)
            .ok_or_else(|| Refusal::Unknown(id.to_string()))?;
        token_state(&row.id, row.revoked_at, row.expires_at, now_ms())?;
        Ok(Principal {
            id: row.id.clone(),
            name: row.name.clone(),
            role: row.role,
            via: Via::Cookie,
        })
    }

    /// Takes one submission from the token's allowance.
    pub fn take_submission(&self, token_id: &str) -> bool {
        let c = &self.0.config;
        if c.submit_rate <= 0.0 {
            return true;
        }
        let burst = c.submit_burst.max(1.0);
        let now = now_ms();
        let mut buckets = self.0.buckets.lock().unwrap_or_else(|p| p.into_inner());
        buckets
            .entry(token_id.to_string())
            .or_insert_with(|| Bucket::full(burst, now))
            .take(c.submit_rate, burst, now)
    }

    /// Binds `worker_id` to `identity` at its first claim (durably; with
    /// replicas the database decides which claim was first); a claim by
    /// another identity is refused.
    pub async fn bind_worker(&self, worker_id: &str, identity: &str) -> Result<(), BindError> {
        let mut bindings = self.0.bindings.lock().await;
        match hodei_core::auth::bind_worker(bindings.get(worker_id).map(String::as_str), identity) {
            Binding::Same => Ok(()),
            Binding::Conflict => Err(BindError::Conflict),
            Binding::New => {
                let bound = self.0.store.bind(worker_id, identity, now_ms()).await?;
                let same = bound == identity;
                bindings.insert(worker_id.to_string(), bound);
                if same {
                    Ok(())
                } else {
                    Err(BindError::Conflict)
                }
            }
        }
    }

    /// The worker ids bound to `identity` (with replicas, by any of them).
    pub async fn workers_of(&self, identity: &str) -> Vec<String> {
        if self.0.store.is_shared() {
            match self.0.store.workers_of(identity).await {
                Ok(workers) => return workers,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read worker bindings; using this replica's")
                }
            }
        }
        let bindings = self.0.bindings.lock().await;
        bindings
            .iter()
            .filter(|(_, i)| *i == identity)
            .map(|(w, _)| w.clone())
            .collect()
    }

    /// Opens an agent session for `identity`, within its limit; the
    /// session counts until the guard is dropped.
    pub fn open_session(&self, identity: &str) -> Result<SessionGuard, usize> {
        let max = self.0.config.max_sessions_per_identity;
        let mut open = self
            .0
            .sessions_open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let n = open.entry(identity.to_string()).or_default();
        if max > 0 && *n >= max {
            return Err(max);
        }
        *n += 1;
        Ok(SessionGuard {
            auth: self.clone(),
            identity: identity.to_string(),
        })
    }
}

/// Whether `who` may cancel `job_id`: the rule of
/// [`hodei_core::auth::may_cancel`] applied to the job's submitter, read
/// from the job's row. An unknown job is allowed through: the engine
/// answers not found.
pub async fn may_cancel(
    store: &dyn Store,
    who: &Principal,
    job_id: &str,
) -> Result<bool, StoreError> {
    if who.role == Role::Admin {
        return Ok(true);
    }
    Ok(match store.get_job(job_id).await? {
        None => true,
        Some(job) => hodei_core::auth::may_cancel(who.role, &who.id, job.submitter.as_deref()),
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("the worker id is registered to another identity")]
    Conflict,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One open agent session of an identity.
pub struct SessionGuard {
    auth: Auth,
    identity: String,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut open = self
            .auth
            .0
            .sessions_open
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = open.get_mut(&self.identity) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.identity);
            }
        }
    }
}
