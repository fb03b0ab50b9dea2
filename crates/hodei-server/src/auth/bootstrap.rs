//! The first start: an admin token and an agent join token, random or
//! provisioned (`HODEI_BOOTSTRAP_ADMIN_TOKEN`, `HODEI_BOOTSTRAP_JOIN_TOKEN`),
//! written 0600 to the data directory. On PostgreSQL it is the first start
//! of the database: replicas starting together take turns
//! ([`AuthStore::insert_first`]), the first creates the tokens and the
//! others find them, so nothing is created twice and provisioned tokens
//! work on every replica.

use std::collections::HashMap;
use std::path::Path;

use hodei_core::Millis;
use hodei_core::auth::{Role, TOKEN_ID_LEN, TOKEN_SECRET_LEN, parse_token};

use super::{AuthConfig, AuthError, AuthStore, TokenRow};
use crate::reactor::now_ms;

/// File in the data directory holding the bootstrap admin token (0600).
pub const ADMIN_TOKEN_FILE: &str = "admin.token";
/// File in the data directory holding the bootstrap agent join token (0600).
pub const AGENT_TOKEN_FILE: &str = "agent.token";

/// The bootstrap tokens created at a first start.
#[derive(Clone)]
pub struct Bootstrap {
    /// The admin token, to print once (`None` when provisioned by config).
    pub print_admin: Option<String>,
}

pub(super) fn sha256(bytes: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, bytes)
        .as_ref()
        .to_vec()
}

/// `n` random lowercase alphanumerics from the system's secure generator.
fn random_alnum(n: usize) -> String {
    use ring::rand::SecureRandom;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let rng = ring::rand::SystemRandom::new();
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        if rng.fill(&mut buf).is_err() {
            // The OS generator failing is not recoverable: no weak fallback.
            panic!("the system random number generator failed");
        }
        for b in buf {
            // 252 = 7 × 36: rejection sampling keeps the choice uniform.
            if b < 252 && out.len() < n {
                out.push(ALPHABET[(b % 36) as usize] as char);
            }
        }
    }
    out
}

/// A new random secret (session ids, CSRF tokens).
pub(crate) fn random_secret() -> String {
    random_alnum(TOKEN_SECRET_LEN)
}

/// A new token row and the token's full value: `value` when given (a
/// provisioned token), else random.
pub(super) fn new_token(
    role: Role,
    name: &str,
    expires_at: Option<Millis>,
    value: Option<&str>,
) -> Result<(TokenRow, String), AuthError> {
    let (id, secret) = match value {
        Some(v) => {
            let parts = parse_token(v).ok_or(AuthError::BadBootstrap)?;
            (parts.id.to_string(), parts.secret.to_string())
        }
        None => (random_alnum(TOKEN_ID_LEN), random_alnum(TOKEN_SECRET_LEN)),
    };
    let row = TokenRow {
        id: id.clone(),
        name: name.to_string(),
        role,
        secret_sha256: sha256(secret.as_bytes()),
        created_at: now_ms(),
        expires_at,
        revoked_at: None,
    };
    Ok((row, format!("hodei_{id}_{secret}")))
}

async fn write_secret_file(path: &Path, token: &str) -> Result<(), AuthError> {
    use tokio::io::AsyncWriteExt;
    let err = |source| AuthError::File {
        path: path.display().to_string(),
        source,
    };
    let mut options = tokio::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(path).await.map_err(err)?;
    file.write_all(format!("{token}\n").as_bytes())
        .await
        .map_err(err)?;
    file.sync_all().await.map_err(err)?;
    Ok(())
}

/// Reads a token file (first line), if there is one.
pub fn read_token_file(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.lines().next().map(|l| l.trim().to_string()))
        .filter(|s| !s.is_empty())
}

/// At the first start (no token at all), creates the admin and agent join
/// tokens and writes them to [`ADMIN_TOKEN_FILE`] and [`AGENT_TOKEN_FILE`]
/// in `data_dir`. `None` when there were tokens already (made by an
/// earlier start or by another replica).
pub(super) async fn first_start(
    store: &AuthStore,
    config: &AuthConfig,
    data_dir: &Path,
) -> Result<Option<Bootstrap>, AuthError> {
    if store.has_tokens().await? {
        return Ok(None);
    }
    let provisioned = config.bootstrap_admin.as_deref();
    let admin = new_token(Role::Admin, "bootstrap-admin", None, provisioned)?;
    let agent_value = config.bootstrap_agent.as_deref();
    let agent = new_token(Role::Agent, "bootstrap-agent", None, agent_value)?;
    if !store.insert_first(&[&admin.0, &agent.0]).await? {
        // Another replica got there first.
        return Ok(None);
    }
    tokio::fs::create_dir_all(data_dir)
        .await
        .map_err(|source| AuthError::File {
            path: data_dir.display().to_string(),
            source,
        })?;
    write_secret_file(&data_dir.join(ADMIN_TOKEN_FILE), &admin.1).await?;
    write_secret_file(&data_dir.join(AGENT_TOKEN_FILE), &agent.1).await?;
    tracing::info!(
        admin = %admin.0.id,
        agent = %agent.0.id,
        dir = %data_dir.display(),
        "first start: created an admin token and an agent join token (secrets in {ADMIN_TOKEN_FILE} and {AGENT_TOKEN_FILE}, mode 0600)"
    );
    Ok(Some(Bootstrap {
        print_admin: provisioned.is_none().then_some(admin.1),
    }))
}

/// Warns about provisioned bootstrap tokens that are not stored as given
/// (the database had other tokens at its first start): they do not work.
pub(super) fn check_provisioned(config: &AuthConfig, tokens: &HashMap<String, TokenRow>) {
    let given = [
        ("HODEI_BOOTSTRAP_ADMIN_TOKEN", &config.bootstrap_admin),
        ("HODEI_BOOTSTRAP_JOIN_TOKEN", &config.bootstrap_agent),
    ];
    for (what, value) in given {
        let Some(value) = value else { continue };
        let stored = parse_token(value).and_then(|parts| {
            let row = tokens.get(parts.id)?;
            hodei_core::auth::ct_eq(&sha256(parts.secret.as_bytes()), &row.secret_sha256)
                .then_some(())
        });
        if stored.is_none() {
            tracing::warn!(
                "the bootstrap token given as {what} (or its flag) is not a token of this \
                 orchestrator: bootstrap tokens are only created at the first start, and the \
                 database already had tokens; create tokens with `hodei token create`"
            );
        }
    }
}
