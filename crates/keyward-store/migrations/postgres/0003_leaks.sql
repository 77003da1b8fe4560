-- Leak response (PostgreSQL): reports of exposed keys, notification channels and the
-- delivery log. Mirrors migrations/sqlite/0003_leaks.sql.

-- One row per distinct sighting of one of our keys. No foreign key: the record of
-- a leak outlives the key. The unique constraint makes a replayed report a no-op.
CREATE TABLE leak_reports (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          TEXT    NOT NULL UNIQUE,
    key_id      TEXT    NOT NULL,
    token_hash  TEXT    NOT NULL, -- lowercase hex SHA-256 of the exposed secret
    source      TEXT    NOT NULL, -- github | api | watcher
    url         TEXT    NOT NULL,
    location    TEXT    NOT NULL,
    token_type  TEXT    NOT NULL,
    outcome     TEXT    NOT NULL CHECK (outcome IN ('disabled', 'already_leaked', 'inactive')),
    reporter    TEXT    NOT NULL,
    reported_at BIGINT NOT NULL,
    UNIQUE (token_hash, source, url, location)
);
CREATE INDEX leak_reports_by_key ON leak_reports (key_id, reported_at);
CREATE INDEX leak_reports_by_time ON leak_reports (reported_at);

-- `secret` signs deliveries (HMAC-SHA256), so it is kept as given; it is shown
-- only once, at creation.
CREATE TABLE webhooks (
    id          TEXT    NOT NULL PRIMARY KEY,
    url         TEXT    NOT NULL,
    secret      TEXT    NOT NULL,
    events      TEXT    NOT NULL, -- JSON array of event types, "*" for all
    org_id      TEXT,
    project_id  TEXT,
    description TEXT    NOT NULL,
    created_by  TEXT    NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE email_recipients (
    id         TEXT    NOT NULL PRIMARY KEY,
    address    TEXT    NOT NULL,
    events     TEXT    NOT NULL,
    org_id     TEXT,
    project_id TEXT,
    created_at BIGINT NOT NULL
);

-- The outbox and delivery log. (target_id, event_id) is unique: an event is
-- queued at most once per webhook or recipient however often it is published.
CREATE TABLE deliveries (
    id              TEXT    NOT NULL PRIMARY KEY,
    channel         TEXT    NOT NULL CHECK (channel IN ('webhook', 'email')),
    target_id       TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    payload         TEXT    NOT NULL, -- JSON
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    last_status     BIGINT,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    delivered_at    BIGINT,
    UNIQUE (target_id, event_id)
);
CREATE INDEX deliveries_due ON deliveries (status, next_attempt_at);
CREATE INDEX deliveries_by_target ON deliveries (target_id, created_at);
