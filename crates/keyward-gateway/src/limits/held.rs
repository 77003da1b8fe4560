//! What an admitted request holds until it ends: a [`Permit`] under the rate
//! limits and a [`Reservation`] against its budgets. Both give back, through
//! [`Counters`], what they hold when the request ends, also from `Drop`, so an
//! early return, a refusal upstream or a cancelled request never leaks a slot
//! or a hold.

use crate::limits::budgets::ThresholdCrossed;
use crate::limits::counters::Counters;
use crate::limits::rate::{Limits, RateHeaders, Subject};
use keyward_core::Budget;
use std::sync::Arc;

/// A request's admission under the rate limits.
pub struct Permit {
    counters: Arc<dyn Counters>,
    charged: Vec<(Subject, Limits)>,
    estimated_tokens: i64,
    committed: bool,
    settled: bool,
    /// What to tell the client.
    pub headers: RateHeaders,
}

impl Permit {
    /// The permit for what `counters` charged `subjects` (the subjects with
    /// limits) for one request of `estimated_tokens`.
    pub fn new(
        counters: Arc<dyn Counters>,
        charged: Vec<(Subject, Limits)>,
        estimated_tokens: i64,
        headers: RateHeaders,
    ) -> Self {
        Self {
            counters,
            charged,
            estimated_tokens,
            committed: false,
            settled: false,
            headers,
        }
    }

    /// Marks the request as sent upstream: from now on it counts.
    pub fn commit(&mut self) {
        self.committed = true;
    }

    /// Ends the request, counting `actual_tokens` against the token limits.
    pub fn finish(mut self, actual_tokens: i64) {
        self.settled = true;
        let actual = self.committed.then_some(actual_tokens);
        self.counters
            .release_rate(&self.charged, self.estimated_tokens, actual);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.settled {
            let actual = self.committed.then_some(self.estimated_tokens);
            self.counters
                .release_rate(&self.charged, self.estimated_tokens, actual);
        }
    }
}

/// Money held for one request.
pub struct Reservation {
    counters: Arc<dyn Counters>,
    budgets: Vec<(Arc<Budget>, i64)>,
    held: i64,
    settled: bool,
}

impl Reservation {
    /// The reservation of `held` per budget that `counters` made.
    pub fn new(counters: Arc<dyn Counters>, budgets: Vec<(Arc<Budget>, i64)>, held: i64) -> Self {
        Self {
            counters,
            budgets,
            held,
            settled: false,
        }
    }

    /// Replaces the reservation by the actual cost; returns the soft thresholds
    /// this crossed.
    pub fn settle(mut self, actual: i64) -> Vec<ThresholdCrossed> {
        self.settled = true;
        self.counters
            .settle_budget(&self.budgets, self.held, actual)
    }

    /// The amount held per budget.
    pub fn amount(&self) -> i64 {
        if self.budgets.is_empty() {
            0
        } else {
            self.held
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.counters.release_budget(&self.budgets, self.held);
        }
    }
}
