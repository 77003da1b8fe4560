//! The seam between admission and the numbers it checks: [`Counters`] holds the
//! rate-limit buckets and budget accounts of every scope a request touches.
//! [`LocalCounters`] keeps them in this process; cluster mode puts shared
//! (Redis) counters behind the same trait without touching admission or the
//! proxy.

use crate::limits::budgets::{
    Account, AccountId, BudgetLedger, CostBound, Exhausted, PeriodBudgets, ThresholdCrossed,
};
use crate::limits::rate::{Limits, RateHeaders, RateLimited, RateLimiter, Subject};
use keyward_core::Budget;
use std::sync::Arc;

/// What one request asks to be charged.
#[derive(Clone, Copy)]
pub struct Charge<'a> {
    /// The rate-limit subjects the request counts toward (each with limits).
    pub subjects: &'a [(Subject, Limits)],
    /// Tokens the request may use, charged to the token limits up front.
    pub estimated_tokens: i64,
    /// The budgets above the request, each with the start of its current
    /// period, and the upper bound of the request's cost to hold against each;
    /// `None` when nothing is reserved.
    pub reserve: Option<(&'a PeriodBudgets, CostBound)>,
    /// Now.
    pub now_ms: i64,
}

/// What a [`Charge`] took.
#[derive(Clone, Copy, Debug, Default)]
pub struct Charged {
    /// The allowances left, for the response headers.
    pub headers: RateHeaders,
    /// The amount held against each budget (0 when none).
    pub held: i64,
    /// The output cap to send upstream when the request set none and the
    /// budgets cannot pay for the model's own limit.
    pub output_cap: Option<i64>,
}

/// Why a [`Charge`] took nothing.
#[derive(Debug)]
pub enum Refusal {
    /// A rate limit is reached.
    RateLimited(RateLimited),
    /// A budget cannot pay for the request's upper bound.
    Exhausted(Exhausted),
    /// These budget accounts are not loaded: load them
    /// ([`Counters::load`]) and charge again.
    Unloaded(Vec<AccountId>),
    /// The counters cannot be reached (shared counters: Redis is down or
    /// failed): nothing was checked, so the request is refused rather than
    /// risk a hard limit (fail closed).
    Unavailable,
}

