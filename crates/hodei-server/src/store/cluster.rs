//! What a store shared by several orchestrator replicas offers on top of
//! [`Store`](super::Store) (PostgreSQL; see docs/deployment.md).
//!
//! - Every job row names the replica that owns it (`replica`): none while
//!   queued, the writer's once assigned. A replica's writes are fenced: a
//!   row another replica owns is left alone and reported back as lost, and
//!   the engine forgets the job. Two replicas placing one queued job thus
//!   never both dispatch it.
//! - Replicas tell each other what changed through notifications
//!   ([`ClusterEvent`]): new queued jobs, changed jobs (state or log, for
//!   live followers and to drop jobs another replica claimed), and cancels
//!   for jobs a replica owns.
//! - Each replica holds a lease row; a replica whose lease expired is
//!   swept: its attempts pass to the sweeper, whose lease grace then runs
//!   for their workers. An agent that attaches to a replica hands that
//!   replica its attempts ([`Cluster::take_over`]).

use hodei_core::Job;
use hodei_core::engine::{AttemptRef, Writes};
use tokio::sync::mpsc;

use super::StoreError;

/// Payloads of one notification stay under PostgreSQL's 8000-byte limit.
pub const MAX_PAYLOAD: usize = 7_900;

/// A change another replica (or this one) announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// Jobs put in the shared queue (submitted or requeued).
    Queued { from: String, job_ids: Vec<String> },
    /// Jobs whose state or log changed.
    Changed { from: String, job_ids: Vec<String> },
    /// A user asked, through another replica, to cancel jobs `owner` owns.
    Cancel { owner: String, job_ids: Vec<String> },
    /// The notification connection was re-established: notifications may
    /// have been missed, so the shared queue should be read again.
    Resync,
}

/// The replica machinery of a shared store.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// This replica's id (its `server-id`).
    fn replica_id(&self) -> &str;
    /// This replica's slot, which keeps its sequence numbers unique.
    fn seq_slot(&self) -> u16;
    /// Commits like [`Store::commit`](super::Store::commit), fenced: returns
    /// the ids of the jobs whose rows another replica owns (not written).
    async fn commit_fenced(&self, writes: &Writes) -> Result<Vec<String>, StoreError>;
    /// Makes this replica the owner of the attempts `worker` says it runs
    /// (it attached here). Returns the jobs now owned, as stored.
    async fn take_over(&self, worker: &str, running: &[AttemptRef])
    -> Result<Vec<Job>, StoreError>;
    /// If no other replica is sweeping: removes replicas whose lease
    /// expired and takes over their unfinished attempts. Returns them.
    async fn sweep(&self) -> Result<Vec<Job>, StoreError>;
    /// Asks the owner of an unfinished job to cancel it: marks it in the
    /// store and notifies. Returns the job as stored after the change, or
    /// `None` when it is not assigned or running (anymore).
    async fn request_cancel(&self, job_id: &str, reason: &str) -> Result<Option<Job>, StoreError>;
    /// Ids of up to `limit` queued jobs, first to run first (the safety poll).
    async fn queued(&self, limit: u32) -> Result<Vec<String>, StoreError>;
    /// Starts listening; events arrive on the receiver until it is dropped.
    async fn listen(&self) -> Result<mpsc::Receiver<ClusterEvent>, StoreError>;
}

const QUEUED: char = 'q';
const CHANGED: char = 'c';
const CANCEL: char = 'x';

/// Notification payloads announcing `job_ids` (split to fit).
pub fn encode(event: &ClusterEvent) -> Vec<String> {
    let (kind, who, ids) = match event {
        ClusterEvent::Queued { from, job_ids } => (QUEUED, from, job_ids),
        ClusterEvent::Changed { from, job_ids } => (CHANGED, from, job_ids),
        ClusterEvent::Cancel { owner, job_ids } => (CANCEL, owner, job_ids),
        ClusterEvent::Resync => return Vec::new(),
    };
    let mut payloads = Vec::new();
    let header = format!("{kind}{who}");
    let mut current = header.clone();
    for id in ids {
        if current.len() + 1 + id.len() > MAX_PAYLOAD && current.len() > header.len() {
            payloads.push(std::mem::replace(&mut current, header.clone()));
        }
        current.push('\n');
        current.push_str(id);
    }
    if current.len() > header.len() {
        payloads.push(current);
    }
    payloads
}

/// The event a payload announces; `None` for a payload this version does
/// not know (a newer replica's), which is ignored.
pub fn decode(payload: &str) -> Option<ClusterEvent> {
    let mut lines = payload.split('\n');
    let header = lines.next()?;
    let mut chars = header.chars();
    let kind = chars.next()?;
    let who = chars.as_str().to_string();
    let job_ids: Vec<String> = lines
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    match kind {
        QUEUED => Some(ClusterEvent::Queued { from: who, job_ids }),
        CHANGED => Some(ClusterEvent::Changed { from: who, job_ids }),
        CANCEL => Some(ClusterEvent::Cancel {
            owner: who,
            job_ids,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_fit() {
        let ids: Vec<String> = (0..2000).map(|i| format!("job-{i:05}")).collect();
        let event = ClusterEvent::Queued {
            from: "r1".into(),
            job_ids: ids.clone(),
        };
        let payloads = encode(&event);
        assert!(payloads.len() > 1);
        let mut back = Vec::new();
        for p in &payloads {
            assert!(p.len() <= MAX_PAYLOAD);
            match decode(p) {
                Some(ClusterEvent::Queued { from, job_ids }) => {
                    assert_eq!(from, "r1");
                    back.extend(job_ids);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(back, ids);
    }

    #[test]
    fn unknown_or_empty_payloads_are_ignored() {
        assert_eq!(decode(""), None);
        assert_eq!(decode("zfoo\na"), None);
        assert!(
            encode(&ClusterEvent::Changed {
                from: "r".into(),
                job_ids: vec![]
            })
            .is_empty()
        );
        assert_eq!(
            decode("xr2\na\nb"),
            Some(ClusterEvent::Cancel {
                owner: "r2".into(),
                job_ids: vec!["a".into(), "b".into()]
            })
        );
    }
}
