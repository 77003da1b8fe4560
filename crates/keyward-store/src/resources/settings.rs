//! Settings: values every node sharing the database must agree on.

use crate::columns::{backend, Columns};
use crate::sql::{SqlStore, Stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;

/// Settings: named values set once, by whichever node needs one first.
#[async_trait]
pub trait SettingStore: Send + Sync {
    /// Stores `value` under `name` unless a value is stored there already;
    /// returns the stored value (this one, or the one that was there). Nodes
    /// starting together agree on one.
    async fn claim_setting(&self, name: &str, value: &str) -> StoreResult<String>;
}

#[async_trait]
impl<S: SqlStore> SettingStore for S {
    async fn claim_setting(&self, name: &str, value: &str) -> StoreResult<String> {
        let db = self.db();
        Stmt::new(
            "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(value)
        .execute(db.writer())
        .await
        .map_err(backend)?;
        Stmt::new("SELECT value FROM settings WHERE name = $1")
            .bind(name)
            .optional(db.writer(), |row| row.text("value"))
            .await?
            .ok_or_else(|| StoreError::Backend(format!("the setting {name:?} vanished")))
    }
}
