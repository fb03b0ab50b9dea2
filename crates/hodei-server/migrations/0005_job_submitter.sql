-- Hodei orchestrator store, schema version 5: a job's submitter (the token
-- id) is a column of the job, written in the same commit as the job itself,
-- instead of a row of `job_owners` written in a transaction of its own.
ALTER TABLE jobs ADD COLUMN submitter TEXT;

UPDATE jobs SET submitter = (SELECT token_id FROM job_owners WHERE job_id = jobs.id);

DROP TABLE job_owners;
