//! keyward's storage: the [`Store`] trait and its two backends.
//!
//! Invariant: no `sqlx` type crosses this crate's public API. Handlers see domain
//! records and [`StoreError`]; each backend maps its database errors into it.
#![warn(missing_docs)]

mod common;
mod model;
pub mod postgres;
pub mod sqlite;

pub use model::*;

use async_trait::async_trait;
use keyward_core::{KeyHash, KeyId, OrgId, ProjectId};
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
