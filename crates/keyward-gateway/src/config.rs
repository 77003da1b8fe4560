//! The gateway's settings, already validated. The binary builds this from flags,
//! `KEYWARD_*` variables and the config file.

use crate::client_ip::ClientIpPolicy;
use crate::usage_writer::BatchPolicy;
use keyward_core::{KeyFormat, Micros, PriceTable, Secret};
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

/// Where requests are forwarded.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Base URL including its `/v1` (e.g. `https://api.openai.com/v1`).
    pub base_url: http::Uri,
    /// The upstream key, read from the environment variable the config names.
    /// `None` forwards requests without credentials (e.g. the simulated upstream).
    pub api_key: Option<Secret>,
}

/// Everything the server needs to run.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Upstream API.
    pub upstream: UpstreamConfig,
    /// The deployment's key prefix stem.
    pub key_format: KeyFormat,
    /// Prices for cost.
    pub prices: PriceTable,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Time allowed to connect to the upstream.
    pub connect_timeout: Duration,
    /// Time allowed until the upstream's response headers arrive.
    pub upstream_timeout: Duration,
    /// How long a cached key is trusted before storage is read again.
    pub key_cache_ttl: Duration,
    /// Usage batching.
    pub usage_batch: BatchPolicy,
    /// How long shutdown waits for in-flight requests and streams.
    pub shutdown_grace: Duration,
    /// Where the initial admin key is written on first start.
    pub data_dir: PathBuf,
    /// How the client's address is found (trusted proxies).
    pub client_ip: ClientIpPolicy,
    /// Fixed costs for routes whose cost cannot be bounded otherwise (path → cost),
    /// so they can run under a hard budget.
    pub route_costs: HashMap<String, Micros>,
    /// Leak response: GitHub intake keys, notifications, watchers.
    pub leaks: crate::leaks::LeakSettings,
    /// Threads serving connections; 0 means one per core.
    pub workers: usize,
    /// The key that seals stored secrets (see [`crate::sealing`]); by default
    /// the key file `<data-dir>/secrets.key`.
    pub sealing_key: crate::sealing::SealingKeySource,
}

impl GatewayConfig {
    /// Defaults for everything but the upstream and the data directory.
    pub fn new(upstream: UpstreamConfig, data_dir: PathBuf) -> Self {
        Self {
            upstream,
            key_format: KeyFormat::default(),
            prices: PriceTable::embedded(),
            max_body_bytes: 8 * 1024 * 1024,
            connect_timeout: Duration::from_secs(10),
            upstream_timeout: Duration::from_secs(600),
            key_cache_ttl: Duration::from_secs(1),
            usage_batch: BatchPolicy::default(),
            shutdown_grace: Duration::from_secs(30),
            client_ip: ClientIpPolicy::default(),
            route_costs: HashMap::new(),
            leaks: crate::leaks::LeakSettings::default(),
            workers: 0,
            sealing_key: crate::sealing::SealingKeySource::File(
                data_dir.join(crate::sealing::DEFAULT_KEY_FILE),
            ),
            data_dir,
        }
    }
}
