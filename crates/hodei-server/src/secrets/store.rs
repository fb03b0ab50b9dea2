//! The `secrets` table: sealed values only (see `0004_secrets.sql`).

use std::collections::HashSet;
use std::path::Path;

use hodei_core::Millis;
use sqlx::Row;
use sqlx::sqlite::{SqlitePool, SqliteRow};

use super::crypto::Sealed;
use super::{SecretInfo, SecretsError};

/// A row as stored.
pub struct SealedRow {
    pub name: String,
    pub key_id: String,
    pub sealed: Sealed,
}

/// The data directory's `hodei.db` (WAL, `synchronous = FULL`: a change
/// that returned is on disk), schema brought up to date.
pub async fn open(data_dir: &Path) -> Result<SqlitePool, SecretsError> {
    Ok(crate::store::open_sqlite_pool(data_dir, 2).await?)
}

fn sealed_row(row: &SqliteRow) -> Result<SealedRow, sqlx::Error> {
    Ok(SealedRow {
        name: row.try_get("name")?,
        key_id: row.try_get("key_id")?,
        sealed: Sealed {
            nonce: row.try_get("nonce")?,
            ciphertext: row.try_get("ciphertext")?,
        },
    })
}

/// `names` as the JSON array `json_each` reads.
fn json_names(names: &[String]) -> String {
    serde_json::Value::from(names.to_vec()).to_string()
}

pub async fn put(
    pool: &SqlitePool,
    name: &str,
    key_id: &str,
    sealed: &Sealed,
    now: Millis,
) -> Result<bool, SecretsError> {
    let mut tx = pool.begin().await?;
    let existed = sqlx::query("SELECT 1 FROM secrets WHERE name = ?1")
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    sqlx::query(
        "INSERT INTO secrets (name, key_id, nonce, ciphertext, created_at, updated_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5) ON CONFLICT (name) DO UPDATE SET \
         key_id = excluded.key_id, nonce = excluded.nonce, ciphertext = excluded.ciphertext, \
         updated_at = excluded.updated_at",
    )
    .bind(name)
    .bind(key_id)
    .bind(&sealed.nonce)
    .bind(&sealed.ciphertext)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(!existed)
}

pub async fn list(pool: &SqlitePool) -> Result<Vec<SecretInfo>, SecretsError> {
    let rows = sqlx::query("SELECT name, created_at, updated_at FROM secrets ORDER BY name")
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(SecretInfo {
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(Into::into)
}

pub async fn delete(pool: &SqlitePool, name: &str) -> Result<bool, SecretsError> {
    let done = sqlx::query("DELETE FROM secrets WHERE name = ?1")
        .bind(name)
        .execute(pool)
        .await?;
    Ok(done.rows_affected() > 0)
}

/// Which of `names` are stored.
pub async fn existing(
    pool: &SqlitePool,
    names: &[String],
) -> Result<HashSet<String>, SecretsError> {
    let rows =
        sqlx::query("SELECT name FROM secrets WHERE name IN (SELECT value FROM json_each(?1))")
            .bind(json_names(names))
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(|r| r.try_get::<String, _>("name"))
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// The sealed rows of those of `names` that are stored.
pub async fn sealed(pool: &SqlitePool, names: &[String]) -> Result<Vec<SealedRow>, SecretsError> {
    let rows = sqlx::query(
        "SELECT name, key_id, nonce, ciphertext FROM secrets \
         WHERE name IN (SELECT value FROM json_each(?1))",
    )
    .bind(json_names(names))
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(sealed_row)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Rows sealed with another key than `key_id`.
pub async fn sealed_with_other_keys(
    pool: &SqlitePool,
    key_id: &str,
) -> Result<Vec<SealedRow>, SecretsError> {
    let rows =
        sqlx::query("SELECT name, key_id, nonce, ciphertext FROM secrets WHERE key_id != ?1")
            .bind(key_id)
            .fetch_all(pool)
            .await?;
    rows.iter()
        .map(sealed_row)
        .collect::<Result<_, _>>()
        .map_err(Into::into)
}

/// Replaces the sealed values of rows, all in one transaction.
pub async fn reseal(
    pool: &SqlitePool,
    key_id: &str,
    rows: Vec<(String, Sealed)>,
) -> Result<(), SecretsError> {
    let mut tx = pool.begin().await?;
    for (name, sealed) in rows {
        sqlx::query("UPDATE secrets SET key_id = ?1, nonce = ?2, ciphertext = ?3 WHERE name = ?4")
            .bind(key_id)
            .bind(&sealed.nonce)
            .bind(&sealed.ciphertext)
            .bind(&name)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(())
}
