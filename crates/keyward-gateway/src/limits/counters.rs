//! The seam between admission and the numbers it checks: [`Counters`] holds the
//! rate-limit buckets and budget accounts of every scope a request touches.
//! [`LocalCounters`] keeps them in this process; cluster mode puts shared
//! (Redis) counters behind the same trait without touching admission or the
//! proxy.

use crate::limits::budgets::{
    Account, AccountId, BudgetLedger, CostBound, Exhausted, ThresholdCrossed,
};
use crate::limits::rate::{Limits, RateHeaders, RateLimited, RateLimiter, Subject};
use keyward_core::Budget;
use std::sync::Arc;

/// Rate-limit buckets and budget accounts, checked and charged per request.
///
/// Every check-and-charge is atomic over the scopes it is given: either every
/// scope is charged or none is, so a refusal by one limit consumes nothing of
/// the others. What a check charged is given back (or corrected to actual use)
/// through [`Counters::release_rate`], [`Counters::release_budget`] and
/// [`Counters::settle_budget`]; [`crate::limits::rate::Permit`] and
/// [`crate::limits::budgets::Reservation`] call them, also from `Drop`.
///
/// Those three are plain functions because `Drop` cannot await: they must not
/// block. An implementation whose counters are across a network (Redis) sends
/// the release to its own task (an unbounded channel read by a task spawned on
/// the server's runtime) and returns at once; [`LocalCounters`] applies it
/// inline, which is one uncontended lock and a few additions, cheaper than
/// handing it to a task, and lets a caller that drops a permit see it given
/// back at once.
#[async_trait::async_trait]
pub trait Counters: Send + Sync {
    /// Checks every subject's limits and, only if all pass, charges one request,
    /// `estimated_tokens` tokens and one in-flight slot to each. `subjects` has
    /// no subject without limits.
    async fn charge_rate(
        &self,
        subjects: &[(Subject, Limits)],
        estimated_tokens: i64,
        now_ms: i64,
    ) -> Result<RateHeaders, RateLimited>;

    /// Gives back what [`Counters::charge_rate`] charged: everything when
    /// `actual_tokens` is `None` (the request was never sent), else the
    /// in-flight slot and the difference between estimated and actual tokens.
    fn release_rate(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    );

    /// Whether a budget's account for a period is loaded (and, for an
    /// implementation that evicts, kept until the reservation that follows).
    async fn is_loaded(&self, id: &AccountId, now_ms: i64) -> bool;

    /// Loads an account with the spend read from storage, unless another
    /// request (or node) did.
    async fn load(&self, id: AccountId, spent: i64, now_ms: i64);

    /// An account's state (zero when not loaded).
    async fn account(&self, id: &AccountId) -> Account;

    /// Reserves the request's upper bound against every budget (each with the
    /// start of its current period; every account loaded), atomically. Returns
    /// the amount held per budget and, when the request set no output cap, the
    /// cap to send upstream (see [`BudgetLedger::reserve`]).
    async fn reserve(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        bound: CostBound,
        now_ms: i64,
    ) -> Result<(i64, Option<i64>), Exhausted>;

    /// Replaces a reservation of `held` per budget by the actual cost; returns
    /// the soft thresholds this crossed. An implementation that settles in a
    /// task raises the crossings itself (through
    /// [`crate::limits::alerts::BudgetAlerts`]) and returns none.
    fn settle_budget(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        held: i64,
        actual: i64,
    ) -> Vec<ThresholdCrossed>;

    /// Gives back a reservation of `held` per budget that was never used.
    fn release_budget(&self, budgets: &[(Arc<Budget>, i64)], held: i64);
}

/// The counters of this process: exact under any concurrency on this node.
///
/// Memory stays bounded: what no longer matters is swept out as the maps grow
/// (see [`RateLimiter`] and [`BudgetLedger`]): rate-limit buckets of idle
/// subjects that are full again (which covers expired ephemeral tokens), and
/// budget accounts nothing holds and nothing used for a while (which covers
/// past periods; an account swept by mistake is only read from storage again).
#[derive(Default)]
pub struct LocalCounters {
    rate: RateLimiter,
    ledger: BudgetLedger,
}

impl LocalCounters {
    /// How many rate-limit subjects and budget accounts are held (for tests of
    /// eviction).
    pub fn tracked(&self) -> (usize, usize) {
        (self.rate.len(), self.ledger.len())
    }
}

