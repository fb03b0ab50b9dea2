//! Opening the outbox: the spool locked, what a previous agent left in it
//! recovered (see [`crate::recover`]), its results offered again.

use std::io;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{Notify, watch};
use tracing::warn;

use super::late_sync::LateSyncs;
use super::send::wire_result;
use super::stream::StreamState;
use super::{Entry, Outbox, RecoverySummary, State};
use crate::janitor::Janitor;
use crate::recover::open_spool;
use crate::spool::Recycler;

impl Outbox {
    /// Opens (and locks) the spool in `spool_dir`, holding at most
    /// `max_bytes` unacknowledged bytes, and recovers what a previous agent
    /// left there.
    pub async fn open(spool_dir: PathBuf, max_bytes: u64) -> io::Result<(Outbox, RecoverySummary)> {
        let dir = spool_dir.clone();
        let (lock, recovery, recycler, synced) = tokio::task::spawn_blocking(move || {
            let (lock, recovery) = open_spool(&dir)?;
            // A previous agent may have recorded these results without
            // fsync (see `late_sync.rs`): durable before they are offered
            // again, as every result offered without a session is.
            let mut synced = 0;
            for r in &recovery.resumed {
                match r.files.sync_result([true, true]) {
                    Ok(done) => synced += u64::from(done),
                    Err(e) => {
                        warn!(job = r.meta.job_id, error = %e, "cannot make a recovered result durable")
                    }
                }
            }
            // After recovery, which leaves the pool alone: it is emptied here.
            let recycler = Recycler::open(&dir)?;
            Ok::<_, io::Error>((lock, recovery, recycler, synced))
        })
        .await
        .map_err(io::Error::other)??;
        let mut state = State::default();
        let mut summary = RecoverySummary {
            abandoned: recovery.abandoned,
            discarded: recovery.discarded,
            ..RecoverySummary::default()
        };
        for r in recovery.resumed {
            let Some(rec) = r.meta.result.clone() else {
                continue;
            };
            let (cancel, _) = watch::channel(false);
            let mut e = Entry::new(r.meta.attempt, r.meta.base, cancel);
            let totals = [rec.stdout, rec.stderr];
            for (i, sb) in e.streams.iter_mut().enumerate() {
                let (from, t) = (r.resume[i], totals[i]);
                *sb = StreamState::on_disk(r.meta.base[i], from, from, t.bytes, t.crc32c);
            }
            e.pid = r.meta.process.as_ref().map(|p| p.pid);
            e.result = Some(wire_result(
                &r.meta.job_id,
                r.meta.attempt,
                r.meta.base,
                &rec,
            ));
            e.files = Some(Arc::new(r.files));
            state.unacked += e.unacked();
            summary
                .resumed
                .push((r.meta.job_id.clone(), r.meta.attempt));
            state.jobs.insert(r.meta.job_id, e);
        }
        let janitor = Janitor::new();
        let outbox = Outbox {
            state: Mutex::new(state),
            ready: Notify::new(),
            acked: Notify::new(),
            spool: spool_dir,
            recycler: Arc::new(recycler),
            syncs: Arc::new(LateSyncs::new(janitor.clone(), synced)),
            janitor,
            max_bytes,
            _lock: lock,
        };
        Ok((outbox, summary))
    }
}
