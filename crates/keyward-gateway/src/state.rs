//! What every handler shares.

use crate::budget_ledger::BudgetLedger;
use crate::config::GatewayConfig;
use crate::key_cache::KeyCache;
use crate::metrics::Metrics;
use crate::rate_limit::RateLimiter;
use crate::ttl_map::TtlMap;
use crate::upstream::Upstream;
use crate::usage_writer::UsageWriter;
use keyward_core::{Budget, Clock, KeyId, ProjectId};
use keyward_store::{KeyRecord, Project, SharedStore};
use std::sync::Arc;

/// Shared server state.
pub struct AppState {
    /// Settings.
    pub config: GatewayConfig,
    /// Durable storage.
    pub store: SharedStore,
    /// Hot keys.
    pub keys: KeyCache,
    /// Usage event sink.
    pub usage: UsageWriter,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Time.
    pub clock: Clock,
    /// Pooled upstream client.
    pub upstream: Upstream,
    /// Rate-limit state.
    pub limiter: Arc<RateLimiter>,
    /// Budget accounts.
    pub ledger: Arc<BudgetLedger>,
    /// Projects by id (their limits), briefly cached.
    pub projects: TtlMap<ProjectId, Arc<Project>>,
    /// Keys by id (parents of ephemeral tokens), briefly cached.
    pub keys_by_id: TtlMap<KeyId, Arc<KeyRecord>>,
    /// Budgets by their scope's id (`None`: the scope has none), briefly
    /// cached. Ids carry their kind's prefix (`key_`, `prj_`, `org_`), so the id
    /// alone names the scope, and a request looks its scopes up without
    /// building one.
    pub budgets: TtlMap<String, Option<Arc<Budget>>>,
    /// Folds audit events a caller can cause at will (see [`crate::audit_sample`]).
    pub audit_sampler: crate::audit_sample::AuditSampler,
    /// The initial admin key file, removed once it is no longer needed (see
    /// [`crate::bootstrap`]).
    pub initial_admin_key: crate::bootstrap::InitialKeyFile,
    /// Leak response (GitHub keys, notifier).
    pub leaks: Arc<crate::leaks::LeakState>,
    /// The runtime that built the server. Request handlers run on worker threads
    /// (`crate::workers`) whose runtimes stop with their connections; work that
    /// must outlive a request is spawned here.
    pub tasks: tokio::runtime::Handle,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;