/// Rate-limit buckets and budget accounts, checked and charged per request.
///
/// [`Counters::charge`] checks and charges every scope a request touches in
/// one atomic step: either every rate-limit subject and every budget is
/// charged or nothing is, so a refusal by one limit consumes nothing of the
/// others. Rate limits are checked first (a request both rate-limited and
/// over budget is told it is rate-limited), then that the accounts are
/// loaded, then the budgets. What a charge took is given back (or corrected
/// to actual use) through [`Counters::release_rate`],
/// [`Counters::release_budget`] and [`Counters::settle_budget`];
/// [`crate::limits::held::Permit`] and [`crate::limits::held::Reservation`]
/// call them, also from `Drop`.
///
/// Those three are plain functions because `Drop` cannot await: they must not
/// block. An implementation whose counters are across a network (Redis) sends
/// the work to its own task (an unbounded channel read by a task spawned on
/// the server's runtime) and returns at once; [`LocalCounters`] applies it
/// inline, which is one uncontended lock and a few additions, cheaper than
/// handing it to a task, and lets a caller that drops a permit see it given
/// back at once (tests rely on that, with no waiting).
#[async_trait::async_trait]
pub trait Counters: Send + Sync {
    /// Checks every limit and budget of `charge` and, only if all pass,
    /// charges one request, `estimated_tokens` tokens and one in-flight slot to
    /// each subject and holds the cost bound against each budget.
    async fn charge(&self, charge: Charge<'_>) -> Result<Charged, Refusal>;

    /// Gives back what [`Counters::charge`] charged the rate limits: everything
    /// when `actual_tokens` is `None` (the request was never sent), else the
    /// in-flight slot and the difference between estimated and actual tokens.
    fn release_rate(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    );

    /// Loads an account with the spend read from storage, unless another
    /// request (or node) did.
    async fn load(&self, id: AccountId, spent: i64, now_ms: i64);

    /// An account's state (zero when not loaded).
    async fn account(&self, id: &AccountId) -> Account;

    /// Replaces a hold of `held` per budget by the actual cost; returns the
    /// soft thresholds this crossed. An implementation that settles in a
    /// task raises the crossings itself (through
    /// [`crate::limits::alerts::BudgetAlerts`]) and returns none.
    fn settle_budget(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        held: i64,
        actual: i64,
    ) -> Vec<ThresholdCrossed>;

    /// Gives back a hold of `held` per budget that was never used.
    fn release_budget(&self, budgets: &[(Arc<Budget>, i64)], held: i64);

    /// Returns once every release and settlement handed over before the call
    /// has been applied (at shutdown, after the last request ended). Nothing
    /// to wait for when they are applied inline.
    async fn flush(&self) {}

    /// Appends the implementation's own metrics (Prometheus text format).
    fn render_metrics(&self, _out: &mut String) {}

    /// The budget accounts charged since the last call, for
    /// [`crate::limits::reconcile`]. None for counters that cannot fall
    /// behind storage (this process's own: storage only ever lags them).
    fn charged_accounts(&self) -> Vec<AccountId> {
        Vec::new()
    }

    /// Raises an account's spend to `stored`, what storage holds, when the
    /// counters hold less (they lost settlements); never lowers it (storage
    /// lags by the usage not written yet). Returns the spend it had when it
    /// was raised.
    async fn reconcile(&self, _id: &AccountId, _stored: i64) -> Option<i64> {
        None
    }
}

/// The counters of this process: exact under any concurrency on this node.
///
/// A charge takes the rate-limit lock and, when it reserves, the budget lock
/// (always in that order; releases take one of them), as before the seam.
///
/// Memory stays bounded: what no longer matters is swept out as the maps grow
/// (see `rate.rs` and `budgets.rs`): rate-limit buckets of idle
/// subjects that are full again (which covers expired ephemeral tokens), and
/// budget accounts nothing holds and nothing used for a while (which covers
/// past periods; an account swept out is only read from storage again).
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
    async fn charge(&self, charge: Charge<'_>) -> Result<Charged, Refusal> {
        let Charge {
            subjects,
            estimated_tokens,
            reserve,
            now_ms,
        } = charge;
        let mut rate = self.rate.lock();
        rate.check(subjects, estimated_tokens, now_ms)
            .map_err(Refusal::RateLimited)?;
        let (held, output_cap) = match reserve {
            None => (0, None),
            Some((budgets, bound)) => {
                let mut accounts = self.ledger.lock();
                if let Some(ids) = accounts.unloaded(budgets) {
                    return Err(Refusal::Unloaded(ids));
                }
                let (held, cap) = accounts.check(budgets, bound).map_err(Refusal::Exhausted)?;
                accounts.charge(budgets, held, now_ms);
                (held, cap)
            }
        };
        let headers = rate.charge(subjects, estimated_tokens, now_ms);
        Ok(Charged {
            headers,
            held,
            output_cap,
        })
    }

    fn release_rate(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    ) {
        self.rate.release(charged, estimated_tokens, actual_tokens);
    }

    async fn load(&self, id: AccountId, spent: i64, now_ms: i64) {
        self.ledger.load(id, spent, now_ms);
    }

