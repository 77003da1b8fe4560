//! Hard budgets that are never exceeded, under any concurrency on this node.
//!
//! Before a request is forwarded, an upper bound of its cost is *reserved* against
//! every budget above it (key, parent key, project, organization). The check and
//! the reservation are one step under one lock, so concurrent requests cannot all
//! see the same remaining amount. When the response ends, the reservation becomes
//! the actual cost; a request that fails or is refused releases it ([`Reservation`]
//! does so on drop).
//!
//! Accounts are loaded from storage the first time a budget is used in a period.
//! (Several nodes need a shared ledger — Redis — which this module's interface is
//! shaped for; until then, hard limits are exact per node.)

use crate::FastMap as HashMap;
use keyward_core::{Budget, BudgetScope};
use std::sync::{Arc, Mutex};

/// Spend of one budget in one period.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Account {
    /// Actual cost of finished requests, micro-dollars.
    pub spent: i64,
    /// Upper bounds held by requests in flight.
    pub reserved: i64,
}

/// Identifies an account: a budget's scope and the start of its period.
pub type AccountId = (BudgetScope, i64);

/// The upper bound of a request's cost, in parts per million of a micro-dollar
/// (micro-dollars per million tokens times tokens), before the output cap is known.
#[derive(Clone, Copy, Debug)]
pub struct CostBound {
    /// Input tokens (upper bound) times the input price per million.
    pub input_e6: i128,
    /// Output price per million tokens, micro-dollars; 0 for embeddings.
    pub output_price: i64,
    /// The output cap the request set, if any.
    pub requested_output: Option<i64>,
    /// The model's own output limit, if known.
    pub model_max_output: Option<i64>,
}

/// Why a request does not fit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exhausted {
    /// The budget that is short.
    pub scope: BudgetScope,
    /// Its amount.
    pub amount: i64,
    /// What is left of it now.
    pub remaining: i64,
    /// What the request would need at most.
    pub needed: i64,
}

/// A crossing of a soft threshold, to be recorded once per period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThresholdCrossed {
    /// The budget.
    pub budget: Budget,
    /// Start of the period.
    pub period_start: i64,
    /// The percentage crossed.
    pub threshold: u32,
    /// Spend after the crossing.
    pub spent: i64,
}

/// Every account of this node.
#[derive(Default)]
pub struct BudgetLedger {
    accounts: Mutex<HashMap<AccountId, Account>>,
}

/// Money held for one request.
pub struct Reservation {
    ledger: Arc<BudgetLedger>,
    held: Vec<(Arc<Budget>, i64, i64)>,
    settled: bool,
}

impl BudgetLedger {
    /// Whether the account is loaded.
    pub fn is_loaded(&self, id: &AccountId) -> bool {
        self.lock().contains_key(id)
    }

    /// Loads an account with the spend read from storage, unless another task did.
    pub fn load(&self, id: AccountId, spent: i64) {
        self.lock()
            .entry(id)
            .or_insert(Account { spent, reserved: 0 });
    }

    /// An account's state (zero when not loaded).
    pub fn account(&self, id: &AccountId) -> Account {
        self.lock().get(id).copied().unwrap_or_default()
    }

