//! The notification queue and delivery log.

use crate::columns::backend;
use crate::leaks::{self, encode_payload};
use crate::sql::{SqlStore, Stmt};
use crate::{AttemptResult, Delivery, NewDelivery, StoreResult};
use async_trait::async_trait;

/// The notification queue and delivery log.
#[async_trait]
pub trait DeliveryStore: Send + Sync {
    /// Queues deliveries, skipping any whose (target, event) is already queued.
    /// Returns how many were new.
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> StoreResult<u64>;
    /// Takes up to `limit` pending deliveries due at `now_ms` and pushes their
    /// next attempt to `lease_until`, atomically, so that two nodes (or two
    /// workers) never send the same attempt at once.
    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>>;
    /// Records an attempt's result (attempts + 1).
    async fn record_attempt(&self, result: &AttemptResult) -> StoreResult<()>;
    /// The delivery log, newest first, optionally of one webhook or recipient.
    async fn list_deliveries(&self, target: Option<&str>, limit: i64)
        -> StoreResult<Vec<Delivery>>;
}

#[async_trait]
impl<S: SqlStore> DeliveryStore for S {
    async fn enqueue_deliveries(&self, deliveries: &[NewDelivery]) -> StoreResult<u64> {
        let db = self.db();
        let mut tx = db.begin().await?;
        let mut added = 0;
        for d in deliveries {
            let done = Stmt::new(
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
            .execute(tx.on())
            .await
            .map_err(backend)?;
            added += done;
        }
        tx.commit().await?;
        Ok(added)
    }

    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let db = self.db();
        // One statement: on SQLite the single writer makes it atomic; on
        // PostgreSQL, SKIP LOCKED lets claimers on other nodes take other rows.
        let sql = format!(
            "UPDATE deliveries SET next_attempt_at = $1 WHERE id IN \
             (SELECT id FROM deliveries WHERE status = 'pending' AND next_attempt_at <= $2 \
              ORDER BY next_attempt_at LIMIT $3{}) RETURNING {}",
            db.skip_locked(),
            leaks::DELIVERY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(lease_until)
            .bind(now_ms)
            .bind(limit.max(0))
            .all(db.writer(), leaks::delivery)
            .await
    }

    async fn record_attempt(&self, r: &AttemptResult) -> StoreResult<()> {
        let db = self.db();
        let delivered = r.status == crate::DeliveryStatus::Delivered;
        Stmt::new(
            "UPDATE deliveries SET status = $1, attempts = attempts + 1, next_attempt_at = $2, \
             last_status = $3, last_error = $4, delivered_at = $5 WHERE id = $6",
        )
        .bind(r.status.as_str())
        .bind(r.next_attempt_at)
        .bind(r.last_status)
        .bind(r.last_error.as_deref())
        .bind(delivered.then_some(r.at))
        .bind(r.id.as_str())
        .execute(db.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn list_deliveries(
        &self,
        target: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<Delivery>> {
        let db = self.db();
        let mut qb = Stmt::new(format!(
            "SELECT {} FROM deliveries",
            leaks::DELIVERY_COLUMNS
        ));
        if let Some(t) = target {
            qb.push(" WHERE target_id = ").push_bind(t);
        }
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit.max(0));
        qb.all(db.reader(), leaks::delivery).await
    }
}
