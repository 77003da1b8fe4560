//! `/api/v1/orgs` and `/api/v1/projects`.

use keyward_core::{OrgId, ProjectId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The organization created on first start, and the one a key is created in
/// when none is named.
pub const DEFAULT_ORG: &str = "default";

/// `POST /api/v1/orgs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    /// Unique name.
    pub name: String,
}

/// `POST /api/v1/projects`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    /// Name, unique within the organization.
    pub name: String,
    /// The organization, by id or name; the default organization when absent.
    pub org: Option<String>,
}

/// Filters of `GET /api/v1/projects`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProjectQuery {
    /// Only this organization's projects (id or name).
    pub org: Option<String>,
}

/// `PUT /api/v1/projects/{id}/policy`: the project's shared limits and key-age rule.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetProjectPolicy {
    /// Requests per minute across all the project's keys.
    pub rpm: Option<u32>,
    /// Tokens per minute across all the project's keys.
    pub tpm: Option<u32>,
    /// Requests in flight at once across all the project's keys.
    pub max_concurrent: Option<u32>,
    /// Keys older than this many days are flagged for rotation.
    pub max_key_age_days: Option<u32>,
}

/// An organization as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Org {
    /// Its id.
    #[schema(value_type = String)]
    pub id: OrgId,
    /// Unique name.
    pub name: String,
    /// Creation time, ms.
    pub created_at: i64,
}

/// A project as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Project {
    /// Its id.
    #[schema(value_type = String)]
    pub id: ProjectId,
    /// The owning organization.
    #[schema(value_type = String)]
    pub org_id: OrgId,
    /// Name, unique within the organization.
    pub name: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Limits shared by all the project's keys, and its key-age rule.
    pub policy: ProjectPolicy,
}

/// A project's limits as the API shows them: a limit that is not set is left
/// out, not `null`. The key age is in ms here although [`SetProjectPolicy`]
/// takes days, because that is how this answer has always read.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
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
