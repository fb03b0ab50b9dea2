-- Hodei orchestrator store on PostgreSQL, schema version 1 (the same tables
-- and meaning as migrations/0001 and 0002 for SQLite).
--
-- Conventions:
--   * times are Unix milliseconds (BIGINT);
--   * unsigned counters and offsets (seq, attempt, byte offsets) are BIGINT
--     and checked on the way out: a negative or oversized value is reported
--     as a corrupt record, never wrapped;
--   * `state` is deliberately not CHECKed: the store validates it on read and
--     reports an unknown state as a corrupt record naming the job.

-- One row per job, the latest version of its record, upserted whole.
CREATE TABLE jobs (
    id               TEXT    NOT NULL PRIMARY KEY,
    seq              BIGINT  NOT NULL UNIQUE,
    -- queued | assigned | running | succeeded | failed | cancelled | timed_out | lost
    state            TEXT    NOT NULL,
    attempt          BIGINT  NOT NULL,
    worker           TEXT,
    exit_code        BIGINT,
    signal           BIGINT,
    reason           TEXT,
    -- 0 or 1 (an integer, as in the SQLite schema, so rows decode alike).
    cancel_requested BIGINT  NOT NULL,
    -- Copies of spec.name and spec.priority, for listing without parsing JSON.
    name             TEXT    NOT NULL,
    priority         BIGINT  NOT NULL,
    -- The JobSpec as serde_json writes it; JSONB so label filters can use it.
    spec             JSONB   NOT NULL,
    created_at       BIGINT  NOT NULL,
    assigned_at      BIGINT,
    started_at       BIGINT,
    finished_at      BIGINT
);

CREATE INDEX jobs_by_state_seq ON jobs (state, seq);
CREATE INDEX jobs_by_worker_seq ON jobs (worker, seq);
-- Name-prefix filters (LIKE 'prefix%').
CREATE INDEX jobs_by_name ON jobs (name text_pattern_ops);
CREATE INDEX jobs_by_finished_at ON jobs (finished_at) WHERE finished_at IS NOT NULL;

-- Log output, append only; one row per chunk of one stream of one attempt,
-- covering bytes [start_offset, end_offset). `id` is the arrival order.
CREATE TABLE log_chunks (
    id           BIGINT  GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id       TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      BIGINT  NOT NULL,
    -- 0 = stdout, 1 = stderr.
    stream       BIGINT  NOT NULL,
    start_offset BIGINT  NOT NULL,
    end_offset   BIGINT  NOT NULL,
    ts           BIGINT  NOT NULL,
    data         BYTEA   NOT NULL
);

CREATE INDEX log_chunks_by_stream ON log_chunks (job_id, attempt, stream, end_offset);

-- Workers that ever registered.
CREATE TABLE workers (
    id        TEXT    NOT NULL PRIMARY KEY,
    -- JSON array of label strings.
    labels    TEXT    NOT NULL,
    slots     BIGINT  NOT NULL,
    last_seen BIGINT  NOT NULL
);
