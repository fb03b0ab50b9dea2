-- Hodei orchestrator store, schema version 2: indexes for the operator
-- surface (job list filters, overview statistics). Indexes only; no data
-- changes.

-- Listing the jobs of one worker, newest first
-- (WHERE worker = ? AND seq < ? ORDER BY seq DESC).
CREATE INDEX jobs_by_worker_seq ON jobs (worker, seq);

-- Listing by name prefix (WHERE name GLOB 'prefix*'): a range of this index.
CREATE INDEX jobs_by_name ON jobs (name);

-- Jobs finished since a time, for the overview's last hour and
-- jobs-per-minute chart (WHERE finished_at >= ?). Unfinished jobs have no
-- finished_at and are left out of the index.
CREATE INDEX jobs_by_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;
