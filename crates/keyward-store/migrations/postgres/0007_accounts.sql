-- Accounts (issue 18): users in organizations, server-side sessions, second
-- factors, single-use tokens and known devices (PostgreSQL). Mirrors
-- migrations/sqlite/0008_accounts.sql. States are nullable times, not flags:
-- when a thing happened is what an investigation asks first.

CREATE TABLE users (
    id                 TEXT    NOT NULL PRIMARY KEY,
    org_id             TEXT    NOT NULL REFERENCES orgs (id),
    email              TEXT    NOT NULL UNIQUE, -- lowercased
    password_hash      TEXT,                    -- argon2id PHC; NULL: OpenID Connect only
    role               TEXT    NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'viewer')),
    created_at         BIGINT NOT NULL,
    disabled_at        BIGINT,                 -- by an owner; signs in no more
    locked_at          BIGINT,                 -- too many failures; until a reset or an unlock
    reset_required_at  BIGINT,                 -- evidence of compromise: reset before signing in
    password_changed_at BIGINT,
    totp_secret        TEXT,                    -- sealed; NULL: no TOTP
    totp_pending       TEXT,                    -- sealed; enrolled, not yet confirmed
    totp_last_step     BIGINT                  -- the last accepted step: no code twice
);
CREATE INDEX users_org ON users (org_id);

-- `token_hash` is SHA-256 of the cookie's secret; the secret itself is never stored.
CREATE TABLE sessions (
    id               TEXT    NOT NULL PRIMARY KEY,
    token_hash       TEXT    NOT NULL UNIQUE,
    user_id          TEXT    NOT NULL REFERENCES users (id),
    created_at       BIGINT NOT NULL,
    last_seen_at     BIGINT NOT NULL,
    authenticated_at BIGINT NOT NULL,  -- sign-in or re-authentication
    expires_at       BIGINT NOT NULL,  -- the absolute timeout
    ip               TEXT,
    user_agent       TEXT,
    ended_at         BIGINT,
    ended_reason     TEXT
);
CREATE INDEX sessions_user ON sessions (user_id, ended_at);

CREATE TABLE recovery_codes (
    user_id    TEXT    NOT NULL REFERENCES users (id),
    code_hash  TEXT    NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- Single-use secrets sent or handed to someone: a password reset link, an
-- invitation, a sign-in waiting for its second factor, a "this wasn't me" link.
CREATE TABLE one_time_tokens (
    token_hash TEXT    NOT NULL PRIMARY KEY,
    kind       TEXT    NOT NULL,
    user_id    TEXT    REFERENCES users (id),
    org_id     TEXT    REFERENCES orgs (id),
    data       TEXT    NOT NULL DEFAULT '{}', -- JSON, never a secret
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at    BIGINT 
);

-- Devices a user has signed in from: a long-lived device cookie's hash, with the
-- user agent and network prefix it was first seen with.
CREATE TABLE user_devices (
    user_id       TEXT    NOT NULL REFERENCES users (id),
    device_hash   TEXT    NOT NULL,
    user_agent    TEXT,
    network       TEXT,
    first_seen_at BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_hash)
);

CREATE TABLE passkeys (
    id           TEXT    NOT NULL PRIMARY KEY, -- credential id, base64url
    user_id      TEXT    NOT NULL REFERENCES users (id),
    name         TEXT    NOT NULL,
    data         TEXT    NOT NULL,             -- the verifier's public record, JSON
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT 
);
CREATE INDEX passkeys_user ON passkeys (user_id);

CREATE TABLE oidc_identities (
    issuer     TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    user_id    TEXT    NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    PRIMARY KEY (issuer, subject)
);

CREATE TABLE project_members (
    project_id TEXT NOT NULL REFERENCES projects (id),
    user_id    TEXT NOT NULL REFERENCES users (id),
    PRIMARY KEY (project_id, user_id)
);

-- NULL: the deployment's bootstrap key, which acts in every organization.
ALTER TABLE admin_keys ADD COLUMN org_id TEXT REFERENCES orgs (id);
