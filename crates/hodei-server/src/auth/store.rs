//! Durable auth state: tokens and worker bindings, in the data
//! directory's SQLite database (`hodei.db`, migration `0003_auth.sql`). It
//! is kept there even when jobs live in PostgreSQL: credentials stay with
//! the orchestrator that checks them.

use std::path::Path;

use hodei_core::Millis;
use hodei_core::auth::Role;
use sqlx::Row;
use sqlx::sqlite::SqlitePool;

use crate::store::StoreError;

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

#[derive(Debug, Clone)]
pub struct AuthStore {
    pool: SqlitePool,
}

impl AuthStore {
    pub async fn open(data_dir: &Path) -> Result<AuthStore, StoreError> {
        let pool = crate::store::open_sqlite_pool(data_dir, 1).await?;
        Ok(AuthStore { pool })
    }

    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, name, role, secret_sha256, created_at, expires_at, revoked_at \
             FROM auth_tokens ORDER BY created_at, id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get("id")?;
            let role: String = row.try_get("role")?;
            let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt {
                job_id: format!("(token {id})"),
                message: format!("unknown role {role:?}"),
            })?;
            out.push(TokenRow {
                name: row.try_get("name")?,
                role,
                secret_sha256: row.try_get("secret_sha256")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                revoked_at: row.try_get("revoked_at")?,
                id,
            });
        }
        Ok(out)
    }

    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
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
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn revoke(&self, id: &str, now: Millis) -> Result<(), StoreError> {
        sqlx::query("UPDATE auth_tokens SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn bindings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let rows = sqlx::query("SELECT worker_id, identity FROM worker_identities")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("worker_id")?, r.try_get("identity")?)))
            .collect()
    }

    pub async fn bind(
        &self,
        worker_id: &str,
        identity: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO worker_identities (worker_id, identity, bound_at) VALUES (?1, ?2, ?3)",
        )
        .bind(worker_id)
        .bind(identity)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
