//! The gateway's settings, already validated. The binary builds this from flags,
//! `KEYWARD_*` variables and the config file.

use crate::notify::NotifySettings;
use crate::request::client_ip::ClientIpPolicy;
use keyward_core::{KeyFormat, Micros, PriceTable, Secret};
use p256::ecdsa::VerifyingKey;
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
    pub leaks: LeakSettings,
    /// Threads serving connections; 0 means one per core.
    pub workers: usize,
    /// The key that seals stored secrets (see [`crate::sealing`]); by default
    /// the key file `<data-dir>/secrets.key`.
    pub sealing_key: crate::sealing::SealingKeySource,
    /// What one client connection may hold (timeouts, the connection cap).
    pub connections: ConnectionLimits,
    /// Accounts: the public URL, session timeouts, re-authentication.
    pub accounts: AccountSettings,
    /// Cluster mode: the Redis that nodes sharing one PostgreSQL database also
    /// share (the invalidation bus, shared counters). `None`: one node.
    pub redis: Option<RedisSettings>,
}

/// Where a cluster's Redis is, and the prefix of every name keyward uses in it.
#[derive(Clone, Debug)]
pub struct RedisSettings {
    /// `redis://[user:password@]host[:port][/db]` (or `rediss://`). Held as a
    /// [`Secret`]: it may carry a password, so it is never printed or logged.
    pub url: Secret,
    /// Prefix of every key and channel name, so that several deployments (or
    /// parallel tests) can share one Redis.
    pub prefix: String,
    /// How long an in-flight slot or a budget hold of a node that stopped
    /// renewing it (it died) stays held in the shared counters.
    pub lease: std::time::Duration,
    /// How long a node keeps a share of a limit far from its end, charging
    /// from it without Redis (`crate::limits::shared`); zero: never.
    pub share: std::time::Duration,
    /// What the node serves while Redis is out of reach.
    pub when_down: WhenRedisDown,
}

/// What a cluster node serves while Redis is out of reach (`--redis-down`).
/// Requests that need a shared counter are refused either way (hard limits
/// fail closed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenRedisDown {
    /// Keys with no rate limit, concurrency limit or budget keep working: a
    /// change made on another node reaches this one through the database
    /// within the cache bound (`--cache-ttl-ms`) instead of the bus.
    #[default]
    ServeUnlimited,
    /// Every proxied request is refused (503 `limits_unavailable`), for
    /// operators who would rather stop than serve without the bus.
    RefuseAll,
}

impl RedisSettings {
    /// The default prefix, `keyward:`.
    pub const DEFAULT_PREFIX: &'static str = "keyward:";
    /// The default lease of a slot or hold (see `crate::limits::shared`).
    pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(30);
    /// The default life of a share.
    pub const DEFAULT_SHARE: std::time::Duration = std::time::Duration::from_millis(500);

    /// Settings for `url` with the default prefix.
    pub fn new(url: Secret) -> Self {
        Self {
            url,
            prefix: Self::DEFAULT_PREFIX.to_owned(),
            lease: Self::DEFAULT_LEASE,
            share: Self::DEFAULT_SHARE,
            when_down: WhenRedisDown::default(),
        }
    }
}

/// How people sign in and how long that lasts. The defaults are NIST SP
/// 800-63B-4's for AAL2: 1 h idle, 24 h absolute.
#[derive(Clone, Debug)]
pub struct AccountSettings {
    /// The URL people reach keyward at (`--public-url`). Its origin is the one
    /// origin whose browsers may change state with a session cookie; https
    /// makes the cookie `Secure` with the `__Host-` prefix.
    pub public_url: Option<http::Uri>,
    /// A session unused this long ends.
    pub idle_timeout: Duration,
    /// A session ends this long after its sign-in, used or not.
    pub absolute_timeout: Duration,
    /// Sensitive actions need a sign-in or re-authentication this recent.
    pub reauthentication_window: Duration,
    /// Time to give the second factor after a right password.
    pub second_factor_window: Duration,
    /// A Pwned-Passwords-style range API (`GET {url}/range/{prefix}`) that new
    /// passwords are checked against, when set.
    pub breach_check_url: Option<String>,
    /// "Sign in with Google" (any OpenID provider), when configured. Needs
    /// `public_url`: the provider sends the browser back to
    /// `{public_url}/auth/oidc/callback`, the redirect URI registered with it.
    pub oidc: Option<OidcSettings>,
}

/// How keyward is registered with one OpenID provider. The client secret is
/// not here: only the name of the environment variable that holds it, so it
/// never sits in a config file or a `Debug` print.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OidcSettings {
    /// The provider's issuer, as its discovery document states it
    /// (`https://accounts.google.com` for Google).
    pub issuer_url: String,
    /// The client id the provider gave keyward.
    pub client_id: String,
    /// The name of the environment variable holding the client secret.
    pub client_secret_env: String,
    /// Email domains whose verified users get an account on their first
    /// sign-in (just-in-time). Empty: only existing users sign in this way.
    pub allowed_domains: Vec<String>,
    /// The organization (name or id) just-in-time users join, as `member`.
    /// Required when `allowed_domains` is not empty.
    pub org: Option<String>,
}

