//! Spend control on the request path: the order of checks a request passes
//! (`admission`), rate limits (`rate`), budget reservations (`budgets`), and
//! the alerts a budget's thresholds raise (`alerts`).

pub mod admission;
pub mod alerts;
pub mod budgets;
pub mod rate;
