//! `/api/v1/audit`.

use keyward_core::AuditId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Events answered when a query names no limit.
pub const DEFAULT_LIMIT: i64 = 100;

/// Filters of `GET /api/v1/audit`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditQuery {
    /// Only events about this target.
    pub target: Option<String>,
    /// At most this many events, newest first ([`DEFAULT_LIMIT`], 1 to 1,000).
    pub limit: Option<i64>,
}

impl AuditQuery {
    /// The limit asked for, or the default, within 1 to 1,000.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 1000)
    }
}

/// An audit event as the API shows it. `D` is how the free-form `detail` is
/// held, `serde_json::Value` for any event: this crate depends on no JSON
/// library (see keyward's tidy test), so each side names its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent<D> {
    /// Its id.
    #[schema(value_type = String)]
    pub id: AuditId,
    /// When, ms.
    pub at: i64,
    /// Who: an admin key id, a key id, a user id, or `system`.
    pub actor: String,
    /// What, e.g. `key.created`.
    pub action: String,
    /// On what, e.g. a key id.
    pub target: String,
    /// Structured detail (never secrets).
    pub detail: D,
}