impl Default for AccountSettings {
    fn default() -> Self {
        Self {
            public_url: None,
            idle_timeout: Duration::from_secs(3_600),
            absolute_timeout: Duration::from_secs(24 * 3_600),
            reauthentication_window: Duration::from_secs(600),
            second_factor_window: Duration::from_secs(300),
            breach_check_url: None,
            oidc: None,
        }
    }
}

/// What a slow, idle or numerous client may hold. Each bound ends with the
/// connection closed, so that a client cannot keep a socket, a task and its
/// buffers by sending nothing, or one byte now and then.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionLimits {
    /// Time from a connection's start, or from the end of its previous
    /// response, until the next request's headers are complete. It is also the
    /// idle keep-alive timeout: hyper runs one timer from the moment a
    /// connection is ready for a request, so an idle keep-alive connection and
    /// a slowloris one (headers a byte at a time) end the same way.
    pub header_timeout: Duration,
    /// Time allowed for a request body, from the first moment its handler had
    /// to wait for more of it. A body that arrives with its headers (the usual
    /// case) never starts this timer.
    pub body_timeout: Duration,
    /// Most client connections open at once; past it, a new connection is
    /// accepted and closed at once (a WARN line at most every
    /// [`crate::serve::workers::REFUSAL_LOG_EVERY`], and a metric).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    /// 30 s for headers and idle keep-alive (hyper's own default once a timer
    /// is set; the OpenAI SDKs reuse a connection within seconds), 60 s for a
    /// body (8 MiB, the default size limit, at about 140 kB/s), and 4,096
    /// connections (under most file-descriptor limits once raised from 1,024;
    /// each open connection costs a task and up to hyper's read buffer).
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_connections: 4_096,
        }
    }
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
            leaks: LeakSettings::default(),
            workers: 0,
            sealing_key: crate::sealing::SealingKeySource::File(
                data_dir.join(crate::sealing::DEFAULT_KEY_FILE),
            ),
            data_dir,
            connections: ConnectionLimits::default(),
            accounts: AccountSettings::default(),
            redis: None,
        }
    }
}

/// Leak-response settings.
#[derive(Clone, Debug)]
pub struct LeakSettings {
    /// GitHub's public keys, read from the configured file at start.
    pub github_keys: HashMap<String, VerifyingKey>,
    /// Where to fetch GitHub's public-keys document when a request names an
    /// unknown key (e.g. `https://api.github.com/meta/public_keys/secret_scanning`).
    pub github_keys_url: Option<String>,
    /// Notifications (SMTP, retries).
    pub notify: NotifySettings,
    /// Sources scanned on a schedule.
    pub watchers: WatcherSettings,
    /// Largest body `POST /leaks/github` reads, bytes. The endpoint is
    /// unauthenticated until the signature over the whole body is checked, so
    /// the body is bounded by what GitHub sends (a batch of matches, each a
    /// token and two short URLs, about 150 bytes: 1 MiB holds about 7,000),
    /// not by the gateway's 8 MiB limit.
    pub github_max_body_bytes: usize,
    /// Most `POST /leaks/github` bodies read at once; more are answered 503
    /// with `Retry-After` before their body is read. Bounds the memory an
    /// unauthenticated caller can hold to this times the body cap.
    pub github_concurrent_bodies: usize,
}

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            github_keys: HashMap::new(),
            github_keys_url: None,
            notify: NotifySettings::default(),
            watchers: WatcherSettings::default(),
            github_max_body_bytes: 1024 * 1024,
            github_concurrent_bodies: 8,
        }
    }
}

/// One watched source.
#[derive(Clone, Debug)]
pub struct WatchSource {
    /// A name for reports (`watcher:<name>`).
    pub name: String,
    /// A directory, or a git repository (mirror) when `git` is set.
    pub path: PathBuf,
    /// Scan the repository's history instead of its files.
    pub git: bool,
}

/// Watcher settings.
#[derive(Clone, Debug)]
pub struct WatcherSettings {
    /// What to scan.
    pub sources: Vec<WatchSource>,
    /// Time between rounds.
    pub interval: Duration,
    /// Largest app bundle accepted by `POST /api/v1/scan-uploads`.
    pub max_upload_bytes: usize,
}

impl Default for WatcherSettings {
    fn default() -> Self {
        Self {
            sources: Vec::new(),
            interval: Duration::from_secs(3_600),
            max_upload_bytes: 200 * 1024 * 1024,
        }
    }
}

/// How the writer batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Write at least this often while events wait. This is the bound on what
    /// a crash loses (see the module documentation); under load, when a write
    /// takes longer than this, the next one starts as soon as it ends.
    pub interval: Duration,
    /// Write as soon as this many events wait.
    pub max_events: usize,
    /// At most this many events wait in memory (the database unreachable,
    /// or slower than the traffic): beyond it requests are refused
    /// (`usage_backlog`) until writes catch up. Bounds memory (an event is
    /// a few hundred bytes) and what a crash during an outage loses.
    pub max_pending: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(25),
            max_events: 2_000,
            max_pending: 200_000,
        }
    }
}
