//! Assembling and running the server: routes, state, graceful shutdown.

pub mod entry;
pub mod workers;

use crate::bootstrap::{bootstrap, BootstrapError};
use crate::cluster::Health;
use crate::config::GatewayConfig;
use crate::key_cache::KeyCache;
use crate::limits::alerts::BudgetAlerts;
use crate::limits::{Backlog, Counters, LocalCounters, RedisCounters, SpendControl};
use crate::metering::writer::UsageWriter;
use crate::metering::Metering;
use crate::metrics::Metrics;
use crate::serve::workers::Workers;
use crate::state::{AppState, SharedState};
use crate::ttl_map::TtlMap;
use crate::upstream::Upstream;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use keyward_core::Clock;
use keyward_store::SharedStore;
use std::future::Future;
use std::sync::Arc;
use tokio::net::TcpListener;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// First-start setup failed.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// The secrets key is missing or wrong, or sealing failed.
    #[error(transparent)]
    Sealing(#[from] crate::sealing::SealingError),
    /// The OpenID Connect settings cannot work (no public URL, the client
    /// secret's variable unset, a plain-http remote issuer).
    #[error(transparent)]
    Oidc(#[from] keyward_auth::oidc::OidcError),
    /// The Redis settings cannot work.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The shared counters' settings cannot work.
    #[error(transparent)]
    SharedCounters(#[from] crate::limits::shared::SharedCountersError),
    /// The Redis URL of sign-in throttling does not parse.
    #[error(transparent)]
    Throttle(#[from] crate::accounts::shared_throttle::InvalidUrl),
    /// Redis is configured over a SQLite store.
    #[error("cluster mode (Redis) needs PostgreSQL as the database: nodes share their durable state there, and a SQLite file belongs to one node")]
    ClusterOnSqlite,
    /// Another node of this database uses another Redis key prefix.
    #[error("this database's nodes use the Redis prefix {stored:?}, and this node was started with {configured:?}: nodes of one cluster must share their prefix (--redis-prefix), or each would count limits and hear invalidations on its own")]
    RedisPrefixMismatch {
        /// The prefix this node was given.
        configured: String,
        /// The prefix the database's first cluster node recorded.
        stored: String,
    },
    /// The database failed while starting.
    #[error("the database failed while starting: {0}")]
    Store(#[from] keyward_store::StoreError),
}

/// The setting that records the Redis prefix of a database's cluster.
const REDIS_PREFIX_SETTING: &str = "redis_prefix";

/// A server ready to run: state built, first-start setup done.
pub struct Server {
    state: SharedState,
}

impl Server {
    /// Builds the state and runs first-start setup (the initial admin key, the
    /// secrets key and sealing, [`crate::sealing::prepare`]). Call inside a
    /// Tokio runtime.
    pub async fn new(
        config: GatewayConfig,
        store: SharedStore,
        clock: Clock,
    ) -> Result<Self, StartError> {
        // Before anything is written: a configuration that cannot work stops here.
        let oidc = config
            .accounts
            .oidc
            .as_ref()
            .map(|o| {
                crate::accounts::oidc::OidcRelyingParty::new(o, config.accounts.public_url.as_ref())
            })
            .transpose()?;
        if config.redis.is_some() && store.backend() == "sqlite" {
            return Err(StartError::ClusterOnSqlite);
        }
        let bus = crate::cluster::Bus::new(config.redis.as_ref())?;
        let sealing = crate::sealing::prepare(&config.sealing_key, &store).await?;
        if let Some(redis) = &config.redis {
            // The first cluster node records its prefix; a node given another
            // would be ready and yet alone: refused instead.
            let stored = store
                .claim_setting(REDIS_PREFIX_SETTING, &redis.prefix)
                .await?;
            if stored != redis.prefix {
                return Err(StartError::RedisPrefixMismatch {
                    configured: redis.prefix.clone(),
                    stored,
                });
            }
        }
        let setup = bootstrap(&store, &config.data_dir, &config.key_format, &clock).await?;
        if let Some((path, reason)) = &setup.written {
            tracing::info!(path = %path.display(), "{reason}: wrote the initial admin key (mode 0600)");
        }
        let metrics = Arc::new(Metrics::default());
        let usage = UsageWriter::spawn(store.clone(), config.usage_batch, metrics.clone());
        let upstream = Upstream::new(
            &config.upstream,
            config.connect_timeout,
            config.upstream_timeout,
        );
        let ttl = config.key_cache_ttl.as_millis() as i64;
        let keys = KeyCache::new(ttl);
        let throttle: Arc<dyn keyward_auth::throttle::ThrottleCounters> = match &config.redis {
            None => Arc::new(keyward_auth::throttle::LocalThrottleCounters::default()),
            Some(redis) => Arc::new(
                crate::accounts::shared_throttle::RedisThrottleCounters::connect(
                    redis.url.expose(),
                    &format!("{}throttle:", redis.prefix),
                    metrics.clone(),
                )?,
            ),
        };
        let accounts = crate::accounts::Accounts::new(
            config.accounts.clone(),
            sealing.clone(),
            clock.clone(),
            ttl,
            oidc,
            throttle,
        );
        let leaks =
            crate::state::LeakState::start(&config.leaks, store.clone(), clock.clone(), sealing);
        let alerts = BudgetAlerts {
            store: store.clone(),
            notifier: leaks.notifier.clone(),
            clock: clock.clone(),
            tasks: tokio::runtime::Handle::current(),
        };
        let counters: Arc<dyn Counters> = match &config.redis {
            None => Arc::new(LocalCounters::default()),
            Some(redis) => {
                let raise = alerts.clone();
                Arc::new(
                    RedisCounters::connect(
                        redis.url.expose(),
                        &format!("{}counters:", redis.prefix),
                        redis.lease,
                        metrics.clone(),
                        Box::new(move |crossed| {
                            crate::limits::alerts::budget_thresholds(&raise, crossed)
                        }),
                    )
                    .await?
                    .with_shares(redis.share),
                )
            }
        };
        let limits = SpendControl {
            counters,
            store: store.clone(),
            clock: clock.clone(),
            unwritten: Arc::new(usage.clone()),
            route_costs: config.route_costs.clone(),
            projects: TtlMap::new(ttl),
            budgets: TtlMap::new(ttl),
            alerts,
        };
        let tasks = tokio::runtime::Handle::current();
        let origins_store = store.clone();
        Ok(Self {
            state: Arc::new(AppState {
                metering: Arc::new(Metering {
                    usage: usage.clone(),
                    metrics: metrics.clone(),
                    clock: clock.clone(),
                    prices: config.prices.clone(),
                    budget_alerts: {
                        let alerts = limits.alerts.clone();
                        Box::new(move |crossed| {
                            crate::limits::alerts::budget_thresholds(&alerts, crossed)
                        })
                    },
                }),
                config,
                store,
                keys,
                usage,
                metrics,
                clock,
                upstream,
                limits,
                keys_by_id: TtlMap::new(ttl),
                origins: crate::origins::ListedOrigins::new(origins_store, ttl),
                audit_sampler: crate::audit_sample::AuditSampler::new(60_000),
                initial_admin_key: setup.initial_key,
                leaks,
                accounts,
                bus,
                tasks,
            }),
        })
    }

    /// The shared state (tests use it to reach the store and metrics).
    pub fn state(&self) -> SharedState {
        self.state.clone()
    }

    /// The routes of every path but `/v1`, which `crate::serve::entry` sends to the
    /// gateway handler before routing.
    pub fn router(&self) -> Router {
        let api = Router::new()
            .merge(crate::management::router())
            .merge(crate::auth::router())
            .merge(crate::leaks::router())
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(self.state.clone());
        // The dashboard reads and writes only through `api`, in process.
        let options = keyward_web::WebOptions {
            oidc: self.state.accounts.oidc.is_some(),
        };
        api.clone()
            .merge(keyward_web::router(keyward_web::Api::new(api), options))
    }

    /// Serves on `listener` (and metrics on `metrics`, when given) until `shutdown`
    /// resolves; then lets in-flight requests finish for the configured grace
    /// period and writes every buffered usage event before returning.
    ///
    /// Connections are served by `config.workers` threads, one per core by
    /// default (see [`crate::serve::workers`]); call this on a multi-thread runtime,
    /// which keeps the acceptor, the usage writer and the background tasks.
    pub async fn run(
        self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        crate::leaks::watchers::spawn(self.state.clone());
        crate::auth::housekeeping::spawn(self.state.clone());
        discover_oidc_provider(self.state.clone());
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        crate::invalidation::subscribe(&self.state, stop_rx.clone());
        if self.state.config.redis.is_some() {
            reconcile_budgets(self.state.clone(), stop_rx.clone());
        }
        tokio::spawn(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        });
        if let Some(m) = metrics {
            let state = self.state.clone();
            let mut stop = stop_rx.clone();
            tokio::spawn(async move {
                let app = Router::new()
                    .route("/metrics", get(render_metrics))
                    .with_state(state);
                let _ = axum::serve(m, app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.wait_for(|s| *s).await;
                    })
                    .await;
            });
        }
        let app = crate::serve::entry::MakeEntry::new(self.router(), self.state.clone());
        let count = match self.state.config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let mut workers = Workers::start(count, listener, app, self.state.config.connections)?;
        let mut stop = stop_rx;
        let _ = stop.wait_for(|s| *s).await;
        if workers.drain(self.state.config.shutdown_grace).await {
            tracing::warn!("shutdown grace period over; cut the remaining connections");
        }
        // The last requests' slots and holds, then their usage.
        self.state.limits.counters.flush().await;
        self.state.usage.flush().await;
        workers.release().await;
        tracing::info!("usage flushed; stopped");
        Ok(())
    }
}

/// Ready when every dependency answers: the database, and Redis when this
/// node is part of a cluster (a ping, and the invalidation subscription up).
/// The answer names each: `{"status": "ready", "database": "up", "redis": "up"}`
/// (no `redis` on one node); 503 with `"status": "unavailable"` when one is
/// down. Why is in the log, not in this unauthenticated answer.
async fn readyz(State(state): State<SharedState>) -> impl IntoResponse {
    let (database, redis) = tokio::join!(state.store.ping(), state.bus.health());
    let database = match database {
        Ok(()) => Health::Up,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: the database failed");
            Health::Down
        }
    };
    let word = |h: Health| match h {
        Health::Up => "up",
        Health::Down => "down",
    };
    // A full usage buffer refuses every request until it drains: not ready,
    // even once the database answers again.
    let usage = state.usage.backlog();
    let ready = database == Health::Up && redis != Some(Health::Down) && usage != Backlog::Full;
    let mut body = serde_json::json!({
        "status": if ready { "ready" } else { "unavailable" },
        "database": word(database),
        "usage": match usage {
            Backlog::Flowing => "flowing",
            Backlog::Stalled => "stalled",
            Backlog::Full => "full",
        },
    });
    if let Some(redis) = redis {
        body["redis"] = word(redis).into();
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body))
}

async fn render_metrics(State(state): State<SharedState>) -> String {
    let mut text = state.metrics.render();
    state.bus.render_metrics(&mut text);
    state.limits.counters.render_metrics(&mut text);
    text
}

/// Reconciles the shared budget counters with storage every
/// [`crate::limits::reconcile::EVERY`] until `stop` turns true.
fn reconcile_budgets(state: SharedState, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(crate::limits::reconcile::EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tick.tick() => {}
            }
            crate::limits::reconcile::once(&state.limits).await;
        }
    });
}

/// Discovers the OpenID provider in the background at start, so that a wrong
/// issuer or client is in the log at once rather than at the first sign-in;
/// sign-ins discover it again if this fails (see [`crate::accounts::oidc`]).
fn discover_oidc_provider(state: SharedState) {
    if state.accounts.oidc.is_none() {
        return;
    }
    tokio::spawn(async move {
        let Some(rp) = &state.accounts.oidc else {
            return;
        };
        match rp.client().await {
            Ok(_) => tracing::info!(
                redirect_uri = rp.redirect_url(),
                "OpenID provider discovered"
            ),
            Err(e) => tracing::warn!(
                error = %e,
                "the OpenID provider could not be discovered; sign-ins will try again"
            ),
        }
    });
}
