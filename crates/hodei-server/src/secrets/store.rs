//! The `secrets` table: sealed values only (see `0004_secrets.sql`, and
//! `migrations-postgres/0005_auth_secrets.sql` when jobs live in
//! PostgreSQL: then every replica reads and writes the same rows).

use std::collections::HashSet;
use std::path::Path;

use hodei_core::Millis;
use sqlx::postgres::PgPool;
use sqlx::sqlite::SqlitePool;

use super::crypto::Sealed;
use super::{SecretInfo, SecretsError};

/// A row as stored.
pub struct SealedRow {
    pub name: String,
    pub key_id: String,
    pub sealed: Sealed,
}

/// Where the table is.
#[derive(Debug, Clone)]
pub enum Db {
    Sqlite(SqlitePool),
    /// Shared by every replica.
    Postgres(PgPool),
}

/// The data directory's `hodei.db` (WAL, `synchronous = FULL`: a change
/// that returned is on disk), schema brought up to date.
pub async fn open(data_dir: &Path) -> Result<Db, SecretsError> {
    Ok(Db::Sqlite(
        crate::store::open_sqlite_pool(data_dir, 2).await?,
    ))
}

/// name, key id, nonce, ciphertext.
type SealedTuple = (String, String, Vec<u8>, Vec<u8>);

fn sealed_row((name, key_id, nonce, ciphertext): SealedTuple) -> SealedRow {
    SealedRow {
        name,
        key_id,
        sealed: Sealed { nonce, ciphertext },
    }
}

/// `names` as the JSON array `json_each` reads.
fn json_names(names: &[String]) -> String {
    serde_json::Value::from(names.to_vec()).to_string()
}

const EXISTS: [&str; 2] = [
    "SELECT 1 FROM secrets WHERE name = ?1",
    "SELECT 1 FROM secrets WHERE name = $1",
];
const UPSERT: [&str; 2] = [
    "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (name) DO UPDATE SET \
     key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
     updated_at = excluded.updated_at",
    "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $5) ON CONFLICT (name) DO UPDATE SET \
     key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
     updated_at = excluded.updated_at",
];
const LIST: &str = "SELECT name, created_at, updated_at FROM secrets ORDER BY name";
const DELETE: [&str; 2] = [
    "DELETE FROM secrets WHERE name = ?1",
    "DELETE FROM secrets WHERE name = $1",
];
const OTHER_KEYS: [&str; 2] = [
    "SELECT name, key_id, nonce, ciphertext FROM secrets WHERE key_id != ?1",
    "SELECT name, key_id, nonce, ciphertext FROM secrets WHERE key_id <> $1",
];
const RESEAL: [&str; 2] = [
    "UPDATE secrets SET key_id = ?1, nonce = ?2, ciphertext = ?3 WHERE name = ?4",
    "UPDATE secrets SET key_id = $1, nonce = $2, ciphertext = $3 WHERE name = $4",
];

/// Runs `$body` (the same Rust for both databases) with `$pool` the pool
/// and `$d` the index of the dialect's statement in the pairs above
/// (0: SQLite, 1: PostgreSQL).
macro_rules! on_db {
    ($db:expr, |$pool:ident, $d:ident| $body:expr) => {
        match $db {
            Db::Sqlite($pool) => {
                let $d = 0;
                $body
            }
            Db::Postgres($pool) => {
                let $d = 1;
                $body
            }
        }
    };
}

pub async fn put(
    db: &Db,
    name: &str,
    key_id: &str,
    sealed: &Sealed,
    now: Millis,
) -> Result<bool, SecretsError> {
    on_db!(db, |pool, d| {
        let mut tx = pool.begin().await?;
        let existed = sqlx::query(EXISTS[d])
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?
            .is_some();
        sqlx::query(UPSERT[d])
            .bind(name)
            .bind(key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(!existed)
    })
}

pub async fn list(db: &Db) -> Result<Vec<SecretInfo>, SecretsError> {
    let rows: Vec<(String, Millis, Millis)> =
        on_db!(db, |pool, _d| sqlx::query_as(LIST).fetch_all(pool).await?);
    Ok(rows
        .into_iter()
        .map(|(name, created_at, updated_at)| SecretInfo {
            name,
            created_at,
            updated_at,
        })
        .collect())
}

pub async fn delete(db: &Db, name: &str) -> Result<bool, SecretsError> {
    let done = on_db!(db, |pool, d| sqlx::query(DELETE[d])
        .bind(name)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(done > 0)
}

/// Which of `names` are stored.
pub async fn existing(db: &Db, names: &[String]) -> Result<HashSet<String>, SecretsError> {
    let found: Vec<String> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_scalar(
                "SELECT name FROM secrets WHERE name IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_names(names))
            .fetch_all(pool)
            .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT name FROM secrets WHERE name = ANY($1)")
                .bind(names)
                .fetch_all(pool)
                .await?
        }
    };
    Ok(found.into_iter().collect())
}

/// The sealed rows of those of `names` that are stored.
pub async fn sealed(db: &Db, names: &[String]) -> Result<Vec<SealedRow>, SecretsError> {
    let rows: Vec<SealedTuple> = match db {
        Db::Sqlite(pool) => {
            sqlx::query_as(
                "SELECT name, key_id, nonce, ciphertext FROM secrets \
                 WHERE name IN (SELECT value FROM json_each(?1))",
            )
            .bind(json_names(names))
            .fetch_all(pool)
            .await?
        }
        Db::Postgres(pool) => {
            sqlx::query_as(
                "SELECT name, key_id, nonce, ciphertext FROM secrets WHERE name = ANY($1)",
            )
            .bind(names)
            .fetch_all(pool)
            .await?
        }
    };
    Ok(rows.into_iter().map(sealed_row).collect())
}

/// Rows sealed with another key than `key_id`.
pub async fn sealed_with_other_keys(db: &Db, key_id: &str) -> Result<Vec<SealedRow>, SecretsError> {
    let rows: Vec<SealedTuple> = on_db!(db, |pool, d| {
        sqlx::query_as(OTHER_KEYS[d])
            .bind(key_id)
            .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().map(sealed_row).collect())
}

/// Replaces the sealed values of rows, all in one transaction.
pub async fn reseal(
    db: &Db,
    key_id: &str,
    rows: Vec<(String, Sealed)>,
) -> Result<(), SecretsError> {
    on_db!(db, |pool, d| {
        let mut tx = pool.begin().await?;
        for (name, sealed) in &rows {
            sqlx::query(RESEAL[d])
                .bind(key_id)
                .bind(&sealed.nonce)
                .bind(&sealed.ciphertext)
                .bind(name)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
    });
    Ok(())
}
