//! `/api/v1/budgets`: hard budgets with soft alert thresholds on an organization, a
//! project or a key.

use keyward_core::{Budget, Period};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The period of a budget set without one.
pub const DEFAULT_PERIOD: Period = Period::Month;

/// Names exactly one scope: an organization, a project (optionally with its
/// organization) or a key. The body of `DELETE /api/v1/budgets`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopeRef {
    /// An organization, by name or id.
    pub org: Option<String>,
    /// A project, by name or id.
    pub project: Option<String>,
    /// A key, by id.
    pub key: Option<String>,
}

/// `PUT /api/v1/budgets`: create or replace the budget of one scope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBudget {
    /// An organization, by name or id.
    pub org: Option<String>,
    /// A project, by name or id.
    pub project: Option<String>,
    /// A key, by id.
    pub key: Option<String>,
    /// Amount in US dollars per period.
    pub usd: f64,
    /// `month`, `day` or `none`; [`DEFAULT_PERIOD`] when absent or null.
    pub period: Option<String>,
    /// Soft alert thresholds in percent; `Budget::DEFAULT_THRESHOLDS` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft: Option<Vec<u32>>,
}

/// One entry of `GET /api/v1/budgets`: a budget and where its current period stands.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct BudgetStatus {
    /// The budget.
    #[schema(value_type = Object)]
    pub budget: Budget,
    /// When its current period started (ms since the epoch; 0 for `none`).
    pub period_start: i64,
    /// Micro-dollars spent in the current period, as metered and stored.
    pub spent_micros: i64,
    /// Micro-dollars reserved by requests in flight on this server.
    pub reserved_micros: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_budget_sends_period_null_and_leaves_soft_out_when_unset() {
        let body = SetBudget {
            org: Some("acme".into()),
            project: None,
            key: None,
            usd: 1.5,
            period: None,
            soft: None,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"org":"acme","project":null,"key":null,"usd":1.5,"period":null}"#
        );
    }

    #[test]
    fn scope_ref_refuses_unknown_fields() {
        assert!(serde_json::from_str::<ScopeRef>(r#"{"team":"x"}"#).is_err());
    }
}
