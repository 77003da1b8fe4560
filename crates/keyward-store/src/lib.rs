//! keyward's storage: a trait per stored resource, [`Store`] over them all,
//! and two backends that share every query but where the databases differ.
//!
//! Invariant: no `sqlx` type crosses this crate's public API. Handlers see domain
//! records and [`StoreError`]; each backend maps its database errors into it.
#![warn(missing_docs)]

mod accounts;
mod columns;
mod common;
mod leaks;
mod model;
pub mod postgres;
mod resources;
mod sql;
pub mod sqlite;

pub use accounts::{
    NewOneTimeToken, NewSession, NewUser, OneTimeKind, OneTimeToken, Session, StoredPasskeyRow,
    User,
};
pub use common::DEPLOYMENT_CHAIN;
pub use leaks::{
    AttemptResult, Channel, ChannelScope, Delivery, DeliveryStatus, LeakOutcome, LeakReport,
    NewDelivery, NewLeakReport, NewWebhook, Recipient, Webhook,
};
pub use model::*;
pub use resources::{
    AdminKeyStore, AuditStore, BudgetStore, ChannelStore, DeliveryStore, KeyStore, LeakStore,
    OrgStore, SessionStore, SettingStore, UsageStore, UserStore,
};

use async_trait::async_trait;
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
    /// The database's schema was migrated by a newer keyward than this one:
    /// running on it could misread or corrupt what the newer version wrote, so
    /// the store does not open.
    #[error("the database schema is at version {database}, newer than this keyward (which knows up to {known}): upgrade keyward before starting it on this database")]
    SchemaNewer {
        /// The newest migration the database records.
        database: i64,
        /// The newest migration this binary carries.
        known: i64,
    },
}

/// Result alias for storage calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// Everything keyward keeps durably: every resource trait, plus what the server
/// asks of the database itself. Both backends pass the same test suite.
///
/// A new kind of stored record is a new trait in `resources/`, added here and
/// to [`prelude`].
#[async_trait]
pub trait Store:
    OrgStore
    + KeyStore
    + AdminKeyStore
    + UsageStore
    + AuditStore
    + BudgetStore
    + LeakStore
    + ChannelStore
    + DeliveryStore
    + UserStore
    + SessionStore
    + SettingStore
    + Send
    + Sync
    + 'static
{
    /// Which backend this is (`sqlite` or `postgres`), for logs and `/readyz`.
    fn backend(&self) -> &'static str;

    /// A cheap round trip to the database, for `/readyz`.
    async fn ping(&self) -> StoreResult<()>;
}

/// The resource traits, so that their methods can be called on a [`Store`]
/// (`use keyward_store::prelude::*;`).
pub mod prelude {
    pub use crate::resources::{
        AdminKeyStore, AuditStore, BudgetStore, ChannelStore, DeliveryStore, KeyStore, LeakStore,
        OrgStore, SessionStore, SettingStore, UsageStore, UserStore,
    };
    pub use crate::Store;
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
