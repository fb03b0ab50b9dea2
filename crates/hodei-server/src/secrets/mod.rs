//! Secrets: named values that jobs get as environment variables on the
//! agent, stored encrypted in the data directory's SQLite database
//! (`hodei.db`, table `secrets`, migration `0004_secrets.sql`) or, when
//! jobs live in PostgreSQL, in that database, shared by every replica
//! (which must then all have the same key: a replica whose key cannot open
//! the stored values refuses to start).
//!
//! - [`crypto`]: the key file and AES-256-GCM sealing.
//! - [`Secrets`]: set, list (names only), delete, resolve; key rotation at
//!   start.
//! - [`Delivery`]: fills an outgoing assignment with the values of its
//!   job's secrets and the per-job log limit, at the last moment, so that
//!   the engine, the store and the job record only ever hold names.
//!
//! Nothing here logs or returns a value except [`Secrets::resolve`], whose
//! result goes straight into the assignment message.

mod crypto;
mod delivery;
mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use hodei_core::Millis;
use hodei_core::mask::{validate_secret_name, validate_secret_value};
use sqlx::postgres::PgPool;

pub use hodei_core::api::SecretInfo;

pub use crypto::{DEFAULT_KEY_FILE, KEY_LEN, SecretsKey, read_key_file};
pub use delivery::{DEFAULT_MAX_LOG_BYTES, Delivery, LOG_SLACK_BYTES, cap_log_entry};

use crate::store::StoreError;

/// Where the secrets key comes from.
#[derive(Debug, Clone, Default)]
pub struct SecretsConfig {
    /// The key file (32 bytes, base64 or raw); `None`:
    /// `<data-dir>/secrets.key`, made with a random key at the first start.
    pub key_file: Option<PathBuf>,
    /// Earlier keys: secrets sealed with one of them are re-encrypted with
    /// the current key when the orchestrator starts (key rotation).
    pub old_key_files: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("secrets key file {path}: {message}")]
    KeyFile { path: String, message: String },
    #[error("secrets: {0}")]
    Crypto(String),
    #[error(
        "secrets {secrets} in the shared database are sealed with a key this replica does not \
         have (this replica's key is {key_id}): every replica must use the same secrets key; give \
         each the same --secrets-key-file (and, to rotate keys, the previous key as \
         --secrets-old-key-file)"
    )]
    OtherKey { key_id: String, secrets: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

impl From<sqlx::Error> for SecretsError {
    fn from(e: sqlx::Error) -> SecretsError {
        SecretsError::Store(StoreError::Database(e))
    }
}

/// The secrets of one orchestrator. Cloning shares it.
#[derive(Clone)]
pub struct Secrets {
    inner: Arc<Inner>,
}

struct Inner {
    pool: store::Db,
    key: SecretsKey,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets({:?})", self.inner.key)
    }
}

impl Secrets {
    /// Loads (or makes) the key, opens the table (in `data_dir`'s SQLite
    /// database, or in the PostgreSQL database of `pg`, shared by every
    /// replica) and re-encrypts secrets sealed with one of
    /// `config.old_key_files`. On PostgreSQL, fails when secrets are sealed
    /// with a key this replica does not have.
    pub async fn open(
        data_dir: &Path,
        config: &SecretsConfig,
        pg: Option<PgPool>,
    ) -> Result<Secrets, SecretsError> {
        let (dir, cfg) = (data_dir.to_path_buf(), config.clone());
        let (key, old) = tokio::task::spawn_blocking(move || {
            let (key, path) = crypto::load_or_create(cfg.key_file.as_deref(), &dir)?;
            tracing::info!(path = %path.display(), key_id = key.id(), "secrets key loaded");
            let old = cfg
                .old_key_files
                .iter()
                .map(|p| crypto::read_key_file(p))
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, SecretsError>((key, old))
        })
        .await
        .map_err(|e| SecretsError::Crypto(format!("loading the key failed: {e}")))??;
        let pool = match pg {
            Some(pool) => store::Db::Postgres(pool),
            None => store::open(data_dir).await?,
        };
        let secrets = Secrets {
            inner: Arc::new(Inner { pool, key }),
        };
        secrets.rotate(&old).await?;
        Ok(secrets)
    }

    /// The id of the current key (safe to show).
    pub fn key_id(&self) -> &str {
        self.inner.key.id()
    }

