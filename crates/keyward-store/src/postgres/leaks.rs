//! PostgreSQL side of leak response: leak reports, channels and the delivery log.
//! The `Store` methods in `postgres.rs` delegate here.

use super::PgStore;
use crate::common::{self, backend, write_error};
use crate::leaks::{self, encode_events, encode_payload};
use crate::{
    AdminKey, AttemptResult, Delivery, KeyRecord, LeakReport, NewDelivery, NewLeakReport,
    NewWebhook, Recipient, StoreError, StoreResult, Webhook,
};
use keyward_core::{KeyHash, KeyId, LeakReportId, RecipientId, WebhookId};
use sqlx::{Postgres, QueryBuilder};

impl PgStore {
    pub(super) async fn leaks_keys_by_hashes(
        &self,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<(KeyHash, KeyRecord)>> {
        let hex: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
        let sql = format!(
            "SELECT {}, s.hash_hex, s.secret_expires_at, {} FROM keys JOIN \
             (SELECT key_id, hash_hex, expires_at AS secret_expires_at FROM key_secrets WHERE hash_hex = ANY($1)) s \
             ON s.key_id = keys.id",
            common::KEY_COLUMNS,
            common::MINTED_FROM_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(&hex)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((common::hash_column(r)?, common::key(r, true)?));
        }
        Ok(out)
    }

    pub(super) async fn leaks_admin_keys_by_hashes(
        &self,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<(KeyHash, AdminKey)>> {
        let hex: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
        let sql = format!(
            "SELECT {}, hash_hex FROM admin_keys WHERE hash_hex = ANY($1)",
            common::ADMIN_KEY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(&hex)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            out.push((common::hash_column(r)?, common::admin_key(r)?));
        }
        Ok(out)
    }

    pub(super) async fn leaks_mark_key_leaked(
        &self,
        id: &KeyId,
        now_ms: i64,
    ) -> StoreResult<Option<KeyRecord>> {
        let sql = format!(
            "UPDATE keys SET status = 'leaked', revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND status = 'active' RETURNING {}",
            common::KEY_COLUMNS
        );
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let Some(row) = row else {
            return Ok(None);
        };
        // Its tokens die with the leaked secret, and stay dead if the leak is
        // cleared later.
        sqlx::query(super::REVOKE_TOKENS)
            .bind(now_ms)
            .bind(id.as_str())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        common::key(&row, false).map(Some)
    }

    pub(super) async fn leaks_clear_key_leak(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        let sql = format!(
            "UPDATE keys SET status = 'active', revoked_at = NULL \
             WHERE id = $1 AND status = 'leaked' RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| common::key(r, false)).transpose()
    }

    pub(super) async fn leaks_insert_report(
        &self,
        r: &NewLeakReport,
    ) -> StoreResult<Option<LeakReport>> {
        let sql = format!(
            "INSERT INTO leak_reports ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (token_hash, source, url, location) DO NOTHING RETURNING {}",
            leaks::LEAK_COLUMNS,
            leaks::LEAK_COLUMNS
        );
        let row = sqlx::query(&sql)
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
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| write_error(e, "leak report", "leak report"))?;
        row.as_ref().map(leaks::leak_report).transpose()
    }

    pub(super) async fn leaks_list_reports(
        &self,
        key: Option<&KeyId>,
        limit: i64,
    ) -> StoreResult<Vec<LeakReport>> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM leak_reports",
            leaks::LEAK_COLUMNS
        ));
        if let Some(key) = key {
            qb.push(" WHERE key_id = ").push_bind(key.as_str());
        }
        qb.push(" ORDER BY reported_at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(leaks::leak_report).collect()
    }

    pub(super) async fn leaks_create_webhook(&self, w: &NewWebhook) -> StoreResult<Webhook> {
        let sql = format!(
            "INSERT INTO webhooks ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {}",
            leaks::WEBHOOK_COLUMNS,
            leaks::WEBHOOK_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(w.id.as_str())
            .bind(&w.url)
            .bind(w.secret.expose())
            .bind(encode_events(&w.scope.events)?)
            .bind(w.scope.org_id.as_ref().map(|o| o.as_str()))
            .bind(w.scope.project_id.as_ref().map(|p| p.as_str()))
            .bind(&w.description)
            .bind(&w.created_by)
            .bind(w.created_at)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| write_error(e, "webhook", "webhook"))?;
        leaks::webhook(&row)
    }

