//! Gateway keys, their secrets and the ephemeral tokens minted from them.

use crate::columns::{backend, write_error, Columns};
use crate::common::{self, REVOKE_TOKENS};
use crate::sql::{Db, SqlStore, Stmt};
use crate::{KeyRecord, KeyStatus, NewKey, NewSecret, StoreError, StoreResult};
use async_trait::async_trait;
use keyward_core::{KeyHash, KeyId, KeyPolicy, OrgId, ProjectId};

/// Gateway keys, their secrets and the ephemeral tokens minted from them.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Stores a new key record and its first secret hash, in one transaction.
    async fn create_key(&self, key: &NewKey) -> StoreResult<KeyRecord>;
    /// The key whose secret hashes to `hash`, with that secret's own expiry.
    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>>;
    /// A key by id.
    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>>;
    /// Keys, of one project or of all, oldest first.
    async fn list_keys(&self, project: Option<&ProjectId>) -> StoreResult<Vec<KeyRecord>>;
    /// Sets a key's status (and `revoked_at` when it leaves `active`); `NotFound`
    /// when there is no such key. Returns the updated record.
    async fn set_key_status(
        &self,
        id: &KeyId,
        status: KeyStatus,
        now_ms: i64,
    ) -> StoreResult<KeyRecord>;
    /// Deletes a key and its secrets; its usage history stays. `NotFound` if absent.
    async fn delete_key(&self, id: &KeyId) -> StoreResult<()>;
    /// Records when keys were last used (batched by the usage writer).
    async fn touch_keys(&self, last_used: &[(KeyId, i64)]) -> StoreResult<()>;
    /// Replaces a key's restrictions and rate limits; `NotFound` if absent.
    async fn set_key_policy(&self, id: &KeyId, policy: &KeyPolicy) -> StoreResult<KeyRecord>;
    /// Adds a new secret to a key in one transaction: every existing secret of the
    /// key stops working at `old_expires_at` (or earlier if it already would), the
    /// key's hint becomes the new secret's, `rotated_at` becomes `now_ms`, and when
    /// `reactivate` is set the key returns to `active` (`revoked_at` cleared).
    /// When the old secrets stop at once (`old_expires_at <= now_ms`), the
    /// tokens minted with them are revoked in the same transaction.
    /// `NotFound` if absent. Returns the updated record.
    async fn rotate_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
        old_expires_at: i64,
        reactivate: bool,
    ) -> StoreResult<KeyRecord>;
    /// Ephemeral tokens derived from `parent`, oldest first.
    async fn child_keys(&self, parent: &KeyId) -> StoreResult<Vec<KeyRecord>>;
    /// Revokes every active ephemeral token derived from `parent` (for good:
    /// nothing makes a revoked token active again). Returns the ids it changed.
    async fn revoke_tokens(&self, parent: &KeyId, now_ms: i64) -> StoreResult<Vec<KeyId>>;
    /// SHA-256 of a key's current secret (the one no rotation has ended yet);
    /// `None` when the key does not exist.
    async fn current_secret(&self, id: &KeyId) -> StoreResult<Option<KeyHash>>;
    /// Every web origin listed by a standard key that is active and not expired
    /// at `now_ms`, sorted and without repeats: the origins a browser preflight
    /// may be answered for. Tokens only narrow their parent's list, so their own
    /// lists add nothing.
    async fn listed_origins(&self, now_ms: i64) -> StoreResult<Vec<String>>;
}

