//! Spend control on the request path: the order of checks a request passes
//! (`admission`), rate limits (`rate`), budget reservations (`budgets`), the
//! counters both are kept in (`counters`; `shared` for cluster mode, checked
//! against storage by `reconcile`), and the alerts a budget's thresholds
//! raise (`alerts`).
//!
//! # The seam
//!
//! Admission never names where the numbers live. It asks a [`Counters`]
//! (held as `Arc<dyn Counters>` in [`SpendControl`]) to check and charge, in
//! one call and all or nothing, the rate limits of every subject a request
//! touches (its key, a token's parent key, its project: requests and tokens
//! per minute, requests in flight) and a reservation of the request's cost
//! bound against every budget above it (key, parent key, project,
//! organization). The [`held::Permit`] and [`held::Reservation`] it builds
//! from the answer give everything back when dropped unused, and are settled
//! to actual use when the response ends.
//!
//! [`LocalCounters`] keeps the numbers in this process (one lock for the rate
//! limits and one for the budgets, as before the seam). [`RedisCounters`]
//! (`shared`), cluster mode's, implements the same trait and nothing in
//! `proxy/` or [`admission`] changes:
//!
//! - `charge`: one script that checks every bucket and account, answers
//!   `Unloaded` for accounts it does not hold (admission reads their spend
//!   from storage and calls `load`), and charges all or none;
//! - `load` and `account` over the shared accounts;
//! - `release_rate`, `settle_budget` and `release_budget`: called from `Drop`,
//!   so they must not block: it sends them to its own release task and returns
//!   (raising threshold alerts from that task through [`alerts::BudgetAlerts`]).

pub mod admission;
pub mod alerts;
pub mod budgets;
pub mod counters;
pub mod held;
pub mod rate;
pub mod reconcile;
pub mod shared;

pub use counters::{Counters, LocalCounters};
pub use shared::RedisCounters;

use crate::ttl_map::TtlMap;
use keyward_core::{Budget, Clock, Micros, ProjectId};
use keyward_store::{Project, SharedStore};
use std::collections::HashMap;
use std::sync::Arc;

/// Usage that has been metered but may not be in storage yet. Admission
/// flushes it before reading a budget's spend from storage, so that the
/// spend includes every finished request.
#[async_trait::async_trait]
pub trait UnwrittenSpend: Send + Sync {
    /// Writes every buffered usage event.
    async fn flush(&self);

    /// How the writing goes (asked on every request: it must be cheap).
    fn backlog(&self) -> Backlog;
}

/// How far usage is from storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backlog {
    /// Writes succeed.
    Flowing,
    /// A write failed and is being retried: storage's spend is behind, and
    /// a flush would wait for the database.
    Stalled,
    /// As much usage waits as may: every request is refused until it is
    /// written.
    Full,
}

/// What admission needs at run time: the counters, the records it reads on
/// every request (briefly cached), and where it loads them from.
pub struct SpendControl {
    /// Rate-limit buckets and budget accounts.
    pub counters: Arc<dyn Counters>,
    /// Durable storage (projects, budgets, spend).
    pub store: SharedStore,
    /// Time.
    pub clock: Clock,
    /// Usage not yet written, flushed before spend is read.
    pub unwritten: Arc<dyn UnwrittenSpend>,
    /// Fixed costs of routes that are not metered by tokens
    /// ([`crate::config::GatewayConfig::route_costs`]).
    pub route_costs: HashMap<String, Micros>,
    /// Projects by id (their limits), briefly cached.
    pub projects: TtlMap<ProjectId, Arc<Project>>,
    /// Budgets by their scope's id (`None`: the scope has none), briefly
    /// cached. Ids carry their kind's prefix (`key_`, `prj_`, `org_`), so the id
    /// alone names the scope, and a request looks its scopes up without
    /// building one.
    pub budgets: TtlMap<String, Option<Arc<Budget>>>,
    /// Budget threshold alerts.
    pub alerts: alerts::BudgetAlerts,
}
