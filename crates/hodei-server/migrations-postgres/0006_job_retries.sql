-- Schema version 6: a job's retries (attempts lost and queued again,
-- counted against the spec's max_retries), written with the job. Attempts
-- the agent rejected before starting them do not count. The same column and
-- meaning as migrations/0006_job_retries.sql for SQLite.
ALTER TABLE jobs ADD COLUMN retries BIGINT NOT NULL DEFAULT 0;

-- Jobs stored before the column keep the old accounting (every attempt
-- after the first was a retry), which never gives a job more re-runs than
-- it had before the upgrade.
UPDATE jobs SET retries = GREATEST(attempt - 1, 0) WHERE attempt > 1;
