//! Durable auth state: tokens and worker bindings. In the data directory's
//! SQLite database (`hodei.db`, migration `0003_auth.sql`), or, when jobs
//! live in PostgreSQL, in that database (`0005_auth_secrets.sql`), shared by
//! every replica: a replica that creates or revokes a token announces its id
//! on [`CHANNEL`] in the same transaction, and the others refresh it
//! ([`AuthStore::listen`]).

use std::path::Path;
use std::time::Duration;

use hodei_core::Millis;
use hodei_core::auth::Role;
use sqlx::postgres::{PgListener, PgPool};
use sqlx::sqlite::SqlitePool;
use sqlx::{Postgres, Transaction};
use tokio::sync::mpsc;

use crate::store::StoreError;

/// The channel replicas announce new and revoked tokens on.
const CHANNEL: &str = "hodei_auth";
/// The advisory lock (per transaction) under which the first replica
/// creates the bootstrap tokens.
const BOOTSTRAP_LOCK: i64 = 0x686f_6465_6902;

/// A stored token (the secret's hash, never the secret).
#[derive(Clone)]
pub struct TokenRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub secret_sha256: Vec<u8>,
    pub created_at: Millis,
    pub expires_at: Option<Millis>,
    pub revoked_at: Option<Millis>,
}

impl std::fmt::Debug for TokenRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A token row as selected: id, name, role, hash, created, expires, revoked.
type TokenTuple = (
    String,
    String,
    String,
    Vec<u8>,
    Millis,
    Option<Millis>,
    Option<Millis>,
);

fn token_row(t: TokenTuple) -> Result<TokenRow, StoreError> {
    let (id, name, role, secret_sha256, created_at, expires_at, revoked_at) = t;
    let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
        job_id: format!("(token {id})"),
        message: format!("unknown role {role:?}"),
    })?;
    Ok(TokenRow {
        id,
        name,
        role,
        secret_sha256,
        created_at,
        expires_at,
        revoked_at,
    })
}

const TOKEN_COLUMNS: &str =
    "SELECT id, name, role, secret_sha256, created_at, expires_at, revoked_at FROM auth_tokens";

/// What another replica (or this one) changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenEvent {
    /// The token with this id was created or revoked.
    Changed(String),
    /// Notifications may have been missed: read every token again.
    Resync,
}

#[derive(Debug, Clone)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

#[derive(Debug, Clone)]
pub struct AuthStore {
    db: Db,
}

impl AuthStore {
    /// The data directory's SQLite database.
    pub async fn open(data_dir: &Path) -> Result<AuthStore, StoreError> {
        let pool = crate::store::open_sqlite_pool(data_dir, 1).await?;
        Ok(AuthStore {
            db: Db::Sqlite(pool),
        })
    }

    /// The PostgreSQL database the replicas share (schema already migrated
    /// by the store).
    pub fn postgres(pool: PgPool) -> AuthStore {
        AuthStore {
            db: Db::Postgres(pool),
        }
    }

