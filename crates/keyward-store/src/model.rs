//! The records the store keeps.

use keyward_core::{AuditId, KeyId, KeyPolicy, Micros, OrgId, ProjectId};
use serde::{Deserialize, Serialize};

/// An organization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Org {
    /// Its id.
    pub id: OrgId,
    /// Unique name.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
}

/// A project inside an organization.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Project {
    /// Its id.
    pub id: ProjectId,
    /// The owning organization.
    pub org_id: OrgId,
    /// Name, unique within the organization.
    pub name: String,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// Limits shared by all the project's keys, and its key-age policy.
    pub policy: ProjectPolicy,
}

/// Limits and rules for a whole project.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPolicy {
    /// Requests per minute across all the project's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute across all the project's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once across all the project's keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Keys whose current secret is older than this (ms) are flagged for rotation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_key_age_ms: Option<i64>,
}

/// A key's lifecycle state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyStatus {
    /// Usable.
    Active,
    /// Revoked by a person or API call.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Found exposed; disabled until an admin explicitly clears it.
    Leaked,
    /// Temporarily disabled (lockdown).
    Suspended,
}

impl KeyStatus {
    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Active => "active",
            KeyStatus::Revoked => "revoked",
            KeyStatus::Expired => "expired",
            KeyStatus::Leaked => "leaked",
            KeyStatus::Suspended => "suspended",
        }
    }

    /// Parses a stored or requested status.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "active" => KeyStatus::Active,
            "revoked" => KeyStatus::Revoked,
            "expired" => KeyStatus::Expired,
            "leaked" => KeyStatus::Leaked,
            "suspended" => KeyStatus::Suspended,
            _ => return None,
        })
    }
}

/// What is needed to create a gateway key. The secret itself is not here: only its
/// hash (hex SHA-256) and display hint.
#[derive(Clone, Debug)]
pub struct NewKey {
    /// The new key's id.
    pub id: KeyId,
    /// Its project.
    pub project_id: ProjectId,
    /// Human name.
    pub name: String,
    /// SHA-256 of the full key, lowercase hex.
    pub hash_hex: String,
    /// Prefix and last four characters, e.g. `kwk_…x9Qa`.
    pub hint: String,
    /// Labels for usage reports (feature, team, product).
    pub tags: Vec<String>,
    /// Who created it (an admin key id or user), for the record.
    pub created_by: Option<String>,
    /// Creation time, ms since the epoch.
    pub created_at: i64,
    /// When it stops working, if ever.
    pub expires_at: Option<i64>,
    /// For an ephemeral token, the key it was derived from.
    pub parent_id: Option<KeyId>,
    /// For an ephemeral token, SHA-256 (hex) of the parent's secret it was
    /// minted with: the token works only while that secret does.
    pub parent_secret_hash: Option<String>,
    /// Restrictions and rate limits.
    pub policy: KeyPolicy,
}

/// A new secret for an existing key (rotation).
#[derive(Clone, Debug)]
pub struct NewSecret {
    /// SHA-256 of the full key, lowercase hex.
    pub hash_hex: String,
    /// Display hint.
    pub hint: String,
}

/// A gateway key as stored (never its secret).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyRecord {
    /// Its id.
    pub id: KeyId,
    /// Its project.
    pub project_id: ProjectId,
    /// The project's organization.
    pub org_id: OrgId,
    /// Human name.
    pub name: String,
    /// Display hint of the current secret.
    pub hint: String,
    /// Lifecycle state.
    pub status: KeyStatus,
    /// Labels for usage reports.
    pub tags: Vec<String>,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last time the gateway accepted it, ms (updated in batches).
    pub last_used_at: Option<i64>,
    /// When it left `active`, ms.
    pub revoked_at: Option<i64>,
    /// When the key stops working, ms.
    pub expires_at: Option<i64>,
    /// For an ephemeral token (`kwe_`), the key it was derived from.
    pub parent_id: Option<KeyId>,
    /// Restrictions and rate limits.
    pub policy: KeyPolicy,
    /// When the current secret was issued by a rotation, ms.
    pub rotated_at: Option<i64>,
    /// When the particular secret used for a lookup stops working (rotation grace),
    /// ms; `None` outside `key_by_hash` or for a current secret.
    #[serde(skip)]
    pub secret_expires_at: Option<i64>,
    /// For a token looked up by one of its secrets (`key_by_hash`,
    /// `keys_by_hashes`): the parent secret it was minted with, as stored at
    /// that moment. `None` for keys and for records read any other way.
    #[serde(skip)]
    pub minted_from: Option<MintedFrom>,
}

