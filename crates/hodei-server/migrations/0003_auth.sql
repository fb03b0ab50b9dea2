-- Hodei orchestrator store, schema version 3: authentication and
-- authorization (see docs/security.md).

-- API and join tokens. A token is `hodei_<id>_<secret>`; only the SHA-256 of
-- the secret is kept. Rows are never deleted: a revoked token stays listed.
CREATE TABLE auth_tokens (
    id            TEXT    NOT NULL PRIMARY KEY,
    name          TEXT    NOT NULL,
    -- admin | submit | read | agent
    role          TEXT    NOT NULL,
    secret_sha256 BLOB    NOT NULL,
    created_at    INTEGER NOT NULL,
    -- NULL: never expires.
    expires_at    INTEGER,
    -- NULL: not revoked.
    revoked_at    INTEGER
) STRICT;

-- Each worker id belongs to the identity that first registered it
-- (`token:<id>` of a join token, or `cert:<name>` of a client certificate).
CREATE TABLE worker_identities (
    worker_id TEXT    NOT NULL PRIMARY KEY,
    identity  TEXT    NOT NULL,
    bound_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX worker_identities_by_identity ON worker_identities (identity);

-- Who submitted each job (the token id), so that a `submit` token can
-- cancel its own jobs and no one else's.
CREATE TABLE job_owners (
    job_id   TEXT NOT NULL PRIMARY KEY,
    token_id TEXT NOT NULL
) STRICT;
