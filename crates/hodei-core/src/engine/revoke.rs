//! Taking back prefetched assignments.
//!
//! A job an agent holds beyond its slots waits there for one of them,
//! however long the jobs before it run. When another worker has a free slot
//! that fits it (a slot no queued job took), the engine asks the agent to
//! give the job back. The agent answers `Rejected` if it has not started
//! it: the job is queued again, without using one of its retries, and the
//! next dispatch gives it to the free slot. If it had started, the agent
//! ignores the request and the slot stays free for the next candidate.

use std::cmp::Reverse;

use super::{Engine, Output, SessionId, ToAgent};
use crate::job::JobState;
use crate::scheduler::{QueueKey, QueuedJob, revocations};

/// Why the job goes back to the queue, as its record says.
const REASON: &str = "taken back from the agent's prefetch queue for a free slot elsewhere";

impl Engine {
    /// Looks for jobs waiting in agents' prefetch queues that free slots
    /// elsewhere can run, and asks their agents for them.
    pub(super) fn revoke_waiting(&mut self, out: &mut Output) {
        // Take-backs that resolved: rejected, started, finished or lost.
        let jobs = &self.jobs;
        self.revoking.retain(|id, attempt| {
            jobs.get(id)
                .is_some_and(|l| l.job.state == JobState::Assigned && l.job.attempt == *attempt)
        });
        let views = self.worker_views();
        if !views.iter().any(|v| !v.draining && v.free_slots > 0) {
            return;
        }
        let queued = |job: &crate::job::Job| QueuedJob {
            id: job.id.clone(),
            requires: job.spec.required_labels().map(str::to_string).collect(),
        };
        let mut waiting: Vec<(QueueKey, QueuedJob, SessionId, u32)> = Vec::new();
        for w in self.workers.values() {
            let Some(session) = w.session else { continue };
            let beyond = (w.jobs.len() as u32).saturating_sub(w.slots) as usize;
            if beyond == 0 {
                continue;
            }
            // The agent gives its slots in the order assignments arrived,
            // so the attempts that wait are the newest not started.
            let mut unstarted: Vec<&crate::job::Job> = w
                .jobs
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .map(|l| &l.job)
                .filter(|j| j.state == JobState::Assigned)
                .collect();
            unstarted
                .sort_by_key(|j| Reverse((j.assigned_at, QueueKey::new(j.spec.priority, j.seq))));
            for job in unstarted.into_iter().take(beyond) {
                if job.cancel_requested || self.revoking.contains_key(&job.id) {
                    continue;
                }
                let key = QueueKey::new(job.spec.priority, job.seq);
                waiting.push((key, queued(job), session, job.attempt));
            }
        }
        if waiting.is_empty() {
            return;
        }
        // The most urgent first, as the queue would give them slots.
        waiting.sort_by_key(|(key, ..)| *key);
        let in_flight: Vec<QueuedJob> = self
            .revoking
            .keys()
            .filter_map(|id| self.jobs.get(id))
            .map(|l| queued(&l.job))
            .collect();
        let candidates: Vec<QueuedJob> = waiting.iter().map(|(_, j, ..)| j.clone()).collect();
        for id in revocations(&views, &candidates, &in_flight) {
            let Some((_, job, session, attempt)) = waiting.iter().find(|(_, j, ..)| j.id == id)
            else {
                continue;
            };
            self.revoking.insert(job.id.clone(), *attempt);
            out.messages.push((
                *session,
                ToAgent::Revoke {
                    job_id: job.id.clone(),
                    attempt: *attempt,
                    reason: REASON.to_string(),
                },
            ));
        }
    }
}
