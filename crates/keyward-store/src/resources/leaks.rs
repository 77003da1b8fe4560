//! Leaked keys: finding keys by exposed secrets, disabling them, and the reports.

use crate::columns::{backend, write_error};
use crate::common::{self, REVOKE_TOKENS};
use crate::leaks;
use crate::sql::{SqlStore, Stmt};
use crate::{KeyRecord, LeakReport, NewLeakReport, StoreResult};
use async_trait::async_trait;
use keyward_core::{KeyHash, KeyId, LeakReportId};

/// Leaked keys: finding keys by exposed secrets, disabling them, and the reports.
#[async_trait]
pub trait LeakStore: Send + Sync {
    /// The keys owning any of these secret hashes, each with the hash it matched
    /// (a key with several live secrets may appear more than once).
    async fn keys_by_hashes(&self, hashes: &[KeyHash]) -> StoreResult<Vec<(KeyHash, KeyRecord)>>;
    /// Moves a key from `active` to `leaked` (setting `revoked_at`) and revokes
    /// its ephemeral tokens, in one transaction: a token dies with the leaked
    /// secret and stays dead if the leak is later cleared. `Some` only when
    /// this call made the change, so whatever follows a leak happens once
    /// however many reports race; `None` when the key was not active or is absent.
    async fn mark_key_leaked(&self, id: &KeyId, now_ms: i64) -> StoreResult<Option<KeyRecord>>;
    /// Moves a key from `leaked` back to `active` (an admin's explicit decision
    /// that the report was false). `None` when the key was not leaked.
    async fn clear_key_leak(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>>;
    /// Records a sighting; `None` when the same secret was already reported by
    /// the same source at the same place (a replay or a repeat).
    async fn insert_leak_report(&self, report: &NewLeakReport) -> StoreResult<Option<LeakReport>>;
    /// Leak reports, newest first, optionally of one key.
    async fn list_leak_reports(
        &self,
        key: Option<&KeyId>,
        limit: i64,
    ) -> StoreResult<Vec<LeakReport>>;
}

#[async_trait]
impl<S: SqlStore> LeakStore for S {
    async fn keys_by_hashes(&self, hashes: &[KeyHash]) -> StoreResult<Vec<(KeyHash, KeyRecord)>> {
        let db = self.db();
        let head = format!(
            "SELECT {}, s.hash_hex, s.secret_expires_at, {} FROM keys JOIN \
             (SELECT key_id, hash_hex, expires_at AS secret_expires_at FROM key_secrets WHERE hash_hex",
            common::KEY_COLUMNS,
            common::MINTED_FROM_COLUMNS
        );
        let rows = db
            .rows_by_hashes(&head, ") s ON s.key_id = keys.id", hashes)
            .await?;
        rows.iter()
            .map(|r| Ok((common::hash_column(r)?, common::key(r, true)?)))
            .collect()
    }

    async fn mark_key_leaked(&self, id: &KeyId, now_ms: i64) -> StoreResult<Option<KeyRecord>> {
        let db = self.db();
        let sql = format!(
            "UPDATE keys SET status = 'leaked', revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND status = 'active' RETURNING {}",
            common::KEY_COLUMNS
        );
        let mut tx = db.begin().await?;
        let row = Stmt::new(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(tx.on())
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // Its tokens die with the leaked secret, and stay dead if the leak is
        // cleared later.
        Stmt::new(REVOKE_TOKENS)
            .bind(now_ms)
            .bind(id.as_str())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        tx.commit().await?;
        common::key(&row, false).map(Some)
    }

    async fn clear_key_leak(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        let db = self.db();
        let sql = format!(
            "UPDATE keys SET status = 'active', revoked_at = NULL \
             WHERE id = $1 AND status = 'leaked' RETURNING {}",
            common::KEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(db.writer(), |r| common::key(r, false))
            .await
    }

    async fn insert_leak_report(&self, r: &NewLeakReport) -> StoreResult<Option<LeakReport>> {
        let db = self.db();
        let sql = format!(
            "INSERT INTO leak_reports ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (token_hash, source, url, location) DO NOTHING RETURNING {}",
            leaks::LEAK_COLUMNS,
            leaks::LEAK_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(LeakReportId::generate().as_str())
            .bind(r.key_id.as_str())
            .bind(&r.token_hash)
            .bind(&r.source)
            .bind(&r.url)
            .bind(&r.location)
            .bind(&r.token_type)
            .bind(r.outcome.as_str())
            .bind(&r.reporter)
            .bind(r.reported_at)
            .fetch_optional(db.writer())
            .await
            .map_err(|e| write_error(e, "leak report", "leak report"))?;
        row.as_ref().map(leaks::leak_report).transpose()
    }

    async fn list_leak_reports(
        &self,
        key: Option<&KeyId>,
        limit: i64,
    ) -> StoreResult<Vec<LeakReport>> {
        let db = self.db();
        let mut qb = Stmt::new(format!("SELECT {} FROM leak_reports", leaks::LEAK_COLUMNS));
        if let Some(key) = key {
            qb.push(" WHERE key_id = ").push_bind(key.as_str());
        }
        qb.push(" ORDER BY reported_at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        qb.all(db.reader(), leaks::leak_report).await
    }
}
