-- Key restrictions, ephemeral tokens, rotation, project limits and budgets (PostgreSQL).
-- Mirrors migrations/sqlite/0002_limits.sql.

-- `parent_key_id` is set on ephemeral tokens. It has no foreign key on purpose:
-- deleting a key must not fail or cascade because of the tokens derived from it
-- (they expire on their own, and the gateway checks the parent on every request).
ALTER TABLE keys ADD COLUMN parent_key_id TEXT;
ALTER TABLE keys ADD COLUMN policy TEXT NOT NULL DEFAULT '{}'; -- JSON KeyPolicy
ALTER TABLE keys ADD COLUMN rotated_at BIGINT;
CREATE INDEX keys_by_parent ON keys (parent_key_id, created_at) WHERE parent_key_id IS NOT NULL;

ALTER TABLE projects ADD COLUMN policy TEXT NOT NULL DEFAULT '{}'; -- JSON ProjectPolicy

-- One budget per scope. `scope_id` has no foreign key: scopes are of three kinds.
CREATE TABLE budgets (
    scope           TEXT   NOT NULL CHECK (scope IN ('org', 'project', 'key')),
    scope_id        TEXT   NOT NULL,
    amount_micros   BIGINT NOT NULL,
    period          TEXT   NOT NULL CHECK (period IN ('month', 'day', 'none')),
    soft_thresholds TEXT   NOT NULL DEFAULT '[]', -- JSON array of percentages
    updated_at      BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id)
);

-- Which soft thresholds already alerted in which period, so each fires once.
CREATE TABLE budget_alerts (
    scope        TEXT   NOT NULL,
    scope_id     TEXT   NOT NULL,
    period_start BIGINT NOT NULL,
    threshold    BIGINT NOT NULL,
    at           BIGINT NOT NULL,
    PRIMARY KEY (scope, scope_id, period_start, threshold)
);
