//! The audit log.

use crate::columns::write_error;
use crate::common;
use crate::sql::{SqlStore, Stmt};
use crate::{AuditEvent, NewAuditEvent, StoreResult};
use async_trait::async_trait;
use keyward_core::AuditId;

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an audit event.
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent>;
    /// Audit events, newest first, optionally only those about one target.
    async fn list_audit(&self, target: Option<&str>, limit: i64) -> StoreResult<Vec<AuditEvent>>;
}

#[async_trait]
impl<S: SqlStore> AuditStore for S {
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent> {
        let db = self.db();
        let id = AuditId::generate();
        Stmt::new(format!(
            "INSERT INTO audit_events (id, at, actor, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, {})",
            db.json("$6")
        ))
        .bind(id.as_str())
        .bind(event.at)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(common::encode_detail(&event.detail)?)
        .execute(db.writer())
        .await
        .map_err(|e| write_error(e, "audit event", "audit event"))?;
        Ok(AuditEvent {
            id,
            at: event.at,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            detail: event.detail.clone(),
        })
    }

    async fn list_audit(&self, target: Option<&str>, limit: i64) -> StoreResult<Vec<AuditEvent>> {
        let db = self.db();
        let mut qb = Stmt::new(
            "SELECT id, at, actor, action, target, CAST(detail AS TEXT) AS detail FROM audit_events",
        );
        if let Some(target) = target {
            qb.push(" WHERE target = ").push_bind(target);
        }
        qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        qb.all(db.reader(), common::audit_event).await
    }
}