    pub(super) async fn leaks_list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let sql = format!(
            "SELECT {} FROM webhooks ORDER BY created_at, id",
            leaks::WEBHOOK_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(leaks::webhook).collect()
    }

    pub(super) async fn leaks_delete_webhook(&self, id: &WebhookId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM webhooks WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("webhook"));
        }
        Ok(())
    }

    pub(super) async fn leaks_replace_webhook_secret(
        &self,
        id: &WebhookId,
        expected: &keyward_core::Secret,
        new: &keyward_core::Secret,
    ) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE webhooks SET secret = $1 WHERE id = $2 AND secret = $3")
            .bind(new.expose())
            .bind(id.as_str())
            .bind(expected.expose())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    pub(super) async fn leaks_create_recipient(&self, r: &Recipient) -> StoreResult<Recipient> {
        sqlx::query(&format!(
            "INSERT INTO email_recipients ({}) VALUES ($1, $2, $3, $4, $5, $6)",
            leaks::RECIPIENT_COLUMNS
        ))
        .bind(r.id.as_str())
        .bind(&r.address)
        .bind(encode_events(&r.scope.events)?)
        .bind(r.scope.org_id.as_ref().map(|o| o.as_str()))
        .bind(r.scope.project_id.as_ref().map(|p| p.as_str()))
        .bind(r.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| write_error(e, "recipient", "recipient"))?;
        Ok(r.clone())
    }

    pub(super) async fn leaks_list_recipients(&self) -> StoreResult<Vec<Recipient>> {
        let sql = format!(
            "SELECT {} FROM email_recipients ORDER BY created_at, id",
            leaks::RECIPIENT_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(leaks::recipient).collect()
    }

    pub(super) async fn leaks_delete_recipient(&self, id: &RecipientId) -> StoreResult<()> {
        let done = sqlx::query("DELETE FROM email_recipients WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("recipient"));
        }
        Ok(())
    }

    pub(super) async fn leaks_enqueue(&self, deliveries: &[NewDelivery]) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let mut added = 0;
        for d in deliveries {
            let done = sqlx::query(
                "INSERT INTO deliveries (id, channel, target_id, event_id, event_type, payload, status, attempts, next_attempt_at, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $7, $7) ON CONFLICT (target_id, event_id) DO NOTHING",
            )
            .bind(d.id.as_str())
            .bind(d.channel.as_str())
            .bind(&d.target_id)
            .bind(d.event_id.as_str())
            .bind(&d.event_type)
            .bind(encode_payload(&d.payload)?)
            .bind(d.created_at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
            added += done.rows_affected();
        }
        tx.commit().await.map_err(backend)?;
        Ok(added)
    }

    pub(super) async fn leaks_claim_due(
        &self,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        // SKIP LOCKED: concurrent claimers on other nodes take other rows.
        let sql = format!(
            "UPDATE deliveries SET next_attempt_at = $1 WHERE id IN \
             (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $2 \
              ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) RETURNING {}",
            leaks::DELIVERY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(lease_until)
            .bind(now_ms)
            .bind(limit.max(0))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(leaks::delivery).collect()
    }

    pub(super) async fn leaks_record_attempt(&self, r: &AttemptResult) -> StoreResult<()> {
        let delivered = r.status == crate::DeliveryStatus::Delivered;
        sqlx::query(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             last_status = $3, last_error = $4, delivered_at = $5 WHERE id = $6",
        )
        .bind(r.status.as_str())
        .bind(r.next_attempt_at)
        .bind(r.last_status)
        .bind(r.last_error.as_deref())
        .bind(delivered.then_some(r.at))
        .bind(r.id.as_str())
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    pub(super) async fn leaks_list_deliveries(
        &self,
        target: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM deliveries",
            leaks::DELIVERY_COLUMNS
        ));
        if let Some(t) = target {
            qb.push(" WHERE target_id = ").push_bind(t);
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit.max(0));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(leaks::delivery).collect()
    }
}
