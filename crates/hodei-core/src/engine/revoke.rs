//! Taking back prefetched assignments.
//!
//! A job an agent holds beyond its slots waits there for one of them,
//! however long the jobs before it run. When another worker has a free slot
//! that fits it (a slot no queued job took), the engine asks the agent to
//! give the job back. The agent answers `Rejected` if it has not started
//! it: the job is queued again, without using one of its retries, and the
//! next dispatch gives it to the free slot. If it had started, the agent
//! ignores the request and the slot stays free for the next candidate.
//!
//! The same goes for a waiting job that a job of higher priority would
//! otherwise wait behind (one assigned after it to the same agent, or one
//! queued that fits the agent): taken back and placed again, it lines up
//! behind the more urgent job. Prefetch thus never delays a job of higher
//! priority by more than the jobs already running.

use super::{Engine, Output, SessionId, ToAgent, queue_key, queued_job};
use crate::job::{Job, JobState};
use crate::scheduler::{Line, QueueKey, QueuedJob, overtaken, revocations};

/// Why the job goes back to the queue, as its record says: a free slot
/// elsewhere can run it.
const FOR_FREE_SLOT: &str = "taken back from the agent's prefetch queue for a free slot elsewhere";
/// Why the job goes back to the queue: a more urgent job would wait behind
/// it.
const FOR_URGENT_JOB: &str =
    "taken back from the agent's prefetch queue for a job of higher priority";

impl Engine {
    /// Looks for jobs waiting in agents' prefetch queues that free slots
    /// elsewhere can run, or that a more urgent job would wait behind, and
    /// asks their agents for them.
    pub(super) fn revoke_waiting(&mut self, out: &mut Output) {
        // Take-backs that resolved: rejected, started, finished or lost.
        let jobs = &self.jobs;
        self.revoking.retain(|id, attempt| {
            jobs.get(id)
                .is_some_and(|l| l.job.state == JobState::Assigned && l.job.attempt == *attempt)
        });
        let (lines, sessions) = self.lines();
        if lines.is_empty() {
            return;
        }
        let mut picks: Vec<(String, &str)> = Vec::new();
        // Where a job taken back could run at once.
        let free = self.workers.free();
        if !free.is_empty() {
            let mut waiting: Vec<&(QueueKey, QueuedJob)> = lines
                .iter()
                .flat_map(|line| &line.waiting)
                .filter(|(_, job)| !self.revoking.contains_key(&job.id))
                .collect();
            // The most urgent first, as the queue would give them slots.
            waiting.sort_by_key(|(key, _)| *key);
            let candidates: Vec<QueuedJob> = waiting.into_iter().map(|(_, j)| j.clone()).collect();
            let in_flight: Vec<QueuedJob> = self
                .revoking
                .keys()
                .filter_map(|id| self.jobs.get(id))
                .map(|l| queued_job(&l.job))
                .collect();
            let back = revocations(free, &candidates, &in_flight);
            picks.extend(back.into_iter().map(|id| (id, FOR_FREE_SLOT)));
        }
        let urgent = overtaken(&lines, &self.queue);
        picks.extend(urgent.into_iter().map(|id| (id, FOR_URGENT_JOB)));
        let mut asks = Vec::new();
        for (id, reason) in picks {
            let Some(session) = lines
                .iter()
                .position(|line| line.waiting.iter().any(|(_, j)| j.id == id))
                .map(|i| sessions[i])
            else {
                continue;
            };
            let Some(attempt) = self.jobs.get(&id).map(|l| l.job.attempt) else {
                continue;
            };
            asks.push((session, id, attempt, reason));
        }
        for (session, job_id, attempt, reason) in asks {
            if self.revoking.insert(job_id.clone(), attempt).is_some() {
                continue;
            }
            let reason = reason.to_string();
            let revoke = ToAgent::Revoke {
                job_id,
                attempt,
                reason,
            };
            out.messages.push((session, revoke));
        }
    }

    /// The workers with jobs waiting beyond their slots: each one's waiting
    /// jobs, in the order its agent will give them slots, and its session.
    /// The agent gives its slots in the order assignments arrived, so the
    /// jobs that wait are the newest of those not started.
    fn lines(&self) -> (Vec<Line<'_>>, Vec<SessionId>) {
        let (mut lines, mut sessions) = (Vec::new(), Vec::new());
        for w in self.workers.waiting() {
            let Some(session) = w.session else { continue };
            let beyond = w.jobs.len().saturating_sub(w.slots as usize);
            if beyond == 0 {
                continue;
            }
            let mut unstarted: Vec<&Job> = w
                .jobs
                .iter()
                .filter_map(|id| self.jobs.get(id))
                .map(|l| &l.job)
                .filter(|j| j.state == JobState::Assigned && !j.cancel_requested)
                .collect();
            unstarted.sort_by_key(|j| (j.assigned_at, queue_key(j)));
            let skip = unstarted.len().saturating_sub(beyond);
            let waiting: Vec<(QueueKey, QueuedJob)> = unstarted
                .into_iter()
                .skip(skip)
                .map(|j| (queue_key(j), queued_job(j)))
                .collect();
            if !waiting.is_empty() {
                lines.push(Line {
                    labels: &w.labels,
                    waiting,
                });
                sessions.push(session);
            }
        }
        (lines, sessions)
    }
}
