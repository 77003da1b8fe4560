-- Values the nodes sharing a database agree on, set once by the first node
-- that needs one (INSERT … ON CONFLICT DO NOTHING, then read back): today the
-- check that every node seals secrets with the same key.
CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
