//! Admin (management) keys.

use crate::columns::{backend, write_error, Columns};
use crate::common;
use crate::sql::{Db, SqlStore, Stmt};
use crate::{
    AdminKey, AdminKeyRevocation, KeyStatus, NewAdminKey, NewSecret, StoreError, StoreResult,
};
use async_trait::async_trait;
use keyward_core::{KeyHash, KeyId};

/// Admin (management) keys.
#[async_trait]
pub trait AdminKeyStore: Send + Sync {
    /// Stores a new admin key.
    async fn create_admin_key(&self, key: &NewAdminKey) -> StoreResult<AdminKey>;
    /// The active or revoked admin key with this hash.
    async fn admin_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<AdminKey>>;
    /// Number of admin keys ever created (0 means a fresh store).
    async fn count_admin_keys(&self) -> StoreResult<i64>;
    /// Every admin key, oldest first.
    async fn list_admin_keys(&self) -> StoreResult<Vec<AdminKey>>;
    /// An admin key by id.
    async fn get_admin_key(&self, id: &KeyId) -> StoreResult<Option<AdminKey>>;
    /// The admin keys owning any of these secret hashes, each with its hash.
    async fn admin_keys_by_hashes(
        &self,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<(KeyHash, AdminKey)>>;
    /// Revokes an active admin key unless it is the last active one, atomically
    /// (two concurrent revocations cannot both pass the check). `NotFound` if
    /// absent.
    async fn revoke_admin_key(&self, id: &KeyId, now_ms: i64) -> StoreResult<AdminKeyRevocation>;
    /// Moves an admin key from `active` to `leaked` (setting `revoked_at`), even
    /// the last one: an exposed key must stop. `Some` only when this call made
    /// the change; `None` when the key was not active or is absent.
    async fn mark_admin_key_leaked(&self, id: &KeyId, now_ms: i64)
        -> StoreResult<Option<AdminKey>>;
    /// Replaces an active or leaked admin key's secret: the old secret stops at
    /// once, the key becomes `active` (`revoked_at` cleared) and `rotated_at`
    /// becomes `now_ms`. `None` when the key is absent or revoked.
    async fn rotate_admin_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>>;
}

#[async_trait]
impl<S: SqlStore> AdminKeyStore for S {
    async fn create_admin_key(&self, key: &NewAdminKey) -> StoreResult<AdminKey> {
        let db = self.db();
        let hash_hex = common::canonical_hash(&key.hash_hex)?;
        Stmt::new(
            "INSERT INTO admin_keys (id, name, hash_hex, hint, status, created_at, created_by, \
             org_id) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7)",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(&hash_hex)
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(key.created_by.as_deref())
        .bind(key.org_id.as_ref().map(|o| o.as_str()))
        .execute(db.writer())
        .await
        .map_err(|e| write_error(e, "admin key", "org"))?;
        Ok(AdminKey {
            id: key.id.clone(),
            name: key.name.clone(),
            hint: key.hint.clone(),
            status: KeyStatus::Active,
            created_at: key.created_at,
            revoked_at: None,
            rotated_at: None,
            created_by: key.created_by.clone(),
            org_id: key.org_id.clone(),
        })
    }

    async fn admin_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<AdminKey>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM admin_keys WHERE hash_hex = $1",
            common::ADMIN_KEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(hash.to_hex())
            .optional(db.reader(), common::admin_key)
            .await
    }

    async fn count_admin_keys(&self) -> StoreResult<i64> {
        let db = self.db();
        Stmt::new("SELECT COUNT(*) AS n FROM admin_keys")
            .fetch_one(db.reader())
            .await
            .map_err(backend)?
            .int("n")
    }

    async fn list_admin_keys(&self) -> StoreResult<Vec<AdminKey>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM admin_keys ORDER BY created_at, id",
            common::ADMIN_KEY_COLUMNS
        );
        Stmt::new(&sql).all(db.reader(), common::admin_key).await
    }

    async fn get_admin_key(&self, id: &KeyId) -> StoreResult<Option<AdminKey>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM admin_keys WHERE id = $1",
            common::ADMIN_KEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(db.reader(), common::admin_key)
            .await
    }

    async fn admin_keys_by_hashes(
        &self,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<(KeyHash, AdminKey)>> {
        let db = self.db();
        let head = format!(
            "SELECT {}, hash_hex FROM admin_keys WHERE hash_hex",
            common::ADMIN_KEY_COLUMNS
        );
        let rows = db.rows_by_hashes(&head, "", hashes).await?;
        rows.iter()
            .map(|r| Ok((common::hash_column(r)?, common::admin_key(r)?)))
            .collect()
    }

    async fn revoke_admin_key(&self, id: &KeyId, now_ms: i64) -> StoreResult<AdminKeyRevocation> {
        let db = self.db();
        let mut tx = db.begin().await?;
        if let Db::Postgres(_) = db {
            // Locking every active admin key makes concurrent revocations take
            // turns, so each counts what the one before it left. On SQLite the
            // single writer already runs the one statement below alone.
            Stmt::new("SELECT id FROM admin_keys WHERE status = 'active' ORDER BY id FOR UPDATE")
                .execute(tx.on())
                .await
                .map_err(backend)?;
        }
        let sql = format!(
            "UPDATE admin_keys SET status = 'revoked', revoked_at = $1 \
             WHERE id = $2 AND status = 'active' \
             AND (SELECT COUNT(*) FROM admin_keys WHERE status = 'active') > 1 RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(tx.on())
            .await
            .map_err(backend)?;
        tx.commit().await?;
        if let Some(row) = row {
            return Ok(AdminKeyRevocation::Revoked(common::admin_key(&row)?));
        }
        let key = self
            .get_admin_key(id)
            .await?
            .ok_or(StoreError::NotFound("admin key"))?;
        Ok(if key.status == KeyStatus::Active {
            AdminKeyRevocation::LastActive
        } else {
            AdminKeyRevocation::NotActive(key)
        })
    }

    async fn mark_admin_key_leaked(
        &self,
        id: &KeyId,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>> {
        let db = self.db();
        let sql = format!(
            "UPDATE admin_keys SET status = 'leaked', revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND status = 'active' RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .optional(db.writer(), common::admin_key)
            .await
    }

    async fn rotate_admin_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>> {
        let db = self.db();
        let hash_hex = common::canonical_hash(&secret.hash_hex)?;
        let sql = format!(
            "UPDATE admin_keys SET hash_hex = $1, hint = $2, rotated_at = $3, \
             status = 'active', revoked_at = NULL \
             WHERE id = $4 AND status IN ('active', 'leaked') RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(&hash_hex)
            .bind(&secret.hint)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(db.writer())
            .await
            .map_err(|e| write_error(e, "admin key", "admin key"))?;
        row.as_ref().map(common::admin_key).transpose()
    }
}
