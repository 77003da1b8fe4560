-- Tokens bound to the secret they were minted from, and admin keys that can be
-- rotated and disabled as leaked (SQLite). Mirrors
-- migrations/postgres/0004_token_secrets_admin_keys.sql.

-- The hash of the parent's secret a token was minted with. A token is refused
-- once that secret is gone or past its grace period, whatever becomes of the
-- parent key later (a leaked key rotated back to `active` does not revive it).
-- No foreign key: a secret row may be deleted with its key, and the token must
-- then be refused, not cascade-deleted.
ALTER TABLE keys ADD COLUMN parent_secret_hash TEXT;

-- Tokens minted before this migration: the parent's secret that was current
-- when the token was made (the newest one created no later than the token).
-- A token left without one is refused, which errs on the safe side.
UPDATE keys SET parent_secret_hash = (
    SELECT s.hash_hex FROM key_secrets s
    WHERE s.key_id = keys.parent_key_id AND s.created_at <= keys.created_at
    ORDER BY s.created_at DESC LIMIT 1
) WHERE parent_key_id IS NOT NULL;

-- SQLite cannot change a CHECK constraint in place: the table is rebuilt to
-- allow `leaked` and to record rotations and who created a key.
CREATE TABLE admin_keys_v2 (
    id         TEXT    NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    hash_hex   TEXT    NOT NULL UNIQUE, -- the one live secret; replaced by a rotation
    hint       TEXT    NOT NULL,
    status     TEXT    NOT NULL CHECK (status IN ('active', 'revoked', 'leaked')),
    created_at INTEGER NOT NULL,
    revoked_at INTEGER,
    rotated_at INTEGER,
    created_by TEXT
);
INSERT INTO admin_keys_v2 (id, name, hash_hex, hint, status, created_at, revoked_at)
    SELECT id, name, hash_hex, hint, status, created_at, revoked_at FROM admin_keys;
DROP TABLE admin_keys;
ALTER TABLE admin_keys_v2 RENAME TO admin_keys;
