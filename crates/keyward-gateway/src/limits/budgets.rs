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
//! The accounts live behind [`Counters`]: in this process (exact per node) or,
//! in cluster mode, shared between nodes.

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

/// The budgets above a request, each with the start of its current period.
pub type PeriodBudgets = [(Arc<Budget>, i64)];

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

/// An account and when a request last used it.
#[derive(Clone, Copy, Debug, Default)]
struct Entry {
    account: Account,
    used_ms: i64,
}

/// An account nothing holds and nothing used for this long is forgotten (it
/// is read from storage again if used): past periods, tokens that expired.
const IDLE_MS: i64 = 10 * 60_000;

/// Below this many accounts the map is never swept.
const SWEEP_FLOOR: usize = 1024;

/// Every account, by budget and period.
#[derive(Default)]
pub(crate) struct Accounts {
    map: HashMap<AccountId, Entry>,
    /// The size at which the map is next swept: twice what the last sweep
    /// kept, so sweeping costs O(1) per request, amortized.
    next_sweep: usize,
}

impl Accounts {
    pub(crate) fn sweep(&mut self, now_ms: i64) {
        if self.map.len() >= self.next_sweep {
            self.map
                .retain(|_, e| e.account.reserved != 0 || now_ms - e.used_ms < IDLE_MS);
            self.next_sweep = (self.map.len() * 2).max(SWEEP_FLOOR);
        }
    }

    fn remaining(&self, b: &Budget, start: i64) -> i64 {
        let a = self
            .map
            .get(&(b.scope.clone(), start))
            .map(|e| e.account)
            .unwrap_or_default();
        b.amount_micros.0 - a.spent - a.reserved
    }

    /// Checks that the request's upper bound fits every budget; returns the
    /// amount to hold per budget (see [`fit`]). Every account must be loaded.
    pub(crate) fn check(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        bound: CostBound,
    ) -> Result<(i64, Option<i64>), Exhausted> {
        let remaining: Vec<i64> = budgets.iter().map(|(b, s)| self.remaining(b, *s)).collect();
        fit(budgets, &remaining, bound)
    }

    /// Holds `needed` against every budget; [`Accounts::check`] must have
    /// passed under the same guard.
    pub(crate) fn charge(&mut self, budgets: &[(Arc<Budget>, i64)], needed: i64, now_ms: i64) {
        for (b, start) in budgets {
            let e = self.map.entry((b.scope.clone(), *start)).or_default();
            e.account.reserved += needed;
            e.used_ms = e.used_ms.max(now_ms);
        }
    }

    /// The accounts of `budgets` not loaded yet, if any.
    pub(crate) fn unloaded(&self, budgets: &[(Arc<Budget>, i64)]) -> Option<Vec<AccountId>> {
        let loaded =
            |(b, start): &(Arc<Budget>, i64)| self.map.contains_key(&(b.scope.clone(), *start));
        if budgets.iter().all(loaded) {
            return None;
        }
        Some(
            budgets
                .iter()
                .filter(|b| !loaded(b))
                .map(|(b, start)| (b.scope.clone(), *start))
                .collect(),
        )
    }
}

/// Checks that the request's upper bound fits every budget, given what
/// remains of each (`remaining[i]` of `budgets[i]`); returns the amount to
/// hold per budget. Every implementation of the counters decides with this
/// one function (the shared one re-derives its answer with it), so they all
/// hold, cap and refuse alike.
///
/// When the request set no output cap, the cap becomes the most output tokens
/// the tightest budget can pay for, limited by the model's own limit; the
/// returned `Some(cap)` must then be sent upstream.
pub(crate) fn fit(
    budgets: &[(Arc<Budget>, i64)],
    remaining: &[i64],
    bound: CostBound,
) -> Result<(i64, Option<i64>), Exhausted> {
    let tightest = budgets
        .iter()
        .zip(remaining.iter().copied())
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
    for ((b, _), &rem) in budgets.iter().zip(remaining) {
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
    Ok((needed, cap_to_set))
}

/// The soft thresholds of `budget` that a spend going from `before` to
/// `after` crossed (each implementation of the counters raises these).
pub(crate) fn thresholds_crossed(
    budget: &Arc<Budget>,
    period_start: i64,
    before: i64,
    after: i64,
) -> impl Iterator<Item = ThresholdCrossed> + '_ {
    let amount = budget.amount_micros.0.max(1);
    budget.soft_thresholds.iter().filter_map(move |&t| {
        let line = i128::from(amount) * i128::from(t) / 100;
        (i128::from(before) < line && i128::from(after) >= line).then(|| ThresholdCrossed {
            budget: Budget::clone(budget),
            period_start,
            threshold: t,
            spent: after,
        })
    })
}

