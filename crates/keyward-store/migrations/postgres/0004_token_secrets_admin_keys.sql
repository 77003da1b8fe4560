-- Tokens bound to the secret they were minted from, and admin keys that can be
-- rotated and disabled as leaked (PostgreSQL). Mirrors
-- migrations/sqlite/0005_token_secrets_admin_keys.sql.

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

ALTER TABLE admin_keys DROP CONSTRAINT admin_keys_status_check;
ALTER TABLE admin_keys ADD CONSTRAINT admin_keys_status_check
    CHECK (status IN ('active', 'revoked', 'leaked'));
ALTER TABLE admin_keys ADD COLUMN rotated_at BIGINT;
ALTER TABLE admin_keys ADD COLUMN created_by TEXT;
