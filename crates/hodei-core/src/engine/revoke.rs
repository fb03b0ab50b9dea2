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

use super::{Engine, Output, SessionId, ToAgent};
use crate::job::{Job, JobState};
use crate::scheduler::{Line, QueueKey, QueuedJob, WorkerView, overtaken, revocations};

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
        if lines.iter().all(|line| line.waiting.is_empty()) {
            return;
        }
        let views = self.worker_views();
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
            .map(|l| queued(&l.job))
            .collect();
        let picks = revocations(&views, &candidates, &in_flight)
            .into_iter()
            .map(|id| (id, FOR_FREE_SLOT))
            .chain(
                overtaken(&lines, &self.queue)
                    .into_iter()
                    .map(|id| (id, FOR_URGENT_JOB)),
            );
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
            if self.revoking.insert(id.clone(), attempt).is_some() {
                continue;
            }
            out.messages.push((
                session,
                ToAgent::Revoke {
                    job_id: id,
                    attempt,
                    reason: reason.to_string(),
                },
            ));
        }
    }

    /// Each attached worker's waiting jobs, in the order its agent will
    /// give them slots, with its session. The agent gives its slots in the
    /// order assignments arrived, so the jobs that wait are the newest of
    /// those not started.
    fn lines(&self) -> (Vec<Line>, Vec<SessionId>) {
        let (mut lines, mut sessions) = (Vec::new(), Vec::new());
        for (id, w) in &self.workers {
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
            unstarted.sort_by_key(|j| (j.assigned_at, QueueKey::new(j.spec.priority, j.seq)));
            let skip = unstarted.len().saturating_sub(beyond);
            let waiting = unstarted
                .into_iter()
                .skip(skip)
                .map(|j| (QueueKey::new(j.spec.priority, j.seq), queued(j)))
                .collect();
            let worker = WorkerView {
                id: id.clone(),
                labels: w.labels.clone(),
                free_slots: 0,
                queue_room: 0,
                draining: w.draining,
            };
            lines.push(Line { worker, waiting });
            sessions.push(session);
        }
        (lines, sessions)
    }
}

/// A job as the scheduler sees it.
fn queued(job: &Job) -> QueuedJob {
    QueuedJob {
        id: job.id.clone(),
        requires: job.spec.required_labels().map(str::to_string).collect(),
    }
}