/// The state of the parent secret an ephemeral token was minted with. Read
/// with the token itself, so checking it costs the gateway no extra lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MintedFrom {
    /// The secret still belongs to the parent; it stops working at
    /// `expires_at` (the end of a rotation's grace period), if set.
    Secret {
        /// When the secret stops working, ms.
        expires_at: Option<i64>,
    },
    /// The secret no longer exists (its key was deleted), or the token records
    /// none (minted before tokens were bound to secrets and not bindable).
    Gone,
}

impl MintedFrom {
    /// Whether a token minted with this secret may still be used at `now_ms`.
    pub fn is_live(self, now_ms: i64) -> bool {
        match self {
            MintedFrom::Secret { expires_at } => expires_at.is_none_or(|t| now_ms < t),
            MintedFrom::Gone => false,
        }
    }
}

/// What is needed to create an admin key.
#[derive(Clone, Debug)]
pub struct NewAdminKey {
    /// Id (a `KeyId`: admin keys share the id space).
    pub id: KeyId,
    /// Human name.
    pub name: String,
    /// SHA-256 of the full key, lowercase hex.
    pub hash_hex: String,
    /// Display hint.
    pub hint: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// The admin key that created it (`None` for the bootstrap key).
    pub created_by: Option<String>,
    /// The one organization it manages; `None` for the deployment's bootstrap
    /// key, which acts in every organization and is audited on every use.
    pub org_id: Option<OrgId>,
}

/// A management key as stored (never its secret). An admin key has one secret
/// at a time: a rotation replaces it, and the old one stops at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AdminKey {
    /// Its id.
    pub id: KeyId,
    /// Human name.
    pub name: String,
    /// Display hint of its secret.
    pub hint: String,
    /// `active`, `revoked` or `leaked`.
    pub status: KeyStatus,
    /// Creation time, ms.
    pub created_at: i64,
    /// When it left `active`, ms.
    pub revoked_at: Option<i64>,
    /// When its secret was last replaced by a rotation, ms.
    pub rotated_at: Option<i64>,
    /// The admin key that created it (`None` for the bootstrap key).
    pub created_by: Option<String>,
    /// The one organization it manages; `None`: the deployment's bootstrap key.
    pub org_id: Option<OrgId>,
}

/// What an attempt to revoke an admin key did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminKeyRevocation {
    /// The key was active and is now revoked.
    Revoked(AdminKey),
    /// The key was already revoked or leaked; nothing changed.
    NotActive(AdminKey),
    /// The key is the last active admin key: revoking it would lock every
    /// administrator out, so nothing changed.
    LastActive,
}

/// One metered request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// The key used.
    pub key_id: KeyId,
    /// Its project.
    pub project_id: ProjectId,
    /// Its organization.
    pub org_id: OrgId,
    /// When the request arrived, ms.
    pub at: i64,
    /// Path, e.g. `/v1/chat/completions`.
    pub endpoint: String,
    /// Model named by the request or response; empty when none.
    pub model: String,
    /// HTTP status returned to the client.
    pub status: u16,
    /// Input tokens, cached included.
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Output tokens, reasoning included.
    pub output_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost.
    pub cost_micros: Micros,
    /// Time to the upstream's response headers, ms.
    pub upstream_latency_ms: i64,
    /// Time until the response was fully sent, ms.
    pub total_latency_ms: i64,
    /// Client address as seen by the gateway.
    pub client_ip: Option<String>,
    /// The response was streamed.
    pub streamed: bool,
    /// The stream ended before the upstream reported usage (tokens estimated).
    pub incomplete: bool,
}

/// Which usage to count. Empty fields match everything.
#[derive(Clone, Debug, Default)]
pub struct UsageFilter {
    /// Only this key.
    pub key: Option<KeyId>,
    /// Only this project.
    pub project: Option<ProjectId>,
    /// Only this organization.
    pub org: Option<OrgId>,
    /// From this time on (inclusive, ms; rounded down to the bucket).
    pub from: Option<i64>,
    /// Before this time (exclusive, ms).
    pub to: Option<i64>,
}

/// Sums over usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageTotals {
    /// Requests.
    pub requests: i64,
    /// Requests answered with a status >= 400.
    pub errors: i64,
    /// Input tokens.
    pub input_tokens: i64,
    /// Cached input tokens.
    pub cached_input_tokens: i64,
    /// Output tokens.
    pub output_tokens: i64,
    /// Reasoning tokens.
    pub reasoning_tokens: i64,
    /// Cost, micro-dollars.
    pub cost_micros: i64,
    /// Requests whose usage the upstream never reported (a stream cut off or
    /// hung up on): charged from what the gateway saw, an estimate.
    pub incomplete: i64,
}

