//! Notification channels: webhooks and email recipients.

use crate::columns::{backend, write_error};
use crate::leaks::{self, encode_events};
use crate::sql::{SqlStore, Stmt};
use crate::{NewWebhook, Recipient, StoreError, StoreResult, Webhook};
use async_trait::async_trait;
use keyward_core::{RecipientId, Secret, WebhookId};

/// Notification channels: webhooks and email recipients.
#[async_trait]
pub trait ChannelStore: Send + Sync {
    /// Stores a webhook.
    async fn create_webhook(&self, webhook: &NewWebhook) -> StoreResult<Webhook>;
    /// All webhooks, oldest first.
    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>>;
    /// Deletes a webhook (its delivery log stays); `NotFound` if absent.
    async fn delete_webhook(&self, id: &WebhookId) -> StoreResult<()>;
    /// Replaces a webhook's stored secret with `new` only if it is still
    /// `expected` (a compare-and-set, so that nodes sealing the same secrets at
    /// start do not overwrite each other); true when this call changed it.
    async fn replace_webhook_secret(
        &self,
        id: &WebhookId,
        expected: &Secret,
        new: &Secret,
    ) -> StoreResult<bool>;
    /// Stores an email recipient.
    async fn create_recipient(&self, recipient: &Recipient) -> StoreResult<Recipient>;
    /// All email recipients, oldest first.
    async fn list_recipients(&self) -> StoreResult<Vec<Recipient>>;
    /// Deletes an email recipient; `NotFound` if absent.
    async fn delete_recipient(&self, id: &RecipientId) -> StoreResult<()>;
}

#[async_trait]
impl<S: SqlStore> ChannelStore for S {
    async fn create_webhook(&self, w: &NewWebhook) -> StoreResult<Webhook> {
        let db = self.db();
        let sql = format!(
            "INSERT INTO webhooks ({}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {}",
            leaks::WEBHOOK_COLUMNS,
            leaks::WEBHOOK_COLUMNS
        );
        let row = Stmt::new(&sql)
            .bind(w.id.as_str())
            .bind(&w.url)
            .bind(w.secret.expose())
            .bind(encode_events(&w.scope.events)?)
            .bind(w.scope.org_id.as_ref().map(|o| o.as_str()))
            .bind(w.scope.project_id.as_ref().map(|p| p.as_str()))
            .bind(&w.description)
            .bind(&w.created_by)
            .bind(w.created_at)
            .fetch_one(db.writer())
            .await
            .map_err(|e| write_error(e, "webhook", "webhook"))?;
        leaks::webhook(&row)
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM webhooks ORDER BY created_at, id",
            leaks::WEBHOOK_COLUMNS
        );
        Stmt::new(&sql).all(db.reader(), leaks::webhook).await
    }

    async fn delete_webhook(&self, id: &WebhookId) -> StoreResult<()> {
        let db = self.db();
        let done = Stmt::new("DELETE FROM webhooks WHERE id = $1")
            .bind(id.as_str())
            .execute(db.writer())
            .await
            .map_err(backend)?;
        if done == 0 {
            return Err(StoreError::NotFound("webhook"));
        }
        Ok(())
    }

    async fn replace_webhook_secret(
        &self,
        id: &WebhookId,
        expected: &keyward_core::Secret,
        new: &keyward_core::Secret,
    ) -> StoreResult<bool> {
        let db = self.db();
        let done = Stmt::new("UPDATE webhooks SET secret = $1 WHERE id = $2 AND secret = $3")
            .bind(new.expose())
            .bind(id.as_str())
            .bind(expected.expose())
            .execute(db.writer())
            .await
            .map_err(backend)?;
        Ok(done == 1)
    }

    async fn create_recipient(&self, r: &Recipient) -> StoreResult<Recipient> {
        let db = self.db();
        Stmt::new(format!(
            "INSERT INTO email_recipients ({}) VALUES ($1, $2, $3, $4, $5, $6)",
            leaks::RECIPIENT_COLUMNS
        ))
        .bind(r.id.as_str())
        .bind(&r.address)
        .bind(encode_events(&r.scope.events)?)
        .bind(r.scope.org_id.as_ref().map(|o| o.as_str()))
        .bind(r.scope.project_id.as_ref().map(|p| p.as_str()))
        .bind(r.created_at)
        .execute(db.writer())
        .await
        .map_err(|e| write_error(e, "recipient", "recipient"))?;
        Ok(r.clone())
    }

    async fn list_recipients(&self) -> StoreResult<Vec<Recipient>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM email_recipients ORDER BY created_at, id",
            leaks::RECIPIENT_COLUMNS
        );
        Stmt::new(&sql).all(db.reader(), leaks::recipient).await
    }

    async fn delete_recipient(&self, id: &RecipientId) -> StoreResult<()> {
        let db = self.db();
        let done = Stmt::new("DELETE FROM email_recipients WHERE id = $1")
            .bind(id.as_str())
            .execute(db.writer())
            .await
            .map_err(backend)?;
        if done == 0 {
            return Err(StoreError::NotFound("recipient"));
        }
        Ok(())
    }
}
