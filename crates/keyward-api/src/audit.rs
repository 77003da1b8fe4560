//! `/api/v1/audit`.

use keyward_core::{AuditId, OrgId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Events answered when a query names no limit.
pub const DEFAULT_LIMIT: i64 = 100;

/// Filters of `GET /api/v1/audit`. Every one is optional; a caller scoped to
/// one organization sees only that organization's events whatever it asks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditQuery {
    /// Only events of this organization (name or id).
    pub org: Option<String>,
    /// Only events by this actor (an admin key id, a user id, `system`).
    pub actor: Option<String>,
    /// Only events whose action starts with this, e.g. `key.` or `key.revoked`.
    pub action: Option<String>,
    /// Only events about this target.
    pub target: Option<String>,
    /// Only events at or after this time, ms.
    pub since: Option<i64>,
    /// Only events before this time, ms. Exclusive by time: to page, use
    /// `before`, which does not skip events sharing a millisecond.
    pub until: Option<i64>,
    /// Only events older than this one, by id (`aud_…`): the last event of the
    /// previous page. Events are ordered by time, then by the order they were
    /// written, so paging with it returns each event exactly once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
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
    /// Its organization, whose hash chain it belongs to; null: a
    /// deployment-level event.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
    /// The client's address, when it came from a request.
    #[serde(default)]
    pub ip: Option<String>,
    /// The client's `User-Agent`, when it came from a request.
    #[serde(default)]
    pub user_agent: Option<String>,
    /// The hash of the event before it in its chain; null: the first.
    #[serde(default)]
    pub prev_hash: Option<String>,
    /// SHA-256 (hex) over its fields and `prev_hash`, which
    /// `GET /api/v1/audit/verify` checks.
    #[serde(default)]
    pub hash: Option<String>,
}

/// The answer to `GET /api/v1/audit/verify`: `{"ok":true,"events":N}` when
/// every chain is intact, otherwise `ok` false and the first event that does
/// not fit its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AuditVerification {
    /// Whether every event fits its chain and every chain ends at its head.
    pub ok: bool,
    /// How many events were checked (when `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// The first event that does not fit (when not `ok`): altered, out of
    /// place, or the missing last event its chain's head still names.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub event_id: Option<AuditId>,
    /// Its chain (when not `ok`): an organization id, or `deployment`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<String>,
    /// What does not fit, in words (when not `ok`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}