#[async_trait::async_trait]
impl Counters for LocalCounters {
    async fn charge_rate(
        &self,
        subjects: &[(Subject, Limits)],
        estimated_tokens: i64,
        now_ms: i64,
    ) -> Result<RateHeaders, RateLimited> {
        self.rate.charge(subjects, estimated_tokens, now_ms)
    }

    fn release_rate(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    ) {
        self.rate.release(charged, estimated_tokens, actual_tokens);
    }

    async fn is_loaded(&self, id: &AccountId, now_ms: i64) -> bool {
        self.ledger.is_loaded(id, now_ms)
    }

    async fn load(&self, id: AccountId, spent: i64, now_ms: i64) {
        self.ledger.load(id, spent, now_ms);
    }

    async fn account(&self, id: &AccountId) -> Account {
        self.ledger.account(id)
    }

    async fn reserve(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        bound: CostBound,
        now_ms: i64,
    ) -> Result<(i64, Option<i64>), Exhausted> {
        self.ledger.reserve(budgets, bound, now_ms)
    }

    fn settle_budget(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        held: i64,
        actual: i64,
    ) -> Vec<ThresholdCrossed> {
        self.ledger.settle(budgets, held, actual)
    }

    fn release_budget(&self, budgets: &[(Arc<Budget>, i64)], held: i64) {
        self.ledger.release(budgets, held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::budgets::reserve;
    use crate::limits::rate::admit;
    use futures_util::FutureExt;
    use keyward_core::{BudgetScope, Clock, KeyId, Micros, Period, ProjectId};

    /// Local counters never wait, so their futures are ready at once.
    fn now<T>(f: impl std::future::Future<Output = T>) -> T {
        f.now_or_never().expect("local counters do not wait")
    }

    fn daily(scope: BudgetScope) -> Arc<Budget> {
        Arc::new(Budget {
            scope,
            amount_micros: Micros(1_000_000),
            period: Period::Day,
            soft_thresholds: vec![],
        })
    }

    #[test]
    fn ephemeral_tokens_and_past_periods_are_not_kept() {
        let local = Arc::new(LocalCounters::default());
        let counters: Arc<dyn Counters> = local.clone();
        let clock = Clock::manual(0);
        let project = ProjectId::generate();
        let project_budget = daily(BudgetScope::Project(project.to_string()));
        let limits = Limits {
            rpm: Some(60),
            tpm: Some(10_000),
            max_concurrent: Some(2),
        };
        let first_day = Period::Day.start(clock.now_ms());
        // 100,000 tokens, one request each, 3 s apart: about three and a half days.
        let (mut today, mut requests_today) = (first_day, 0);
        for _ in 0..100_000 {
            let t = clock.now_ms();
            if Period::Day.start(t) != today {
                (today, requests_today) = (Period::Day.start(t), 0);
            }
            requests_today += 1;
            let token = KeyId::generate();
            let subjects = vec![
                (Subject::Key(token.clone()), limits),
                (Subject::Project(project.clone()), Limits::default()),
            ];
            let mut permit = now(admit(&counters, subjects, 100, t)).expect("within limits");
            permit.commit();
            let budgets = vec![
                (
                    daily(BudgetScope::Key(token.to_string())),
                    Period::Day.start(t),
                ),
                (project_budget.clone(), Period::Day.start(t)),
            ];
            for (b, start) in &budgets {
                if !now(counters.is_loaded(&(b.scope.clone(), *start), t)) {
                    now(counters.load((b.scope.clone(), *start), 0, t));
                }
            }
            let bound = CostBound {
                input_e6: 10_000_000,
                output_price: 0,
                requested_output: Some(0),
                model_max_output: None,
            };
            let (reservation, _) = now(reserve(&counters, budgets, bound, t)).expect("fits");
            reservation.settle(1);
            permit.finish(40);
            clock.advance(3_000);
        }
        let (subjects, accounts) = local.tracked();
        assert!(subjects < 3_000, "{subjects} rate-limit subjects kept");
        assert!(accounts < 3_000, "{accounts} budget accounts kept");
        // Past periods are gone; the current one is exact.
        assert!(today > first_day, "the test crossed a period boundary");
        let past = now(counters.account(&(project_budget.scope.clone(), first_day)));
        assert_eq!(past, Account::default(), "the first day's account is gone");
        let current = now(counters.account(&(project_budget.scope.clone(), today)));
        assert_eq!(
            current,
            Account {
                spent: requests_today,
                reserved: 0
            }
        );
    }
}
