-- One orchestrator at a time per database, until replicas coordinate
-- dispatch: the server holding an unexpired lease is the only one that
-- commits. Every commit renews the lease in the same transaction and fails
-- if another server holds it, so a server that lost its lease can never
-- write (fencing). Times come from the database's clock.
CREATE TABLE server_lease (
    id         SMALLINT    NOT NULL PRIMARY KEY CHECK (id = 1),
    holder     TEXT        NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
