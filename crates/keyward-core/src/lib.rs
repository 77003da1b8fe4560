//! keyward's domain types: the key format, typed ids, money and the price table.
//!
//! Invariant: this crate does no I/O (no files, no network, no clock reads except
//! through [`Clock`]); everything here is pure and unit-testable.
#![warn(missing_docs)]

pub mod base62;
pub mod budget;
pub mod clock;
pub mod ids;
pub mod key;
pub mod money;
pub mod policy;
pub mod prices;
pub mod role;
pub mod secret;

pub use budget::{Budget, BudgetScope, Period};
pub use clock::Clock;
pub use ids::{
    AuditId, DeliveryId, EventId, KeyId, LeakReportId, OrgId, ProjectId, RecipientId, SessionId,
    UserId, WebhookId,
};
pub use key::{KeyFormat, KeyHash, KeyKind, KeyParseError, ParsedKey};
pub use money::Micros;
pub use policy::{EndpointRule, KeyPolicy, PolicyError};
pub use prices::{ModelPrice, PriceTable, PricesError, TokenUsage};
pub use role::Role;
pub use secret::Secret;
pub mod duration;
