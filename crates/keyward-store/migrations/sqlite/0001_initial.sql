-- keyward's initial schema (SQLite). Times are INTEGER ms since the Unix epoch (UTC);
-- money is INTEGER micro-dollars. Mirrors migrations/postgres/0001_initial.sql.

CREATE TABLE orgs (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL
);

CREATE TABLE projects (
    id         TEXT    NOT NULL PRIMARY KEY,
    org_id     TEXT    NOT NULL REFERENCES orgs (id),
    name       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    UNIQUE (org_id, name)
);

-- `hint` is the display hint of the key's newest secret: whoever adds a secret
-- (rotation) updates it in the same transaction.
CREATE TABLE keys (
    id           TEXT    NOT NULL PRIMARY KEY,
    project_id   TEXT    NOT NULL REFERENCES projects (id),
    org_id       TEXT    NOT NULL REFERENCES orgs (id),
    name         TEXT    NOT NULL,
    hint         TEXT    NOT NULL,
    status       TEXT    NOT NULL
        CHECK (status IN ('active', 'revoked', 'expired', 'leaked', 'suspended')),
    tags         TEXT    NOT NULL DEFAULT '[]', -- JSON array of strings
    created_by   TEXT,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER,
    revoked_at   INTEGER,
    expires_at   INTEGER
);
CREATE INDEX keys_by_project ON keys (project_id, created_at);

-- A key may have several live secrets (rotation with a grace period); `expires_at`
-- is when this one stops working, NULL for the current one.
CREATE TABLE key_secrets (
    hash_hex   TEXT    NOT NULL PRIMARY KEY, -- lowercase hex SHA-256 of the full key
    key_id     TEXT    NOT NULL REFERENCES keys (id) ON DELETE CASCADE,
    hint       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER
);
CREATE INDEX key_secrets_by_key ON key_secrets (key_id);

CREATE TABLE admin_keys (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    hash_hex   TEXT    NOT NULL UNIQUE,
    hint       TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'revoked')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

-- Raw metered requests. No foreign keys: usage history outlives deleted keys.
CREATE TABLE usage_events (
    seq                 INTEGER NOT NULL PRIMARY KEY, -- insertion order, breaks ties on `at`
    key_id              TEXT    NOT NULL,
    project_id          TEXT    NOT NULL,
    org_id              TEXT    NOT NULL,
    at                  INTEGER NOT NULL,
    endpoint            TEXT    NOT NULL,
    model               TEXT    NOT NULL,
    status              INTEGER NOT NULL,
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    cost_micros         INTEGER NOT NULL,
    upstream_latency_ms INTEGER NOT NULL,
    total_latency_ms    INTEGER NOT NULL,
    client_ip           TEXT,
    streamed            INTEGER NOT NULL,
    incomplete          INTEGER NOT NULL
);
CREATE INDEX usage_events_by_key ON usage_events (key_id, at);
CREATE INDEX usage_events_by_project ON usage_events (project_id, at);
CREATE INDEX usage_events_by_org ON usage_events (org_id, at);
CREATE INDEX usage_events_by_time ON usage_events (at);

-- Hourly sums of usage_events, maintained in the same transaction as the inserts.
CREATE TABLE usage_hourly (
    key_id              TEXT    NOT NULL,
    hour_start          INTEGER NOT NULL,
    project_id          TEXT    NOT NULL,
    org_id              TEXT    NOT NULL,
    requests            INTEGER NOT NULL,
    errors              INTEGER NOT NULL, -- status >= 400
    input_tokens        INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    output_tokens       INTEGER NOT NULL,
    reasoning_tokens    INTEGER NOT NULL,
    cost_micros         INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour_start)
) WITHOUT ROWID;
CREATE INDEX usage_hourly_by_project ON usage_hourly (project_id, hour_start);
CREATE INDEX usage_hourly_by_org ON usage_hourly (org_id, hour_start);
CREATE INDEX usage_hourly_by_time ON usage_hourly (hour_start);

CREATE TABLE audit_events (
    seq    INTEGER NOT NULL PRIMARY KEY, -- insertion order, breaks ties on `at`
    id     TEXT    NOT NULL UNIQUE,
    at     INTEGER NOT NULL,
    actor  TEXT    NOT NULL,
    action TEXT    NOT NULL,
    target TEXT    NOT NULL,
    detail TEXT    NOT NULL -- JSON
);
CREATE INDEX audit_events_by_time ON audit_events (at, seq);
CREATE INDEX audit_events_by_target ON audit_events (target, at, seq);
