//! `/api/v1/usage`: totals, time buckets and groups.

use keyward_core::{KeyId, OrgId, ProjectId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Sums over usage.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
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
    /// Requests whose usage the upstream never reported (a stream cut off, a
    /// client that hung up): charged from what the gateway saw, an estimate.
    #[serde(default)]
    pub incomplete: i64,
}

/// Totals for one time bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageBucket {
    /// Bucket start, ms since the epoch.
    pub start: i64,
    /// Totals in it.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// The series that sums every group beyond `top`.
pub const OTHER_GROUP: &str = "(other)";

/// Totals for one key, project, model or tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageGroup {
    /// The key id, project id, model name or tag.
    pub group: String,
    /// The key's or project's name, for people (absent for models and tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Totals in it.
    #[serde(flatten)]
    pub totals: UsageTotals,
}

/// One group's time series.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageSeries {
    /// The group, as in [`UsageGroup::group`]; [`OTHER_GROUP`] for the sum
    /// of the groups beyond `top`.
    pub group: String,
    /// Its name, as in [`UsageGroup::name`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Its totals per bucket, oldest first, empty buckets omitted.
    pub buckets: Vec<UsageBucket>,
}

/// The answer to `GET /api/v1/usage`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Usage {
    /// The key filtered on, or null.
    #[schema(value_type = Option<String>)]
    pub key: Option<KeyId>,
    /// The project filtered on, or null.
    #[schema(value_type = Option<String>)]
    pub project: Option<ProjectId>,
    /// The organization filtered on, or null.
    #[schema(value_type = Option<String>)]
    pub org: Option<OrgId>,
    /// Start (inclusive, ms), or null.
    pub from: Option<i64>,
    /// End (exclusive, ms), or null.
    pub to: Option<i64>,
    /// Totals over the whole range.
    #[serde(flatten)]
    pub totals: UsageTotals,
    /// The time series, when `bucket` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buckets: Option<Vec<UsageBucket>>,
    /// Micro-dollars held by requests in flight against the key's budget (with `key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved_micros: Option<i64>,
    /// Totals per group, most expensive first, when `group_by` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<UsageGroup>>,
    /// Each group's time series, in the order of `groups` (with `top`: the
    /// first `top`, then `(other)`), when both `bucket` and `group_by` were given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub series: Option<Vec<UsageSeries>>,
}