    async fn account(&self, id: &AccountId) -> Account {
        self.ledger.account(id)
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
    use crate::limits::held::{Permit, Reservation};
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

    /// A rate-limit release: what was charged, the estimate, the actual use.
    type RateRelease = (Vec<(Subject, Limits)>, i64, Option<i64>);

    /// Counters that release in a task, as a network implementation must:
    /// `Drop` only queues; the task applies the release and says so.
    struct Queued {
        inner: Arc<LocalCounters>,
        releases: tokio::sync::mpsc::UnboundedSender<RateRelease>,
    }

    impl Queued {
        /// The counters, and a receiver of one message per applied release.
        fn start() -> (Arc<dyn Counters>, tokio::sync::mpsc::UnboundedReceiver<()>) {
            let inner = Arc::new(LocalCounters::default());
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<RateRelease>();
            let (done_tx, done_rx) = tokio::sync::mpsc::unbounded_channel();
            let applied = inner.clone();
            tokio::spawn(async move {
                while let Some((charged, estimated, actual)) = rx.recv().await {
                    applied.release_rate(&charged, estimated, actual);
                    let _ = done_tx.send(());
                }
            });
            let counters = Arc::new(Queued {
                inner,
                releases: tx,
            });
            (counters, done_rx)
        }
    }

    #[async_trait::async_trait]
    impl Counters for Queued {
        async fn charge(&self, charge: Charge<'_>) -> Result<Charged, Refusal> {
            self.inner.charge(charge).await
        }
        fn release_rate(&self, charged: &[(Subject, Limits)], estimated: i64, actual: Option<i64>) {
            let _ = self.releases.send((charged.to_vec(), estimated, actual));
        }
        async fn load(&self, id: AccountId, spent: i64, now_ms: i64) {
            self.inner.load(id, spent, now_ms).await;
        }
        async fn account(&self, id: &AccountId) -> Account {
            self.inner.account(id).await
        }
        fn settle_budget(
            &self,
            b: &PeriodBudgets,
            held: i64,
            actual: i64,
        ) -> Vec<ThresholdCrossed> {
            self.inner.settle_budget(b, held, actual)
        }
        fn release_budget(&self, b: &PeriodBudgets, held: i64) {
            self.inner.release_budget(b, held);
        }
    }

    #[tokio::test]
    async fn a_permit_dropped_is_released_through_the_counters_task() {
        let (counters, mut released) = Queued::start();
        let subjects = vec![(
            Subject::Key(KeyId::generate()),
            Limits {
                max_concurrent: Some(1),
                ..Limits::default()
            },
        )];
        let charge = Charge {
            subjects: &subjects,
            estimated_tokens: 0,
            reserve: None,
            now_ms: 0,
        };
        let charged = counters.charge(charge).await.expect("a free slot");
        let permit = Permit::new(counters.clone(), subjects.clone(), 0, charged.headers);
        let busy = counters.charge(charge).await.err();
        assert!(
            matches!(busy, Some(Refusal::RateLimited(_))),
            "the slot is held"
        );
        drop(permit);
        released.recv().await.expect("the release task runs");
        assert!(counters.charge(charge).await.is_ok(), "the slot is back");
    }

    #[test]
    fn a_budget_refusal_or_an_unloaded_account_consumes_no_rate_limit() {
        let counters: Arc<dyn Counters> = Arc::new(LocalCounters::default());
        let subjects = [(
            Subject::Key(KeyId::generate()),
            Limits {
                rpm: Some(1),
                max_concurrent: Some(1),
                ..Limits::default()
            },
        )];
        let budget = daily(BudgetScope::Project(ProjectId::generate().to_string()));
        let budgets = [(budget.clone(), 0)];
        let bound = |input_e6| CostBound {
            input_e6,
            output_price: 0,
            requested_output: Some(0),
            model_max_output: None,
        };
        let charge = |input_e6| Charge {
            subjects: &subjects,
            estimated_tokens: 0,
            reserve: Some((&budgets, bound(input_e6))),
            now_ms: 0,
        };
        let unloaded = now(counters.charge(charge(1_000_000))).err();
        assert!(
            matches!(unloaded, Some(Refusal::Unloaded(ids)) if ids == [(budget.scope.clone(), 0)])
        );
        now(counters.load((budget.scope.clone(), 0), 999_999, 0));
        // Two micro-dollars do not fit in the one left.
        let over = now(counters.charge(charge(2_000_000))).err();
        assert!(matches!(over, Some(Refusal::Exhausted(e)) if e.remaining == 1));
        // The one request a minute is still there, and so is the money.
        let charged = now(counters.charge(charge(1_000_000))).expect("fits");
        assert_eq!(charged.headers.requests.map(|a| a.remaining), Some(0));
        assert_eq!(
            now(counters.account(&(budget.scope.clone(), 0))),
            Account {
                spent: 999_999,
                reserved: 1
            }
        );
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
                (
                    Subject::Project(project.clone()),
                    Limits {
                        max_concurrent: Some(10),
                        ..Limits::default()
                    },
                ),
            ];
            let budgets = vec![
                (
                    daily(BudgetScope::Key(token.to_string())),
                    Period::Day.start(t),
                ),
                (project_budget.clone(), Period::Day.start(t)),
            ];
            let bound = CostBound {
                input_e6: 10_000_000,
                output_price: 0,
                requested_output: Some(0),
                model_max_output: None,
            };
            let charge = Charge {
                subjects: &subjects,
                estimated_tokens: 100,
                reserve: Some((&budgets, bound)),
                now_ms: t,
            };
            let charged = match now(counters.charge(charge)) {
                Err(Refusal::Unloaded(ids)) => {
                    for id in ids {
                        now(counters.load(id, 0, t));
                    }
                    now(counters.charge(charge)).expect("within limits and budgets")
                }
                other => other.expect("within limits and budgets"),
            };
            let mut permit = Permit::new(counters.clone(), subjects, 100, charged.headers);
            permit.commit();
            let reservation = Reservation::new(counters.clone(), budgets, charged.held);
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