impl UsageTotals {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &UsageTotals) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.cached_input_tokens += other.cached_input_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cost_micros += other.cost_micros;
        self.incomplete += other.incomplete;
    }

    /// Takes `other`'s counts from these (a part from its whole).
    pub fn subtract(&mut self, other: &UsageTotals) {
        self.requests -= other.requests;
        self.errors -= other.errors;
        self.input_tokens -= other.input_tokens;
        self.cached_input_tokens -= other.cached_input_tokens;
        self.output_tokens -= other.output_tokens;
        self.reasoning_tokens -= other.reasoning_tokens;
        self.cost_micros -= other.cost_micros;
        self.incomplete -= other.incomplete;
    }
}

/// Bucket width for time series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    /// One UTC hour.
    Hour,
    /// One UTC day.
    Day,
    /// One UTC calendar month.
    Month,
}

/// Totals for one time bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    /// Bucket start, ms.
    pub start: i64,
    /// Totals in it.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// An audit event to append.
///
/// `Default` so that construction sites can leave the newer, optional fields
/// (`org_id`, `ip`, `user_agent`) to `..Default::default()`.
#[derive(Clone, Debug, Default)]
pub struct NewAuditEvent {
    /// When, ms.
    pub at: i64,
    /// Who: an admin key id, a user id, or `system`.
    pub actor: String,
    /// What, e.g. `key.created`, `key.revoked`, `key.deleted`.
    pub action: String,
    /// The object acted on, e.g. a key id.
    pub target: String,
    /// Structured detail (never secrets).
    pub detail: serde_json::Value,
    /// The organization it happened in, whose chain it joins; `None`: a
    /// deployment-level event (e.g. a use of the bootstrap admin key).
    pub org_id: Option<OrgId>,
    /// The client's address, when the event comes from a request.
    pub ip: Option<String>,
    /// The client's `User-Agent`, when the event comes from a request.
    pub user_agent: Option<String>,
}

/// An audit event as stored.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditEvent {
    /// Its id.
    pub id: AuditId,
    /// When, ms.
    pub at: i64,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub target: String,
    /// Structured detail.
    pub detail: serde_json::Value,
    /// Its organization (and chain); `None`: the deployment chain.
    pub org_id: Option<OrgId>,
    /// The client's address, if recorded.
    pub ip: Option<String>,
    /// The client's `User-Agent`, if recorded.
    pub user_agent: Option<String>,
    /// The hash of the event before it in its chain; `None`: the first.
    pub prev_hash: Option<String>,
    /// SHA-256 (hex) over its fields and `prev_hash`; `None` only for a row
    /// written outside keyward, which verification reports.
    pub hash: Option<String>,
}

/// Which audit events to list, newest first. Every filter is optional; the
/// default lists the whole log up to `limit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only events of this organization.
    pub org_id: Option<OrgId>,
    /// Only events about this target.
    pub target: Option<String>,
    /// Only events by this actor.
    pub actor: Option<String>,
    /// Only events whose action starts with this, e.g. `key.`.
    pub action_prefix: Option<String>,
    /// Only events at or after this time, ms.
    pub since: Option<i64>,
    /// Only events before this time, ms.
    pub until: Option<i64>,
    /// Only events older than this one (the last id of the previous page).
    pub before: Option<AuditId>,
    /// At most this many.
    pub limit: i64,
}

/// The first audit event that does not fit its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct AuditBreak {
    /// The event: present but altered or out of place, or (when the end of a
    /// chain was cut) the missing last event its chain's head still names.
    pub event_id: AuditId,
    /// Its chain: an organization id, or `deployment`.
    pub chain: String,
    /// What does not fit, in words.
    pub reason: String,
}

/// How to group usage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    /// Per key id.
    Key,
    /// Per project id.
    Project,
    /// Per model name.
    Model,
}

/// Totals for one group in one time bucket.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageSeriesPoint {
    /// Bucket start, ms.
    pub start: i64,
    /// The key id, project id or model name.
    pub group: String,
    /// Totals in it.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// Totals for one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageGroup {
    /// The key id, project id or model name.
    pub group: String,
    /// Totals in it.
    #[serde(flatten)]
    pub totals: UsageTotals,
}
