-- Schema version 3: a job's submitter (the id of the token that submitted
-- it; NULL when auth is off), written with the job. Who may cancel a job is
-- decided from it (see docs/security.md).
ALTER TABLE jobs ADD COLUMN submitter TEXT;
