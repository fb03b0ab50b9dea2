//! The store backends under test: each test runs once on SQLite (a fresh
//! data directory) and once on PostgreSQL (a fresh database on a private
//! server started by `pg-harness`).

#![allow(dead_code)]

use std::sync::Arc;

use hodei_server::store::{PgStore, SqliteStore, Store};
use tempfile::TempDir;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One empty database of a backend.
pub struct TestDb {
    pub backend: Backend,
    pub dir: TempDir,
    pub pg_url: Option<String>,
    /// The lease holder id of every store opened on this database.
    pub holder: String,
}

impl TestDb {
    pub async fn new(backend: Backend) -> TestDb {
        let pg_url = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(
                tokio::task::spawn_blocking(|| pg_harness::shared().create_database())
                    .await
                    .expect("join")
                    .expect("create a PostgreSQL database"),
            ),
        };
        TestDb {
            backend,
            dir: TempDir::new().expect("temp dir"),
            pg_url,
            holder: format!("test-{}", std::process::id()),
        }
    }

    /// Opens a store on this database (a new connection pool each time).
    pub async fn open(&self) -> Arc<dyn Store> {
        match &self.pg_url {
            None => Arc::new(SqliteStore::open(self.dir.path()).await.expect("open")),
            Some(url) => Arc::new(PgStore::connect(url, &self.holder).await.expect("connect")),
        }
    }

    /// Runs one SQL statement outside the store (to plant corrupt rows).
    pub async fn raw_sql(&self, sql: &str) {
        use sqlx::Connection;
        match &self.pg_url {
            None => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(self.dir.path().join("hodei.db"));
                let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&options)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
                conn.close().await.expect("close");
            }
            Some(url) => {
                let mut conn = sqlx::postgres::PgConnection::connect(url)
                    .await
                    .expect("connect");
                sqlx::query(sql).execute(&mut conn).await.expect(sql);
                conn.close().await.expect("close");
            }
        }
    }
}

/// Declares `#[tokio::test]`s running each named `async fn(Backend)` on
/// both backends: `sqlite::name` and `postgres::name`.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::support::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name($crate::support::Backend::Postgres).await
            })*
        }
    };
}
