-- The audit log becomes tamper-evident: one hash chain per organization and
-- one for deployment-level events (org_id NULL, e.g. the bootstrap admin key).
-- Each event stores the SHA-256 of its own fields and of the event before it
-- in its chain (see resources/audit.rs for the exact encoding); audit_heads
-- names each chain's last event, so that removing the last one is caught too.
ALTER TABLE audit_events ADD COLUMN org_id TEXT;
ALTER TABLE audit_events ADD COLUMN ip TEXT;
ALTER TABLE audit_events ADD COLUMN user_agent TEXT;
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT; -- NULL: first of its chain
ALTER TABLE audit_events ADD COLUMN hash TEXT;      -- NULL only before chaining
CREATE INDEX audit_events_by_org ON audit_events (org_id, at, seq);

CREATE TABLE audit_heads (
    chain     TEXT NOT NULL PRIMARY KEY, -- an org id, or `deployment`
    last_id   TEXT,                      -- NULL only inside the first append
    last_hash TEXT
) WITHOUT ROWID;

-- Events written before this migration have no hash. They are chained once,
-- into the deployment chain in insertion order, at the first open after it
-- (SQL cannot compute SHA-256 here); the row below says up to which `seq`, and
-- is deleted once done, so that a row inserted later without a hash is never
-- chained but reported by verification.
CREATE TABLE audit_legacy (max_seq INTEGER NOT NULL);
INSERT INTO audit_legacy (max_seq) SELECT seq FROM audit_events ORDER BY seq DESC LIMIT 1;
