//! The JSON shapes people use to give restrictions and budgets, and their
//! validation into domain types. Bad input is refused with a message that says
//! what is wrong; nothing is stored.

use super::ApiError;
use keyward_api::keys::{BudgetInput, PolicyInput};
use keyward_core::policy::{parse_networks, parse_origin};
use keyward_core::{Budget, BudgetScope, EndpointRule, KeyPolicy, Micros, Period};

/// Validation of a policy as given in a request.
pub trait ToPolicy {
    /// Validates into a policy.
    fn into_policy(self) -> Result<KeyPolicy, ApiError>;
}

impl ToPolicy for PolicyInput {
    fn into_policy(self) -> Result<KeyPolicy, ApiError> {
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
            // Stored canonical (lower case, no default port), so the check at
            // request time is an exact comparison with the browser's `Origin`.
            origins: self
                .origins
                .unwrap_or_default()
                .iter()
                .map(|o| {
                    parse_origin(o).ok_or_else(|| bad(keyward_core::PolicyError::Origin(o.clone())))
                })
                .collect::<Result<_, _>>()?,
        };
        policy.validate().map_err(bad)?;
        Ok(policy)
    }
}

/// Validation of a budget as given in a request.
pub trait ToBudget {
    /// Validates into a budget for `scope`.
    fn into_budget(self, scope: BudgetScope) -> Result<Budget, ApiError>;
}

impl ToBudget for BudgetInput {
    fn into_budget(self, scope: BudgetScope) -> Result<Budget, ApiError> {
        let amount = budget_amount(self.usd)?;
        let period = match self.period.as_deref() {
            None => keyward_api::budgets::DEFAULT_PERIOD,
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

/// A budget amount in dollars as exact micro-dollars.
///
/// Decision: an amount that is not a whole number of micro-dollars (more than
/// six decimals, such as `1e-7`) is refused, not rounded: rounding down would
/// store less than was asked (`1e-7` became $0, a budget that refuses
/// everything), rounding up would store more, and either way the stored budget
/// would not be the one the caller believes they set. The test: the micro-dollar
/// amount, converted back, is exactly the number given (both sides are the
/// correctly rounded value of the same decimal, so any amount of at most six
/// decimals passes).
fn budget_amount(usd: f64) -> Result<Micros, ApiError> {
    if !usd.is_finite() || usd < 0.0 {
        return Err(ApiError::BadRequest(format!(
            "budget amount {usd} is not valid: give a non-negative number of dollars"
        )));
    }
    let amount = Micros::from_usd(usd).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "budget amount {usd} is not valid: budgets are at most one billion dollars"
        ))
    })?;
    if amount.0 as f64 / 1e6 != usd {
        return Err(ApiError::BadRequest(format!(
            "budget amount {usd} is finer than a micro-dollar ($0.000001), the unit budgets are kept in: \
             give at most six decimals"
        )));
    }
    Ok(amount)
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
        for fine in [
            0.0,
            0.000_001,
            0.1,
            12.345_678,
            25.0,
            999_999_999.999_999,
            1e9,
        ] {
            let b = BudgetInput {
                usd: fine,
                period: None,
                soft: None,
            };
            let micros = b.into_budget(BudgetScope::Key("key_a".into())).unwrap();
            assert_eq!(micros.amount_micros.0 as f64 / 1e6, fine);
        }
        for finer in [1e-7, 0.000_000_5, 1.000_000_1, 12.345_678_9] {
            let b = BudgetInput {
                usd: finer,
                period: None,
                soft: None,
            };
            assert!(
                b.into_budget(BudgetScope::Key("key_a".into())).is_err(),
                "{finer}"
            );
        }
        for nonsense in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.5] {
            let b = BudgetInput {
                usd: nonsense,
                period: None,
                soft: None,
            };
            assert!(b.into_budget(BudgetScope::Key("key_a".into())).is_err());
        }
        let b: BudgetInput = serde_json::from_str(r#"{"usd": 5, "soft": [80, 50, 80]}"#).unwrap();
        assert_eq!(
            b.into_budget(BudgetScope::Key("key_a".into()))
                .unwrap()
                .soft_thresholds,
            vec![50, 80]
        );
    }
}