    /// Reserves the request's upper bound against every budget, atomically.
    ///
    /// When the request set no output cap, the cap becomes the most output tokens
    /// the tightest budget can pay for, limited by the model's own limit; the
    /// returned `Some(cap)` must then be sent upstream. Every account must be loaded.
    pub fn reserve(
        self: &Arc<Self>,
        budgets: &[(Arc<Budget>, i64)],
        bound: CostBound,
    ) -> Result<(Reservation, Option<i64>), Exhausted> {
        let mut accounts = self.lock();
        let remaining = |b: &Budget, start: i64, accounts: &HashMap<AccountId, Account>| {
            let a = accounts
                .get(&(b.scope.clone(), start))
                .copied()
                .unwrap_or_default();
            b.amount_micros.0 - a.spent - a.reserved
        };
        let tightest = budgets
            .iter()
            .map(|(b, s)| (b, remaining(b, *s, &accounts)))
            .min_by_key(|(_, r)| *r);
        let mut cap_to_set = None;
        let output = match (bound.requested_output, tightest) {
            (Some(n), _) => n.max(0),
            (None, _) if bound.output_price == 0 => 0,
            (None, None) => bound.model_max_output.unwrap_or(0),
            (None, Some((_, rem))) => {
                let affordable = ((i128::from(rem) * 1_000_000 - bound.input_e6)
                    / i128::from(bound.output_price))
                .max(0);
                let affordable = i64::try_from(affordable).unwrap_or(i64::MAX);
                match bound.model_max_output {
                    Some(max) if affordable >= max => max,
                    max => {
                        let cap = max.map_or(affordable, |m| affordable.min(m));
                        cap_to_set = Some(cap);
                        cap
                    }
                }
            }
        };
        let needed_e6 = bound.input_e6 + i128::from(output) * i128::from(bound.output_price);
        let needed = i64::try_from((needed_e6 + 999_999) / 1_000_000).unwrap_or(i64::MAX);
        for (b, start) in budgets {
            let rem = remaining(b, *start, &accounts);
            // A request whose cap is zero tokens would be pointless: refuse it too.
            if needed > rem || cap_to_set == Some(0) {
                return Err(Exhausted {
                    scope: b.scope.clone(),
                    amount: b.amount_micros.0,
                    remaining: rem,
                    needed,
                });
            }
        }
        for (b, start) in budgets {
            accounts
                .entry((b.scope.clone(), *start))
                .or_default()
                .reserved += needed;
        }
        let held = budgets
            .iter()
            .map(|(b, s)| (Arc::clone(b), *s, needed))
            .collect();
        Ok((
            Reservation {
                ledger: self.clone(),
                held,
                settled: false,
            },
            cap_to_set,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AccountId, Account>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Reservation {
    /// Replaces the reservation by the actual cost; returns the soft thresholds
    /// this crossed.
    pub fn settle(mut self, actual: i64) -> Vec<ThresholdCrossed> {
        self.settled = true;
        let mut crossed = Vec::new();
        let mut accounts = self.ledger.lock();
        for (budget, start, held) in &self.held {
            let a = accounts.entry((budget.scope.clone(), *start)).or_default();
            let before = a.spent;
            a.reserved -= held;
            a.spent += actual.max(0);
            let amount = budget.amount_micros.0.max(1);
            for &t in &budget.soft_thresholds {
                let line = i128::from(amount) * i128::from(t) / 100;
                if i128::from(before) < line && i128::from(a.spent) >= line {
                    crossed.push(ThresholdCrossed {
                        budget: Budget::clone(budget),
                        period_start: *start,
                        threshold: t,
                        spent: a.spent,
                    });
                }
            }
        }
        crossed
    }

    /// The amount held per budget.
    pub fn amount(&self) -> i64 {
        self.held.first().map_or(0, |h| h.2)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            let mut accounts = self.ledger.lock();
            for (budget, start, held) in &self.held {
                if let Some(a) = accounts.get_mut(&(budget.scope.clone(), *start)) {
                    a.reserved -= held;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{Micros, Period};

    fn budget(scope: BudgetScope, amount: i64) -> Arc<Budget> {
        Arc::new(Budget {
            scope,
            amount_micros: Micros(amount),
            period: Period::None,
            soft_thresholds: vec![50, 100],
        })
    }

    fn bound(input_e6: i128, out: i64, requested: Option<i64>) -> CostBound {
        CostBound {
            input_e6,
            output_price: out,
            requested_output: requested,
            model_max_output: Some(1_000),
        }
    }

    #[test]
    fn concurrent_reservations_never_exceed_the_budget() {
        let ledger = Arc::new(BudgetLedger::default());
        let b = budget(BudgetScope::Key("key_a".into()), 100);
        ledger.load((b.scope.clone(), 0), 0);
        let budgets = [(b.clone(), 0)];
        // Each request: up to 30 micro-dollars (10 input + 20 output).
        let held: Vec<_> = (0..10)
            .filter_map(|_| {
                ledger
                    .reserve(&budgets, bound(10_000_000, 1_000_000, Some(20)))
                    .ok()
            })
            .collect();
        assert_eq!(held.len(), 3, "only three bounds of 30 fit in 100");
        let err = ledger
            .reserve(&budgets, bound(10_000_000, 1_000_000, Some(20)))
            .err()
            .unwrap();
        assert_eq!((err.remaining, err.needed), (10, 30));
        // Actual costs are lower: settling frees room.
        for (r, _) in held {
            r.settle(12);
        }
        assert_eq!(
            ledger.account(&(b.scope.clone(), 0)),
            Account {
                spent: 36,
                reserved: 0
            }
        );
    }

    #[test]
    fn missing_cap_is_set_to_what_the_budget_can_pay_for() {
        let ledger = Arc::new(BudgetLedger::default());
        let b = budget(BudgetScope::Project("prj_a".into()), 100);
        ledger.load((b.scope.clone(), 0), 40);
        // 60 left; input 10; output at 2 per token: 25 tokens fit.
        let (r, cap) = ledger
            .reserve(&[(b.clone(), 0)], bound(10_000_000, 2_000_000, None))
            .unwrap();
        assert_eq!(cap, Some(25));
        assert_eq!(r.amount(), 60);
        drop(r);
        assert_eq!(
            ledger.account(&(b.scope.clone(), 0)).reserved,
            0,
            "dropping releases"
        );
        // With plenty of money the model's own limit applies and the request is not rewritten.
        ledger.load((BudgetScope::Org("org_a".into()), 0), 0);
        let rich = budget(BudgetScope::Org("org_a".into()), 1_000_000_000);
        let (_, cap) = ledger
            .reserve(&[(rich, 0)], bound(0, 1_000_000, None))
            .unwrap();
        assert_eq!(cap, None);
    }

    #[test]
    fn the_tightest_budget_names_the_refusal_and_thresholds_fire_once() {
        let ledger = Arc::new(BudgetLedger::default());
        let key = budget(BudgetScope::Key("key_a".into()), 1_000);
        let project = budget(BudgetScope::Project("prj_a".into()), 50);
        ledger.load((key.scope.clone(), 0), 0);
        ledger.load((project.scope.clone(), 0), 0);
        let budgets = [(key.clone(), 0), (project.clone(), 0)];
        let (r, _) = ledger
            .reserve(&budgets, bound(0, 1_000_000, Some(30)))
            .unwrap();
        let crossed = r.settle(30);
        assert_eq!(crossed.len(), 1);
        assert_eq!(
            (crossed[0].budget.scope.clone(), crossed[0].threshold),
            (project.scope.clone(), 50)
        );
        let err = ledger
            .reserve(&budgets, bound(0, 1_000_000, Some(30)))
            .err()
            .unwrap();
        assert_eq!(err.scope, project.scope);
        let (r, _) = ledger
            .reserve(&budgets, bound(0, 1_000_000, Some(20)))
            .unwrap();
        let crossed = r.settle(20);
        assert_eq!(
            crossed.iter().map(|c| c.threshold).collect::<Vec<_>>(),
            vec![100]
        );
    }
}