#[async_trait]
impl<S: SqlStore> KeyStore for S {
    async fn create_key(&self, key: &NewKey) -> StoreResult<KeyRecord> {
        let db = self.db();
        let hash_hex = common::canonical_hash(&key.hash_hex)?;
        let tags = common::encode_tags(&key.tags)?;
        let policy = common::encode_json(&key.policy, "key policy")?;
        let parent_secret_hash = key
            .parent_secret_hash
            .as_deref()
            .map(common::canonical_hash)
            .transpose()?;
        let mut tx = db.begin().await?;
        // The org is taken from the project, so a key can never disagree with it.
        let row = Stmt::new(
            "INSERT INTO keys (id, project_id, org_id, name, hint, status, tags, created_by, created_at, expires_at, \
             parent_key_id, parent_secret_hash, policy) \
             SELECT $1, p.id, p.org_id, $2, $3, 'active', $4, $5, $6, $7, $8, $9, $10 FROM projects p \
             WHERE p.id = $11 RETURNING org_id",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(&key.hint)
        .bind(&tags)
        .bind(key.created_by.as_deref())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.parent_id.as_ref().map(KeyId::as_str))
        .bind(parent_secret_hash.as_deref())
        .bind(&policy)
        .bind(key.project_id.as_str())
        .fetch_optional(tx.on())
        .await
        .map_err(|e| write_error(e, "key", "project"))?;
        let org_id = row.ok_or(StoreError::NotFound("project"))?.text("org_id")?;
        Stmt::new(
            "INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(&hash_hex)
        .bind(key.id.as_str())
        .bind(&key.hint)
        .bind(key.created_at)
        .execute(tx.on())
        .await
        .map_err(|e| write_error(e, "key", "key"))?;
        tx.commit().await?;
        Ok(KeyRecord {
            id: key.id.clone(),
            project_id: key.project_id.clone(),
            org_id: OrgId::from_trusted(org_id),
            name: key.name.clone(),
            hint: key.hint.clone(),
            status: KeyStatus::Active,
            tags: key.tags.clone(),
            created_by: key.created_by.clone(),
            created_at: key.created_at,
            last_used_at: None,
            revoked_at: None,
            expires_at: key.expires_at,
            parent_id: key.parent_id.clone(),
            policy: key.policy.clone(),
            rotated_at: None,
            secret_expires_at: None,
            minted_from: None,
        })
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>> {
        let db = self.db();
        let sql = format!(
            "SELECT {}, s.secret_expires_at, {} FROM keys \
             JOIN (SELECT key_id, expires_at AS secret_expires_at FROM key_secrets WHERE hash_hex = $1) s \
             ON s.key_id = keys.id",
            common::KEY_COLUMNS,
            common::MINTED_FROM_COLUMNS
        );
        Stmt::new(&sql)
            .bind(hash.to_hex())
            .optional(db.reader(), |r| common::key(r, true))
            .await
    }

    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        let db = self.db();
        let sql = format!("SELECT {} FROM keys WHERE id = $1", common::KEY_COLUMNS);
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(db.reader(), |r| common::key(r, false))
            .await
    }

    async fn listed_origins(&self, now_ms: i64) -> StoreResult<Vec<String>> {
        // The policy is JSON text in both backends; `origins` is written only
        // when non-empty, so the LIKE keeps the decode to keys that list some.
        let policies = Stmt::new(
            "SELECT policy FROM keys WHERE status = 'active' AND parent_key_id IS NULL \
             AND (expires_at IS NULL OR expires_at > $1) AND policy LIKE '%\"origins\"%'",
        )
        .bind(now_ms)
        .all(self.db().reader(), |r| {
            common::decode_json::<KeyPolicy>(&r.text("policy")?, "key policy")
        })
        .await?;
        let mut origins: Vec<String> = policies.into_iter().flat_map(|p| p.origins).collect();
        origins.sort_unstable();
        origins.dedup();
        Ok(origins)
    }

    async fn list_keys(&self, project: Option<&ProjectId>) -> StoreResult<Vec<KeyRecord>> {
        let db = self.db();
        let mut qb = Stmt::new(format!("SELECT {} FROM keys", common::KEY_COLUMNS));
        if let Some(project) = project {
            qb.push(" WHERE project_id = ").push_bind(project.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        qb.all(db.reader(), |r| common::key(r, false)).await
    }

    async fn set_key_status(
        &self,
        id: &KeyId,
        status: KeyStatus,
        now_ms: i64,
    ) -> StoreResult<KeyRecord> {
        let db = self.db();
        // `revoked_at` records when the key first left `active`; going back to
        // `active` clears it.
        let sql = format!(
            "UPDATE keys SET status = $1, \
             revoked_at = CASE WHEN $1 = 'active' THEN NULL ELSE COALESCE(revoked_at, $2) END \
             WHERE id = $3 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(status.as_str())
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(db.writer())
            .await
            .map_err(backend)?;
        let row = row.ok_or(StoreError::NotFound("key"))?;
        common::key(&row, false)
    }

    async fn delete_key(&self, id: &KeyId) -> StoreResult<()> {
        let db = self.db();
        // Secrets go with the key (ON DELETE CASCADE); usage has no foreign key.
        let done = Stmt::new("DELETE FROM keys WHERE id = $1")
            .bind(id.as_str())
            .execute(db.writer())
            .await
            .map_err(backend)?;
        if done == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    async fn touch_keys(&self, last_used: &[(KeyId, i64)]) -> StoreResult<()> {
        let db = self.db();
        let uses = common::latest_uses(last_used);
        if uses.is_empty() {
            return Ok(());
        }
        match db {
            Db::Sqlite { writer, .. } => crate::sqlite::touch_keys(writer, &uses).await,
            Db::Postgres(pool) => crate::postgres::touch_keys(pool, &uses).await,
        }
    }

    async fn set_key_policy(&self, id: &KeyId, policy: &KeyPolicy) -> StoreResult<KeyRecord> {
        let db = self.db();
        let sql = format!(
            "UPDATE keys SET policy = $1 WHERE id = $2 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(common::encode_json(policy, "key policy")?)
            .bind(id.as_str())
            .fetch_optional(db.writer())
            .await
            .map_err(backend)?;
        common::key(&row.ok_or(StoreError::NotFound("key"))?, false)
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
        old_expires_at: i64,
        reactivate: bool,
    ) -> StoreResult<KeyRecord> {
        let db = self.db();
        let hash_hex = common::canonical_hash(&secret.hash_hex)?;
        let mut tx = db.begin().await?;
        // The key row first: it finds out whether the key exists, and its row lock
        // makes concurrent rotations of one key take turns.
        let sql = format!(
            "UPDATE keys SET hint = $1, rotated_at = $2, \
             status = CASE WHEN $3 THEN 'active' ELSE status END, \
             revoked_at = CASE WHEN $3 THEN NULL ELSE revoked_at END \
             WHERE id = $4 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(&secret.hint)
            .bind(now_ms)
            .bind(reactivate)
            .bind(id.as_str())
            .fetch_optional(tx.on())
            .await
            .map_err(backend)?;
        let record = common::key(&row.ok_or(StoreError::NotFound("key"))?, false)?;
        // Never extends a grace period an earlier rotation already set.
        Stmt::new(
            "UPDATE key_secrets SET expires_at = $1 \
             WHERE key_id = $2 AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(old_expires_at)
        .bind(id.as_str())
        .execute(tx.on())
        .await
        .map_err(backend)?;
        Stmt::new(
            "INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES ($1, $2, $3, $4, NULL)",
        )
        .bind(&hash_hex)
        .bind(id.as_str())
        .bind(&secret.hint)
        .bind(now_ms)
        .execute(tx.on())
        .await
        .map_err(|e| write_error(e, "key", "key"))?;
        if old_expires_at <= now_ms {
            // Every existing token was minted with a secret that ends now.
            Stmt::new(REVOKE_TOKENS)
                .bind(now_ms)
                .bind(id.as_str())
                .execute(tx.on())
                .await
                .map_err(backend)?;
        }
        tx.commit().await?;
        Ok(record)
    }

    async fn child_keys(&self, parent: &KeyId) -> StoreResult<Vec<KeyRecord>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM keys WHERE parent_key_id = $1 ORDER BY created_at, id",
            common::KEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(parent.as_str())
            .all(db.reader(), |r| common::key(r, false))
            .await
    }

    async fn revoke_tokens(&self, parent: &KeyId, now_ms: i64) -> StoreResult<Vec<KeyId>> {
        let db = self.db();
        let rows = Stmt::new(format!("{REVOKE_TOKENS} RETURNING id"))
            .bind(now_ms)
            .bind(parent.as_str())
            .fetch_all(db.writer())
            .await
            .map_err(backend)?;
        rows.iter()
            .map(|r| Ok(KeyId::from_trusted(r.text("id")?)))
            .collect()
    }

    async fn current_secret(&self, id: &KeyId) -> StoreResult<Option<KeyHash>> {
        let db = self.db();
        Stmt::new(
            "SELECT hash_hex FROM key_secrets WHERE key_id = $1 AND expires_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id.as_str())
        .optional(db.reader(), common::hash_column)
        .await
    }
}
