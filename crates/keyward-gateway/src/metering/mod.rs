//! Metering: what a response cost. `meter` follows one request to its end,
//! `sse_tap` reads a stream's events as they pass (`sse_text` finds the
//! generated text in each), `usage_parse` reads the
//! upstream's usage object, and `writer` batches usage events to storage.
//!
//! [`Metering`] is what the meters share; it names no server state, so the
//! request path's lower half does not depend on the handler's upper half.

pub mod meter;
pub mod sse_tap;
pub mod sse_text;
pub mod usage_parse;
pub mod writer;

use crate::metering::writer::UsageWriter;
use crate::metrics::Metrics;
use keyward_core::{Clock, PriceTable};
use std::sync::Arc;

/// Hands the budget thresholds a settled request crossed to whoever records and
/// announces them (the alerts of `crate::limits::alerts`), off the request path.
pub type BudgetAlerts = crate::limits::alerts::RaiseAlerts;

/// What every [`meter::RequestMeter`] needs to write its usage event and settle
/// its budgets.
pub struct Metering {
    /// Usage event sink.
    pub usage: UsageWriter,
    /// Counters (unpriced requests).
    pub metrics: Arc<Metrics>,
    /// Time (when the unpriced warning is due).
    pub clock: Clock,
    /// Prices per model, for a model named only by the response.
    pub prices: PriceTable,
    /// Receives crossed budget thresholds.
    pub budget_alerts: BudgetAlerts,
}
