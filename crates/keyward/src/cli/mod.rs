//! One module per subcommand family.

pub mod admin_keys;
pub mod amount;
pub mod api;
pub mod audit;
pub mod budgets;
pub mod health;
pub mod key_ref;
pub mod keys;
pub mod leak_settings;
pub mod leaks;
pub mod orgs;
pub mod recipients;
pub mod report;
pub mod scan;
pub mod serve;
pub mod table;
pub mod tokens;
pub mod usage;
pub mod users;
pub mod webhooks;
