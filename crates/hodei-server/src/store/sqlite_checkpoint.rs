//! WAL checkpoints off the commit path.
//!
//! By default SQLite checkpoints from inside a commit once the WAL holds
//! 1,000 pages: the committing connection copies the WAL into the database
//! file and fsyncs it while the next batch of changes waits. With large log
//! chunks that happened every few commits, and the checkpoints were 14 % of
//! the server's time in the logs benchmark, all of it on the one thread
//! that commits. So the store's writer does not checkpoint
//! (`wal_autocheckpoint = 0`); a task with a connection of its own runs a
//! PASSIVE checkpoint every [`INTERVAL`], which never blocks the writer or
//! the readers, on the other core. A checkpoint that readers keep from
//! finishing leaves the WAL growing; past [`RESTART_FRAMES`] frames a
//! RESTART checkpoint waits for them (and holds the writer back meanwhile)
//! so that the WAL starts over.
//!
//! Durability does not change: a commit is on disk when it is in the WAL
//! (`synchronous = FULL` fsyncs it); checkpoints only move pages from the
//! WAL into the database file.

use std::time::Duration;

use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::StoreError;

/// How often the WAL is checkpointed.
pub const INTERVAL: Duration = Duration::from_millis(100);
/// WAL frames (pages, 4 KiB) past which a checkpoint waits for readers.
pub const RESTART_FRAMES: i64 = 16 * 1024;

/// The background checkpointer; stops when stopped or dropped.
#[derive(Debug)]
pub struct Checkpointer {
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Connects with `options` (read-write) and starts checkpointing.
    pub async fn start(options: SqliteConnectOptions) -> Result<Checkpointer, StoreError> {
        let mut conn = options.connect().await?;
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(INTERVAL) => {}
                    // Stopped, or the store was dropped.
                    _ = stopped.changed() => break,
                }
                checkpoint(&mut conn).await;
            }
            // What is left in the WAL is checkpointed by the last
            // connection to close (SQLite does that on close).
            if let Err(e) = conn.close().await {
                tracing::debug!(error = %e, "closing the checkpoint connection");
            }
        });
        Ok(Checkpointer {
            stop,
            task: Some(task),
        })
    }

    /// Stops checkpointing and closes the connection.
    pub async fn stop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

async fn checkpoint(conn: &mut sqlx::SqliteConnection) {
    let passive: Result<(i64, i64, i64), _> = sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)")
        .fetch_one(&mut *conn)
        .await;
    match passive {
        Ok((_, frames, done)) if frames > RESTART_FRAMES && done < frames => {
            tracing::debug!(
                frames,
                done,
                "the WAL keeps growing: checkpoint waits for readers"
            );
            if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(RESTART)")
                .execute(&mut *conn)
                .await
            {
                tracing::warn!(error = %e, "WAL checkpoint (restart) failed");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
    }
}
