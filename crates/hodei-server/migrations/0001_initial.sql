-- Hodei orchestrator store, schema version 1.
--
-- Conventions:
--   * times are Unix milliseconds (INTEGER);
--   * unsigned counters and offsets (seq, attempt, byte offsets) are stored as
--     INTEGER and checked on the way out: a negative or oversized value is
--     reported as a corrupt record, never wrapped;
--   * tables are STRICT, so SQLite refuses a value of the wrong type.
--   * `state` is deliberately not CHECKed: the store validates it on read and
--     reports an unknown state as a corrupt record naming the job.

-- One row per job, the latest version of its record. The orchestrator
-- upserts a whole record at a time (INSERT ... ON CONFLICT(id) DO UPDATE).
CREATE TABLE jobs (
    id               TEXT    NOT NULL PRIMARY KEY,
    -- Submission order, given by the orchestrator. Breaks priority ties and
    -- is the listing cursor (newest first). UNIQUE also indexes it, which
    -- serves the unfiltered listing.
    seq              INTEGER NOT NULL UNIQUE,
    -- queued | assigned | running | succeeded | failed | cancelled | timed_out | lost
    state            TEXT    NOT NULL,
    -- The current attempt; 0 until first assigned.
    attempt          INTEGER NOT NULL,
    worker           TEXT,
    exit_code        INTEGER,
    signal           INTEGER,
    reason           TEXT,
    -- 0 or 1.
    cancel_requested INTEGER NOT NULL,
    -- Copies of spec.name and spec.priority, for listing without parsing JSON.
    name             TEXT    NOT NULL,
    priority         INTEGER NOT NULL,
    -- The JobSpec as serde_json writes it. The source of truth for the spec.
    spec             TEXT    NOT NULL,
    created_at       INTEGER NOT NULL,
    assigned_at      INTEGER,
    started_at       INTEGER,
    finished_at      INTEGER
) STRICT;

-- Listing by state, newest first (WHERE state = ? AND seq < ? ORDER BY seq
-- DESC), and finding the unfinished jobs at recovery.
CREATE INDEX jobs_by_state_seq ON jobs (state, seq);

-- Log output, append only. Each row is one chunk of one stream of one attempt,
-- covering bytes [start_offset, end_offset) of that stream. Chunks of a stream
-- do not overlap: the orchestrator deduplicates by offset before writing.
CREATE TABLE log_chunks (
    -- Alias of the rowid: the global arrival order of chunks.
    id           INTEGER PRIMARY KEY,
    job_id       TEXT    NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt      INTEGER NOT NULL,
    -- 0 = stdout, 1 = stderr.
    stream       INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    -- start_offset + length(data), stored so that reads "from byte N" and the
    -- log end at recovery (MAX(end_offset)) are index range scans.
    end_offset   INTEGER NOT NULL,
    -- When the agent read the bytes (Unix ms).
    ts           INTEGER NOT NULL,
    data         BLOB    NOT NULL
) STRICT;

-- Reads of one attempt's stream from an offset, and per-stream log ends. Also
-- serves the foreign key (deleting a job deletes its logs).
CREATE INDEX log_chunks_by_stream ON log_chunks (job_id, attempt, stream, end_offset);

-- Workers that ever registered, so that their jobs can be matched to them
-- again after a restart.
CREATE TABLE workers (
    id        TEXT    NOT NULL PRIMARY KEY,
    -- JSON array of label strings.
    labels    TEXT    NOT NULL,
    slots     INTEGER NOT NULL,
    last_seen INTEGER NOT NULL
) STRICT;