    /// Re-encrypts every secret sealed with one of `old` under the current
    /// key, in one transaction; secrets sealed with a key that is neither
    /// are an error on PostgreSQL (replicas with different keys), a warning
    /// on SQLite.
    async fn rotate(&self, old: &[SecretsKey]) -> Result<(), SecretsError> {
        let key = &self.inner.key;
        let rows = store::sealed_with_other_keys(&self.inner.pool, key.id()).await?;
        let mut updates = Vec::new();
        let mut unknown = Vec::new();
        for row in rows {
            match old.iter().find(|k| k.id() == row.key_id) {
                Some(old_key) => {
                    let value = old_key.open(&row.name, &row.sealed)?;
                    updates.push((row.name.clone(), key.seal(&row.name, &value)?));
                }
                None => unknown.push(format!("{} (key {})", row.name, row.key_id)),
            }
        }
        // Checked before anything changes.
        if !unknown.is_empty() && matches!(self.inner.pool, store::Db::Postgres(_)) {
            return Err(SecretsError::OtherKey {
                key_id: key.id().to_string(),
                secrets: unknown.join(", "),
            });
        }
        if !updates.is_empty() {
            let n = updates.len();
            store::reseal(&self.inner.pool, key.id(), updates).await?;
            tracing::info!(
                secrets = n,
                key_id = key.id(),
                "re-encrypted secrets with the current key"
            );
        }
        if !unknown.is_empty() {
            tracing::warn!(
                secrets = %unknown.join(", "),
                "secrets sealed with a key that is neither the current one nor an old one given \
                 (--secrets-old-key-file): jobs that need them fail until that key is given"
            );
        }
        Ok(())
    }

    /// Stores `value` as secret `name` (replacing it); true when it is new.
    pub async fn put(&self, name: &str, value: &str, now: Millis) -> Result<bool, SecretsError> {
        validate_secret_name(name).map_err(|message| SecretsError::Invalid {
            field: "name",
            message,
        })?;
        validate_secret_value(value).map_err(|message| SecretsError::Invalid {
            field: "value",
            message,
        })?;
        let sealed = self.inner.key.seal(name, value.as_bytes())?;
        store::put(&self.inner.pool, name, self.inner.key.id(), &sealed, now).await
    }

    /// Every secret's name and times, by name.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretsError> {
        store::list(&self.inner.pool).await
    }

    /// Deletes secret `name`; false when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, SecretsError> {
        store::delete(&self.inner.pool, name).await
    }

    /// Refuses names that are malformed or not stored, naming the field
    /// `secrets` (what a submission with unknown secrets gets).
    pub async fn check_known(&self, names: &[String]) -> Result<(), SecretsError> {
        if names.is_empty() {
            return Ok(());
        }
        for name in names {
            validate_secret_name(name).map_err(|message| SecretsError::Invalid {
                field: "secrets",
                message,
            })?;
        }
        let stored = store::existing(&self.inner.pool, names).await?;
        let missing: Vec<&str> = names
            .iter()
            .filter(|n| !stored.contains(*n))
            .map(String::as_str)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        Err(SecretsError::Invalid {
            field: "secrets",
            message: format!(
                "unknown secret{} {}: set {} first (`hodei secret set NAME`)",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                if missing.len() > 1 { "them" } else { "it" },
            ),
        })
    }

    /// The values of `names`, for an assignment. `Err` says which secret is
    /// missing or cannot be decrypted (never a value).
    pub async fn resolve(&self, names: &[String]) -> Result<Vec<(String, String)>, String> {
        let rows = store::sealed(&self.inner.pool, names)
            .await
            .map_err(|e| format!("cannot read the job's secrets: {e}"))?;
        let key = &self.inner.key;
        let mut values = Vec::with_capacity(names.len());
        for name in names {
            let Some(row) = rows.iter().find(|r| &r.name == name) else {
                return Err(format!(
                    "secret {name} does not exist (deleted after the job was submitted?)"
                ));
            };
            if row.key_id != key.id() {
                let hint = match self.inner.pool {
                    store::Db::Postgres(_) => {
                        " (every replica must have the same --secrets-key-file)"
                    }
                    store::Db::Sqlite(_) => "",
                };
                return Err(format!(
                    "secret {name} is sealed with key {}, which this orchestrator does not have{hint}",
                    row.key_id
                ));
            }
            let value = key.open(name, &row.sealed).map_err(|e| e.to_string())?;
            let value =
                String::from_utf8(value).map_err(|_| format!("secret {name} is not UTF-8 text"))?;
            values.push((name.clone(), value));
        }
        Ok(values)
    }
}
