//! `/api/v1/orgs` and `/api/v1/projects`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

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
