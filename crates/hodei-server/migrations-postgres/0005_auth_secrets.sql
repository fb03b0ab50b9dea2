-- Schema version 5: tokens, worker identities and secrets in the shared
-- database, so that every replica knows every token and can deliver every
-- secret (docs/deployment.md). The same tables and meaning as
-- migrations/0003_auth.sql (without job_owners: a job's submitter is on its
-- row) and migrations/0004_secrets.sql for SQLite; see docs/security.md.

-- API and join tokens. A token is `hodei_<id>_<secret>`; only the SHA-256 of
-- the secret is kept. Rows are never deleted: a revoked token stays listed.
-- Replicas tell each other of a new or revoked token on the channel
-- `hodei_auth` (payload: the token id).
CREATE TABLE auth_tokens (
    id            TEXT   NOT NULL PRIMARY KEY,
    name          TEXT   NOT NULL,
    -- admin | submit | read | agent
    role          TEXT   NOT NULL,
    secret_sha256 BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    -- NULL: never expires.
    expires_at    BIGINT,
    -- NULL: not revoked.
    revoked_at    BIGINT
);

-- Each worker id belongs to the identity that first registered it
-- (`token:<id>` of a join token, or `cert:<name>` of a client certificate),
-- whichever replica it registered with: the first insert wins.
CREATE TABLE worker_identities (
    worker_id TEXT   NOT NULL PRIMARY KEY,
    identity  TEXT   NOT NULL,
    bound_at  BIGINT NOT NULL
);

CREATE INDEX worker_identities_by_identity ON worker_identities (identity);

-- Secrets, sealed with AES-256-GCM under the secrets key (which every
-- replica must share), a random 96-bit nonce per value and the name as
-- associated data; `key_id` names the key that sealed the value.
CREATE TABLE secrets (
    name       TEXT   NOT NULL PRIMARY KEY,
    key_id     TEXT   NOT NULL,
    nonce      BYTEA  NOT NULL,
    ciphertext BYTEA  NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
