//! What every handler shares.

use crate::config::GatewayConfig;
use crate::key_cache::KeyCache;
use crate::limits::SpendControl;
use crate::metering::writer::UsageWriter;
use crate::metrics::Metrics;
use crate::ttl_map::TtlMap;
use crate::upstream::Upstream;
use keyward_core::{Clock, KeyId};
use keyward_store::{KeyRecord, SharedStore};
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
    /// What request meters share (the usage writer and metrics above, the
    /// prices, budget alerts).
    pub metering: Arc<crate::metering::Metering>,
    /// Pooled upstream client.
    pub upstream: Upstream,
    /// Rate limits and budgets: their counters and the records admission reads.
    pub limits: SpendControl,
    /// Keys by id (parents of ephemeral tokens), briefly cached.
    pub keys_by_id: TtlMap<KeyId, Arc<KeyRecord>>,
    /// Web origins some key lets browsers call from (CORS preflights).
    pub origins: crate::origins::ListedOrigins,
    /// Folds audit events a caller can cause at will (see [`crate::audit_sample`]).
    pub audit_sampler: crate::audit_sample::AuditSampler,
    /// The initial admin key file, removed once it is no longer needed (see
    /// [`crate::bootstrap`]).
    pub initial_admin_key: crate::bootstrap::InitialKeyFile,
    /// Leak response (GitHub keys, notifier).
    pub leaks: Arc<LeakState>,
    /// Accounts: sessions, sign-in throttling, the public origin.
    pub accounts: crate::accounts::Accounts,
    /// The cluster's invalidation bus (inert on one node); changes go through
    /// [`AppState::invalidate`] (`crate::invalidation`).
    pub bus: crate::cluster::Bus,
    /// The runtime that built the server. Request handlers run on worker threads
    /// (`crate::serve::workers`) whose runtimes stop with their connections; work that
    /// must outlive a request is spawned here.
    pub tasks: tokio::runtime::Handle,
}

/// The state as handlers receive it.
pub type SharedState = Arc<AppState>;

/// Leak response's shared state.
pub struct LeakState {
    /// GitHub's keys.
    pub github: crate::github::GithubKeys,
    /// Notifications.
    pub notifier: Arc<crate::notify::Notifier>,
    /// Places for GitHub report bodies being read and checked
    /// ([`crate::config::LeakSettings::github_concurrent_bodies`]).
    pub github_bodies: tokio::sync::Semaphore,
    /// [`crate::config::LeakSettings::github_max_body_bytes`].
    pub github_max_body_bytes: usize,
}

impl LeakState {
    /// Builds the state and starts the notification worker; `sealing` opens
    /// the stored webhook secrets.
    pub fn start(
        settings: &crate::config::LeakSettings,
        store: SharedStore,
        clock: Clock,
        sealing: crate::sealing::SealingKey,
    ) -> Arc<Self> {
        let notifier = crate::notify::Notifier::new(store, clock, settings.notify.clone(), sealing);
        notifier.spawn_worker();
        Arc::new(Self {
            github: crate::github::GithubKeys::new(
                settings.github_keys.clone(),
                settings.github_keys_url.clone(),
            ),
            notifier,
            github_bodies: tokio::sync::Semaphore::new(settings.github_concurrent_bodies.max(1)),
            github_max_body_bytes: settings.github_max_body_bytes,
        })
    }
}
