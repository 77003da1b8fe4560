//! keyward's storage: the [`Store`] trait and its two backends.
//!
//! Invariant: no `sqlx` type crosses this crate's public API. Handlers see domain
//! records and [`StoreError`]; each backend maps its database errors into it.
#![warn(missing_docs)]

mod common;
mod leaks;
mod model;
pub mod postgres;
pub mod sqlite;

pub use leaks::{
    AttemptResult, Channel, ChannelScope, Delivery, DeliveryStatus, LeakOutcome, LeakReport,
    NewDelivery, NewLeakReport, NewWebhook, Recipient, Webhook,
};
pub use model::*;

use async_trait::async_trait;
use keyward_core::{Budget, BudgetScope, KeyHash, KeyId, KeyPolicy, OrgId, ProjectId};
use keyward_core::{RecipientId, Secret, WebhookId};
use std::sync::Arc;

/// Storage failures in domain terms.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The record does not exist.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// A unique name or hash is already taken.
    #[error("{0} already exists")]
    Duplicate(&'static str),
    /// The database failed; the detail is for logs, not for clients.
    #[error("database error: {0}")]
    Backend(String),
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything keyward keeps durably. Both backends pass the same test suite.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (`sqlite` or `postgres`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip to the database, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;

    // Organizations and projects.

    /// Creates an organization; `Duplicate` when the name is taken.
    async fn create_org(&self, name: &str, now_ms: i64) -> StoreResult<Org>;
    /// Looks an organization up by its unique name.
    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>>;
    /// Looks an organization up by id.
    async fn get_org(&self, id: &OrgId) -> StoreResult<Option<Org>>;
    /// All organizations, oldest first.
    async fn list_orgs(&self) -> StoreResult<Vec<Org>>;
    /// Creates a project in `org`; `Duplicate` when the org has one of that name,
    /// `NotFound` when the org does not exist.
    async fn create_project(&self, org: &OrgId, name: &str, now_ms: i64) -> StoreResult<Project>;
    /// A project by its name within an organization.
    async fn project_by_name(&self, org: &OrgId, name: &str) -> StoreResult<Option<Project>>;
    /// A project by id.
    async fn get_project(&self, id: &ProjectId) -> StoreResult<Option<Project>>;
    /// Projects, of one org or of all, oldest first.
    async fn list_projects(&self, org: Option<&OrgId>) -> StoreResult<Vec<Project>>;

    // Gateway keys.

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

    // Admin (management) keys.

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

    // Usage.

    /// Appends usage events and adds them to the hourly rollups, atomically: after
    /// a successful return every event is counted exactly once.
    async fn insert_usage(&self, events: &[UsageEvent]) -> StoreResult<()>;
    /// Totals over the rollups matching `filter`.
    async fn usage_totals(&self, filter: &UsageFilter) -> StoreResult<UsageTotals>;
    /// Totals per hour or per day (UTC), oldest first, empty buckets omitted.
    async fn usage_buckets(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> StoreResult<Vec<UsageBucket>>;
    /// Raw events matching `filter`, newest first, at most `limit`.
    async fn usage_events(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageEvent>>;

    // Audit.

    /// Appends an audit event.
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent>;
    /// Audit events, newest first, optionally only those about one target.
    async fn list_audit(&self, target: Option<&str>, limit: i64) -> StoreResult<Vec<AuditEvent>>;

    // Restrictions, budgets, rotation.

    /// Replaces a key's restrictions and rate limits; `NotFound` if absent.
    async fn set_key_policy(&self, id: &KeyId, policy: &KeyPolicy) -> StoreResult<KeyRecord>;
    /// Replaces a project's limits and key-age policy; `NotFound` if absent.
    async fn set_project_policy(
        &self,
        id: &ProjectId,
        policy: &ProjectPolicy,
    ) -> StoreResult<Project>;
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
    /// Creates or replaces the budget of `budget.scope`.
    async fn set_budget(&self, budget: &Budget, now_ms: i64) -> StoreResult<()>;
    /// Removes a budget; `NotFound` if there is none.
    async fn delete_budget(&self, scope: &BudgetScope) -> StoreResult<()>;
    /// The budgets of these scopes (those that have one).
    async fn budgets_for(&self, scopes: &[BudgetScope]) -> StoreResult<Vec<Budget>>;
    /// Every budget.
    async fn list_budgets(&self) -> StoreResult<Vec<Budget>>;
    /// Records that `threshold` percent of a budget was crossed in the period that
    /// starts at `period_start`; true the first time only (so alerts fire once).
    async fn record_budget_alert(
        &self,
        scope: &BudgetScope,
        period_start: i64,
        threshold: u32,
        now_ms: i64,
    ) -> StoreResult<bool>;
    /// Totals grouped by key (from the rollups) or by model (from the events).
    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>>;

    // Leaks, webhooks and notifications.

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

/// A store shared by every task of the server.
pub type SharedStore = Arc<dyn Store>;

/// Opens the store a URL names: `sqlite://PATH` (created if missing) or
/// `postgres://…`. Runs that backend's migrations before returning.
pub async fn open(url: &str) -> StoreResult<SharedStore> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if let Some(path) = url.strip_prefix("sqlite://") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(std::path::Path::new(path)).await?,
        ))
    } else {
        Err(StoreError::Backend(
            "unsupported database URL: use sqlite://PATH or postgres://…".into(),
        ))
    }
}