    /// Whether other orchestrators may change these tables.
    pub fn is_shared(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let sql = format!("{TOKEN_COLUMNS} ORDER BY created_at, id");
        let rows: Vec<TokenTuple> = match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(&sql).fetch_all(pool).await?,
            Db::Postgres(pool) => sqlx::query_as(&sql).fetch_all(pool).await?,
        };
        rows.into_iter().map(token_row).collect()
    }

    /// The token `id`, if it exists.
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row: Option<TokenTuple> = match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_as(&format!("{TOKEN_COLUMNS} WHERE id = ?1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_as(&format!("{TOKEN_COLUMNS} WHERE id = $1"))
                    .bind(id)
                    .fetch_optional(pool)
                    .await?
            }
        };
        row.map(token_row).transpose()
    }

    /// Whether any token exists.
    pub async fn has_tokens(&self) -> Result<bool, StoreError> {
        const SQL: &str = "SELECT EXISTS (SELECT 1 FROM auth_tokens)";
        Ok(match &self.db {
            Db::Sqlite(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
            Db::Postgres(pool) => sqlx::query_scalar(SQL).fetch_one(pool).await?,
        })
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(pool) => {
                insert_sqlite(pool, t).await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                insert_pg(&mut tx, t).await?;
                notify(&mut tx, &t.id).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    /// Inserts `rows` if there is no token yet (the first start); returns
    /// whether it did. On PostgreSQL, replicas starting together take
    /// turns, so only the first one creates tokens.
    pub async fn insert_first(&self, rows: &[&TokenRow]) -> Result<bool, StoreError> {
        const ANY: &str = "SELECT EXISTS (SELECT 1 FROM auth_tokens)";
        match &self.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                if sqlx::query_scalar::<_, bool>(ANY)
                    .fetch_one(&mut *tx)
                    .await?
                {
                    return Ok(false);
                }
                for t in rows {
                    insert_sqlite(&mut *tx, t).await?;
                }
                tx.commit().await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(BOOTSTRAP_LOCK)
                    .execute(&mut *tx)
                    .await?;
                if sqlx::query_scalar::<_, bool>(ANY)
                    .fetch_one(&mut *tx)
                    .await?
                {
                    return Ok(false);
                }
                for t in rows {
                    insert_pg(&mut tx, t).await?;
                    notify(&mut tx, &t.id).await?;
                }
                tx.commit().await?;
            }
        }
        Ok(true)
    }

    pub async fn revoke(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query(
                    "UPDATE auth_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?;
            }
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "UPDATE auth_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                notify(&mut tx, id).await?;
                tx.commit().await?;
            }
        }
        Ok(())
    }

    pub async fn bindings(&self) -> Result<Vec<(String, String)>, StoreError> {
        const SQL: &str = "SELECT worker_id, identity FROM worker_identities";
        Ok(match &self.db {
            Db::Sqlite(pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
            Db::Postgres(pool) => sqlx::query_as(SQL).fetch_all(pool).await?,
        })
    }

    /// Binds `worker_id` to `identity` unless it is bound already (by any
    /// replica); returns the identity it is bound to.
    pub async fn bind(
        &self,
        worker_id: &str,
        identity: &str,
        now: Millis,
    ) -> Result<String, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query(
                    "INSERT INTO worker_identities (worker_id, identity, bound_at) \
                     VALUES (?1, ?2, ?3) ON CONFLICT (worker_id) DO NOTHING",
                )
                .bind(worker_id)
                .bind(identity)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                let bound = sqlx::query_scalar(
                    "SELECT identity FROM worker_identities WHERE worker_id = ?1",
                )
                .bind(worker_id)
                .fetch_one(&mut *tx)
                .await?;
                tx.commit().await?;
                bound
            }
            Db::Postgres(pool) => {
                // The conflict's no-op update returns the stored row too.
                sqlx::query_scalar(
                    "INSERT INTO worker_identities (worker_id, identity, bound_at) \
                     VALUES ($1, $2, $3) ON CONFLICT (worker_id) \
                     DO UPDATE SET identity = worker_identities.identity RETURNING identity",
                )
                .bind(worker_id)
                .bind(identity)
                .bind(now)
                .fetch_one(pool)
                .await?
            }
        })
    }

    /// The worker ids bound to `identity` (by any replica).
    pub async fn workers_of(&self, identity: &str) -> Result<Vec<String>, StoreError> {
        Ok(match &self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar("SELECT worker_id FROM worker_identities WHERE identity = ?1")
                    .bind(identity)
                    .fetch_all(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT worker_id FROM worker_identities WHERE identity = $1")
                    .bind(identity)
                    .fetch_all(pool)
                    .await?
            }
        })
    }

    /// On PostgreSQL: the ids of tokens created or revoked by any replica,
    /// as they are committed, until the receiver is dropped. `None` on
    /// SQLite, where this orchestrator is the only writer.
    pub async fn listen(&self) -> Result<Option<mpsc::Receiver<TokenEvent>>, StoreError> {
        let Db::Postgres(pool) = &self.db else {
            return Ok(None);
        };
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                // `try_recv` reconnects by itself and returns `None` once
                // after the connection was lost: what was sent meanwhile is
                // gone, so the receiver reads every token again.
                let event = tokio::select! {
                    () = tx.closed() => return,
                    received = listener.try_recv() => match received {
                        Ok(Some(n)) => TokenEvent::Changed(n.payload().to_string()),
                        Ok(None) => TokenEvent::Resync,
                        Err(e) => {
                            tracing::warn!(error = %e, "token notifications interrupted; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            TokenEvent::Resync
                        }
                    },
                };
                if tx.send(event).await.is_err() {
                    return;
                }
            }
        });
        Ok(Some(rx))
    }
}

async fn insert_sqlite<'e>(
    executor: impl sqlx::SqliteExecutor<'e>,
    t: &TokenRow,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO auth_tokens (id, name, role, secret_sha256, created_at, expires_at, \
         revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.secret_sha256)
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.revoked_at)
    .execute(executor)
    .await?;
    Ok(())
}

async fn insert_pg(tx: &mut Transaction<'_, Postgres>, t: &TokenRow) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO auth_tokens (id, name, role, secret_sha256, created_at, expires_at, \
         revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(t.role.as_str())
    .bind(&t.secret_sha256)
    .bind(t.created_at)
    .bind(t.expires_at)
    .bind(t.revoked_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Announces a change of token `id` to every replica when `tx` commits.
async fn notify(tx: &mut Transaction<'_, Postgres>, id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
