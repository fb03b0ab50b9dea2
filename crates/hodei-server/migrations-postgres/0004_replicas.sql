-- Schema version 4: any number of orchestrator replicas on one database
-- (docs/deployment.md). Replaces the single-server lease of version 2.
DROP TABLE server_lease;

-- One row per live replica, renewed every 2 s (and in every commit) with a
-- 10 s lease; a replica whose lease expired is deleted by the one that
-- sweeps (under an advisory lock), which takes over its unfinished jobs.
-- `slot` keeps the replicas' job sequence numbers apart.
CREATE TABLE replicas (
    id         TEXT        NOT NULL PRIMARY KEY,
    slot       INTEGER     NOT NULL UNIQUE CHECK (slot >= 0 AND slot < 4096),
    expires_at TIMESTAMPTZ NOT NULL
);

-- The replica that owns a job: NULL while it waits in the shared queue,
-- set by the replica that claims it. Writes are fenced on it.
ALTER TABLE jobs ADD COLUMN replica TEXT;
CREATE INDEX jobs_by_replica ON jobs (replica) WHERE replica IS NOT NULL;
-- The shared queue, first to run first.
CREATE INDEX jobs_queued ON jobs (priority DESC, seq) WHERE state = 'queued';