/// Every account of this node (inside [`crate::limits::LocalCounters`]).
#[derive(Default)]
pub(crate) struct BudgetLedger {
    accounts: Mutex<Accounts>,
}

impl BudgetLedger {
    /// How many accounts are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// Loads an account with the spend read from storage, unless another task did.
    pub(crate) fn load(&self, id: AccountId, spent: i64, now_ms: i64) {
        let mut accounts = self.lock();
        accounts.sweep(now_ms);
        let e = accounts.map.entry(id).or_insert(Entry {
            account: Account { spent, reserved: 0 },
            used_ms: now_ms,
        });
        e.used_ms = e.used_ms.max(now_ms);
    }

    /// An account's state (zero when not loaded).
    pub(crate) fn account(&self, id: &AccountId) -> Account {
        self.lock()
            .map
            .get(id)
            .map(|e| e.account)
            .unwrap_or_default()
    }

    /// See [`Counters::settle_budget`].
    pub(crate) fn settle(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        held: i64,
        actual: i64,
    ) -> Vec<ThresholdCrossed> {
        let mut crossed = Vec::new();
        let mut accounts = self.lock();
        for (budget, start) in budgets {
            let a = &mut accounts
                .map
                .entry((budget.scope.clone(), *start))
                .or_default()
                .account;
            let before = a.spent;
            a.reserved -= held;
            a.spent += actual.max(0);
            crossed.extend(thresholds_crossed(budget, *start, before, a.spent));
        }
        crossed
    }

    /// See [`Counters::release_budget`].
    pub(crate) fn release(&self, budgets: &[(Arc<Budget>, i64)], held: i64) {
        let mut accounts = self.lock();
        for (budget, start) in budgets {
            if let Some(e) = accounts.map.get_mut(&(budget.scope.clone(), *start)) {
                e.account.reserved -= held;
            }
        }
    }

    /// The accounts, locked: [`Accounts::check`] and [`Accounts::charge`]
    /// under one guard are one atomic reservation.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::counters::{Charge, Counters, LocalCounters, Refusal};
    use crate::limits::held::Reservation;
    use futures_util::FutureExt;
    use keyward_core::{Micros, Period};

    /// Local counters seen through [`Counters`]; they never wait, so their
    /// futures are ready at once.
    struct Ledger(Arc<dyn Counters>);

    fn ledger() -> Ledger {
        Ledger(Arc::new(LocalCounters::default()))
    }

    impl Ledger {
        fn load(&self, id: AccountId, spent: i64) {
            self.0.load(id, spent, 0).now_or_never().expect("ready");
        }

        fn account(&self, id: &AccountId) -> Account {
            self.0.account(id).now_or_never().expect("ready")
        }

        fn reserve(
            &self,
            budgets: &[(Arc<Budget>, i64)],
            bound: CostBound,
        ) -> Result<(Reservation, Option<i64>), Exhausted> {
            let charge = Charge {
                subjects: &[],
                estimated_tokens: 0,
                reserve: Some((budgets, bound)),
                now_ms: 0,
            };
            match self.0.charge(charge).now_or_never().expect("ready") {
                Ok(c) => Ok((
                    Reservation::new(self.0.clone(), budgets.to_vec(), c.held),
                    c.output_cap,
                )),
                Err(Refusal::Exhausted(e)) => Err(e),
                Err(other) => panic!("{other:?}"),
            }
        }
    }

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
        let ledger = ledger();
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
        let ledger = ledger();
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
        let ledger = ledger();
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
