//! The JSON shapes people use to give restrictions and budgets, and their
//! validation into domain types. Bad input is refused with a message that says
//! what is wrong; nothing is stored.

use super::ApiError;
use keyward_core::policy::parse_networks;
use keyward_core::{Budget, BudgetScope, EndpointRule, KeyPolicy, Micros, Period};
use serde::Deserialize;

/// Restrictions and limits as given in a request.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Presets and `METHOD /path` patterns, comma-separated.
    endpoints: Option<String>,
    /// Model globs.
    models: Option<Vec<String>>,
    /// Client networks (CIDRs).
    networks: Option<Vec<String>>,
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrent: Option<u32>,
}

impl PolicyInput {
    /// Validates into a policy.
    pub fn into_policy(self) -> Result<KeyPolicy, ApiError> {
        let bad = |e: keyward_core::PolicyError| ApiError::BadRequest(e.to_string());
        let policy = KeyPolicy {
            endpoints: match self.endpoints {
                Some(spec) => EndpointRule::parse_list(&spec).map_err(bad)?,
                None => Vec::new(),
            },
            models: self.models.unwrap_or_default(),
            networks: match self.networks {
                Some(list) => parse_networks(&list.join(",")).map_err(bad)?,
                None => Vec::new(),
            },
            rpm: self.rpm,
            tpm: self.tpm,
            max_concurrent: self.max_concurrent,
        };
        policy.validate().map_err(bad)?;
        Ok(policy)
    }
}

/// A budget as given in a request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetInput {
    /// Amount in US dollars.
    pub usd: f64,
    /// `month` (default), `day` or `none`.
    pub period: Option<String>,
    /// Soft alert thresholds in percent (default 50, 80, 100).
    pub soft: Option<Vec<u32>>,
}

impl BudgetInput {
    /// Validates into a budget for `scope`.
    pub fn into_budget(self, scope: BudgetScope) -> Result<Budget, ApiError> {
        let amount = Micros::from_usd(self.usd).ok_or_else(|| {
            ApiError::BadRequest(format!("budget amount {} is not valid: give a non-negative number of dollars up to one billion", self.usd))
        })?;
        let period = match self.period.as_deref() {
            None => Period::Month,
            Some(p) => Period::parse(p).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown budget period {p:?}: use month, day or none"
                ))
            })?,
        };
        let mut soft = self
            .soft
            .unwrap_or_else(|| Budget::DEFAULT_THRESHOLDS.to_vec());
        if soft.iter().any(|&t| t == 0 || t > 1000) {
            return Err(ApiError::BadRequest(
                "soft thresholds are percentages between 1 and 1000".into(),
            ));
        }
        soft.sort_unstable();
        soft.dedup();
        Ok(Budget {
            scope,
            amount_micros: amount,
            period,
            soft_thresholds: soft,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_policies_and_budgets() {
        let p: PolicyInput = serde_json::from_str(r#"{"endpoints": "everything"}"#).unwrap();
        assert!(p.into_policy().is_err());
        let p: PolicyInput = serde_json::from_str(r#"{"networks": ["10.0.0.0/40"]}"#).unwrap();
        assert!(p.into_policy().is_err());
        let p: PolicyInput = serde_json::from_str(r#"{"rpm": 0}"#).unwrap();
        assert!(p.into_policy().is_err());
        assert!(serde_json::from_str::<PolicyInput>(r#"{"allow_ip": []}"#).is_err());
        let b: BudgetInput = serde_json::from_str(r#"{"usd": -1}"#).unwrap();
        assert!(b.into_budget(BudgetScope::Key("key_a".into())).is_err());
        let b: BudgetInput = serde_json::from_str(r#"{"usd": 1e15}"#).unwrap();
        assert!(b.into_budget(BudgetScope::Key("key_a".into())).is_err());
        let b: BudgetInput = serde_json::from_str(r#"{"usd": 5, "period": "fortnight"}"#).unwrap();
        assert!(b.into_budget(BudgetScope::Key("key_a".into())).is_err());
        let b: BudgetInput = serde_json::from_str(r#"{"usd": 5, "soft": [0]}"#).unwrap();
        assert!(b.into_budget(BudgetScope::Key("key_a".into())).is_err());
        let b: BudgetInput = serde_json::from_str(r#"{"usd": 5, "soft": [80, 50, 80]}"#).unwrap();
        assert_eq!(
            b.into_budget(BudgetScope::Key("key_a".into()))
                .unwrap()
                .soft_thresholds,
            vec![50, 80]
        );
    }
}
