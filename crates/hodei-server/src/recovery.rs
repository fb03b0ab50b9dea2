//! Rebuilding the orchestrator's in-memory state from the store: at start,
//! and again after the store was unreachable (a commit failed, so the
//! engine's state may be ahead of what is durable and is thrown away).

use std::collections::HashMap;

use hodei_core::engine::{Engine, EngineConfig};
use hodei_core::log::StreamTotal;

use crate::reactor::now_ms;
use crate::store::{LogQuery, Store, StoreError};

/// An engine holding every unfinished job and known worker of `store`.
pub async fn recover_engine(store: &dyn Store, config: EngineConfig) -> Result<Engine, StoreError> {
    let recovery = store.recover().await?;
    tracing::info!(
        unfinished = recovery.unfinished.len(),
        workers = recovery.workers.len(),
        "recovered state from the store"
    );
    let totals = stored_totals(store, &recovery.log_ends).await?;
    let slot = store.cluster().map(|c| c.seq_slot());
    Ok(Engine::recover(
        config,
        recovery.unfinished,
        &totals,
        recovery.workers,
        recovery.max_seq,
        now_ms(),
    )
    .with_seq_slot(slot))
}

/// Size and checksum of the stored log of each unfinished attempt, read back
/// from the store, so that results reported after a restart are verified
/// against everything stored, not only what arrived since.
async fn stored_totals(
    store: &dyn Store,
    log_ends: &HashMap<(String, u32), [u64; 2]>,
) -> Result<HashMap<(String, u32), [StreamTotal; 2]>, StoreError> {
    let mut totals = HashMap::new();
    for ((job_id, attempt), ends) in log_ends {
        let sums = attempt_totals(store, job_id, *attempt, Some(*ends)).await?;
        totals.insert((job_id.clone(), *attempt), sums);
    }
    Ok(totals)
}

/// Size and checksum of the stored log of one attempt, up to `ends` (the
/// stored ends, when known) or all of it.
pub async fn attempt_totals(
    store: &dyn Store,
    job_id: &str,
    attempt: u32,
    ends: Option<[u64; 2]>,
) -> Result<[StreamTotal; 2], StoreError> {
    let mut sums = [StreamTotal::default(); 2];
    let mut query = LogQuery {
        job_id: job_id.to_string(),
        attempt,
        stream: None,
        from: [0, 0],
        max_bytes: 4 * 1024 * 1024,
    };
    while ends != Some(query.from) {
        let chunks = store.read_logs(&query).await?;
        if chunks.is_empty() {
            break;
        }
        for chunk in chunks {
            let i = chunk.stream.index();
            sums[i] = sums[i].append(&chunk.data);
            query.from[i] = chunk.offset + chunk.data.len() as u64;
        }
    }
    Ok(sums)
}
