//! `/api/v1/keys`: gateway keys, their rotation and ephemeral tokens.

use keyward_core::{KeyId, KeyPolicy, OrgId, ProjectId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Lifetime of an ephemeral token whose request names none.
pub const TOKEN_TTL_DEFAULT_S: i64 = 600;
/// The longest lifetime of an ephemeral token.
pub const TOKEN_TTL_MAX_S: i64 = 86_400;
/// How long the old secret keeps working after a rotation that names no grace.
pub const ROTATION_GRACE_DEFAULT_S: i64 = 86_400;

/// Restrictions and rate limits as given in a request. Unset fields are left out
/// of the body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Presets and `METHOD /path` patterns, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<String>,
    /// Model globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub models: Option<Vec<String>>,
    /// Client networks (CIDRs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networks: Option<Vec<String>>,
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u32>,
    /// Tokens per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u32>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u32>,
    /// Web origins (`https://app.example.com`) whose pages may use the key from a
    /// browser; exact, no wildcard. On a token, a subset of its parent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origins: Option<Vec<String>>,
}

impl PolicyInput {
    /// Whether nothing is restricted.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A budget as given in a request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// Amount in US dollars.
    pub usd: f64,
    /// `month`, `day` or `none`; `budgets::DEFAULT_PERIOD` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// Soft alert thresholds in percent (default 50, 80, 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<Vec<u32>>,
}

/// `POST /api/v1/keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Project id or name.
    pub project: String,
    /// Organization id or name, when `project` is a name (default organization otherwise).
    pub org: Option<String>,
    /// Human name.
    pub name: String,
    /// Free-form tags, for usage per tag.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Seconds until the key expires.
    pub expires_in_seconds: Option<i64>,
    /// Create the project when no project has that name.
    #[serde(default)]
    pub create_project: bool,
    /// Restrictions and rate limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInput>,
    /// A budget for this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetInput>,
}

/// Filters of `GET /api/v1/keys`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyQuery {
    /// A project, by id, or by name within `org`.
    pub project: Option<String>,
    /// An organization, by id or name.
    pub org: Option<String>,
}

/// `POST /api/v1/keys/{id}/rotate` (the body is optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateKey {
    /// Seconds the old secret keeps working ([`ROTATION_GRACE_DEFAULT_S`]; 0 ends it now).
    pub grace_seconds: Option<i64>,
}

/// `POST /api/v1/keys/{id}/ephemeral` and `POST /keyward/v1/tokens` (the body is
/// optional).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EphemeralRequest {
    /// Lifetime in seconds ([`TOKEN_TTL_DEFAULT_S`], at most [`TOKEN_TTL_MAX_S`]).
    pub ttl_seconds: Option<i64>,
    /// A subset of the parent's permissions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInput>,
    /// Its own small budget, in dollars, for its whole life.
    pub budget_usd: Option<f64>,
}

/// A gateway key or ephemeral token as recorded, as the API shows it (never its
/// secret). [`Key`] adds what the server derives from it; clear-leak answers
/// this alone, as it always has.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyRecord {
    /// Its id.
    #[schema(value_type = String)]
    pub id: KeyId,
    /// Its project.
    #[schema(value_type = String)]
    pub project_id: ProjectId,
    /// The project's organization.
    #[schema(value_type = String)]
    pub org_id: OrgId,
    /// Human name.
    pub name: String,
    /// Display hint of the current secret.
    pub hint: String,
    /// `active`, `revoked`, `expired`, `leaked` or `suspended`.
    pub status: String,
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
    /// For an ephemeral token, the key it was derived from.
    #[schema(value_type = Option<String>)]
    pub parent_id: Option<KeyId>,
    /// Restrictions and rate limits.
    #[schema(value_type = Object)]
    pub policy: KeyPolicy,
    /// When the current secret was issued by a rotation, ms.
    pub rotated_at: Option<i64>,
}

/// A gateway key or ephemeral token as the API shows it: its record and what
/// the server derives from the record and its project.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Key {
    /// The key as recorded.
    #[serde(flatten)]
    pub record: KeyRecord,
    /// Whether this is an ephemeral token.
    pub ephemeral: bool,
    /// The current secret is older than the project's maximum key age.
    pub rotation_due: bool,
}

/// A new secret: the key plus the secret itself, which is never shown again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedKey {
    /// The key.
    #[serde(flatten)]
    pub record: Key,
    /// The secret (`kw_…` or `kwe_…`).
    pub key: String,
}
