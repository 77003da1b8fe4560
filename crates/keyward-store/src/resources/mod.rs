//! One trait per stored resource, each implemented once for both backends
//! (through [`crate::sql`]); a backend's own module is called only where the
//! databases differ.

mod admin_keys;
mod audit;
mod budgets;
mod channels;
mod deliveries;
mod keys;
mod leaks;
mod orgs;
mod sessions;
mod settings;
mod usage;
mod users;

pub use admin_keys::AdminKeyStore;
pub use audit::AuditStore;
pub use budgets::BudgetStore;
pub use channels::ChannelStore;
pub use deliveries::DeliveryStore;
pub use keys::KeyStore;
pub use leaks::LeakStore;
pub use orgs::OrgStore;
pub use sessions::SessionStore;
pub use settings::SettingStore;
pub use usage::UsageStore;
pub use users::UserStore;

use crate::columns::backend;
use crate::sql::{SqlStore, Stmt};
use crate::{Store, StoreResult};
use async_trait::async_trait;

#[async_trait]
impl<S: SqlStore> Store for S {
    fn backend(&self) -> &'static str {
        match self.db() {
            crate::sql::Db::Sqlite { .. } => "sqlite",
            crate::sql::Db::Postgres(_) => "postgres",
        }
    }

    async fn ping(&self) -> StoreResult<()> {
        Stmt::new("SELECT 1")
            .execute(self.db().reader())
            .await
            .map_err(backend)?;
        Ok(())
    }
}
