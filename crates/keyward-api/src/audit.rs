//! `/api/v1/audit`.

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
