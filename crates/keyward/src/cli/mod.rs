//! One module per subcommand family.

pub mod admin_keys;
pub mod amount;
pub mod api;
pub mod budgets;
pub mod health;
pub mod key_ref;
pub mod keys;
pub mod leak_settings;
pub mod orgs;
pub mod report;
pub mod scan;
pub mod serve;
pub mod table;
pub mod usage;
pub mod webhooks;
