-- Hodei orchestrator store, schema version 4: secrets (see docs/security.md).
--
-- A value is never stored in plain text: `ciphertext` is the value sealed
-- with AES-256-GCM under the secrets key, a random 96-bit `nonce` per
-- value, and the secret's name as associated data (a ciphertext moved to
-- another name does not open). `key_id` names the key that sealed it, so
-- that a key rotation re-encrypts the rows of the old key at start.
CREATE TABLE secrets (
    name       TEXT    NOT NULL PRIMARY KEY,
    key_id     TEXT    NOT NULL,
    nonce      BLOB    NOT NULL,
    ciphertext BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) STRICT;
