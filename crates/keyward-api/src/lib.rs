//! The management API under `/api/v1`: the bodies clients send and the answers the
//! server gives, as serde types used by both the server (`keyward-gateway`) and the
//! CLI (`keyward`). Defaults the server applies to a request live here, beside the
//! field they fill, so a client does not repeat them.
//!
//! Wire compatibility is the contract: a field's name, nesting and whether it is
//! `null` or absent are those written in `docs/api.md`.

#![warn(missing_docs)]

pub mod admin_keys;
pub mod audit;
pub mod budgets;
pub mod error;
pub mod keys;
pub mod leaks;
pub mod notify;
pub mod orgs;
pub mod usage;
pub mod usage_csv;
pub mod users;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A list answer: `{"data": [...]}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct List<T> {
    /// The items.
    pub data: Vec<T>,
}

impl<T> List<T> {
    /// Wraps `data`.
    pub fn new(data: Vec<T>) -> Self {
        Self { data }
    }
}

/// The answer to a removal: `{"deleted": ...}`, naming what was removed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Deleted<T> {
    /// What was removed.
    pub deleted: T,
}
