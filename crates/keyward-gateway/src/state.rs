//! What every handler shares.

use crate::config::GatewayConfig;
use crate::key_cache::KeyCache;
use crate::metrics::Metrics;
use crate::upstream::Upstream;
use crate::usage_writer::UsageWriter;
use keyward_core::Clock;
use keyward_store::SharedStore;
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
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;
