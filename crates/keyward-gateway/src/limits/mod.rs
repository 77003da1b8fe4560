//! Spend control on the request path: the order of checks a request passes
//! (`admission`), rate limits (`rate`), budget reservations (`budgets`), the
//! counters both are kept in (`counters`), and the alerts a budget's thresholds
//! raise (`alerts`).
//!
//! # The seam
//!
//! Admission never names where the numbers live: it asks a
//! [`Counters`] (held as `Arc<dyn Counters>` in [`SpendControl`]) to check and
//! charge the rate limits of every subject a request touches (its key, a
//! token's parent key, its project) in one atomic step, then to reserve an
//! upper bound of its cost against every budget above it in another. The
//! [`rate::Permit`] and [`budgets::Reservation`] it gets back give everything
//! back when dropped unused, and are settled to actual use when the response
//! ends.
//!
//! [`LocalCounters`] keeps the numbers in this process, under one lock per
//! check. A shared (Redis) implementation for cluster mode implements the same
//! trait: `charge_rate` and `reserve` as one script each (check every scope,
//! then charge all or none), `is_loaded`/`load`/`account` over the shared
//! accounts, and `release_rate`, `settle_budget` and `release_budget` by
//! sending the work to its own release task, since they are called from `Drop`
//! and must not block. Nothing in `proxy/` or in [`admission`] changes.

pub mod admission;
pub mod alerts;
pub mod budgets;
pub mod counters;
pub mod rate;

pub use counters::{Counters, LocalCounters};

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
