//! `keyward serve` and `keyward simulate`.
//!
//! Every setting comes from a flag, a `KEYWARD_*` variable, or the TOML config
//! file, in that order of precedence. Secrets are never settings: the config names
//! the environment variable that holds the upstream key.

use anyhow::{bail, Context};
use clap::Args;
use keyward_core::{Clock, KeyFormat, PriceTable, Secret};
use keyward_gateway::sealing::{self, SealingKey, SealingKeySource};
use keyward_gateway::upstream::simulated::SimulatorOptions;
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;
use tokio::net::TcpListener;

/// Flags of `keyward serve`. Unset ones fall back to the config file, then defaults.
#[derive(Args, Debug, Default)]
pub struct ServeArgs {
    /// TOML config file (same names as the flags, with underscores).
    #[arg(long, env = "KEYWARD_CONFIG")]
    config: Option<PathBuf>,
    /// Address for the gateway and management API [default: 127.0.0.1:8080].
    #[arg(long, env = "KEYWARD_LISTEN")]
    listen: Option<String>,
    /// Directory for the SQLite database and the initial admin key [default: ./keyward-data].
    #[arg(long, env = "KEYWARD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// File holding the key that seals stored secrets (webhook signing secrets),
    /// created on first start; ignored when KEYWARD_SECRETS_KEY holds the key
    /// [default: <data-dir>/secrets.key].
    #[arg(long, env = "KEYWARD_SECRETS_KEY_FILE")]
    secrets_key_file: Option<PathBuf>,
    /// Database URL: postgres://… for shared state [default: SQLite in the data directory].
    #[arg(long, env = "KEYWARD_DATABASE")]
    database: Option<String>,
    /// Redis URL (redis://[:password@]host[:port][/db]) for cluster mode: every node
    /// on the same PostgreSQL --database names the same Redis, which carries
    /// invalidations between them [default: none, one node].
    #[arg(long, env = "KEYWARD_REDIS")]
    redis: Option<String>,
    /// Prefix of every Redis key and channel keyward uses, so that several
    /// deployments can share one Redis [default: keyward:].
    #[arg(long, env = "KEYWARD_REDIS_PREFIX")]
    redis_prefix: Option<String>,
    /// Milliseconds an in-flight slot or budget hold of a node that died stays
    /// held in Redis before it expires; live nodes renew theirs [default: 30000].
    #[arg(long, env = "KEYWARD_REDIS_LEASE_MS")]
    redis_lease_ms: Option<u64>,
    /// Milliseconds a node keeps a share of a limit or budget that is far from
    /// its end, charging requests from it without a Redis round trip; 0: every
    /// request goes to Redis [default: 500].
    #[arg(long, env = "KEYWARD_REDIS_SHARE_MS")]
    redis_share_ms: Option<u64>,
    /// While Redis is out of reach: `serve-unlimited` keeps serving keys with no
    /// rate limit, concurrency limit or budget; `refuse-all` refuses every
    /// request (503 limits_unavailable). Limited keys are refused either way
    /// [default: serve-unlimited].
    #[arg(long, env = "KEYWARD_REDIS_DOWN")]
    redis_down: Option<String>,
    /// Upstream base URL including /v1, or `simulated` for the built-in simulated upstream
    /// [default: https://api.openai.com/v1].
    #[arg(long, env = "KEYWARD_UPSTREAM")]
    upstream: Option<String>,
    /// Name of the environment variable holding the upstream key [default: OPENAI_API_KEY].
    #[arg(long, env = "KEYWARD_UPSTREAM_KEY_ENV")]
    upstream_key_env: Option<String>,
    /// The upstream needs no key (a local model server): forward requests without
    /// upstream credentials. Without it, a real upstream whose key variable is
    /// unset or empty is an error at start.
    #[arg(
        long,
        env = "KEYWARD_UPSTREAM_NO_KEY",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    upstream_no_key: Option<bool>,
    /// TOML price file that extends or replaces the embedded price table.
    #[arg(long, env = "KEYWARD_PRICES")]
    prices: Option<PathBuf>,
    /// Key prefix stem: `acme` issues `acmek_…` keys [default: kw].
    #[arg(long, env = "KEYWARD_KEY_PREFIX")]
    key_prefix: Option<String>,
    /// Largest request body accepted, bytes [default: 8388608].
    #[arg(long, env = "KEYWARD_MAX_BODY_BYTES")]
    max_body_bytes: Option<usize>,
    /// Seconds to wait for the upstream's response headers [default: 600].
    #[arg(long, env = "KEYWARD_UPSTREAM_TIMEOUT_SECS")]
    upstream_timeout_secs: Option<u64>,
    /// Address of the Prometheus /metrics listener, or `off` [default: 127.0.0.1:9464].
    #[arg(long, env = "KEYWARD_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// Milliseconds between usage batch writes: what a crash (kill -9) can lose
    /// [default: 25].
    #[arg(long, env = "KEYWARD_USAGE_FLUSH_MS")]
    usage_flush_ms: Option<u64>,
    /// How long a node trusts a cached key, session, project or budget before
    /// reading storage again, 1 to 600000 ms [default: 1000]. Changes made
    /// through this node, or with --redis through any node, apply at once:
    /// this bounds only what a node that missed one serves.
    #[arg(long, env = "KEYWARD_CACHE_TTL_MS")]
    cache_ttl_ms: Option<u64>,
    /// Usage events held in memory while the database cannot store them;
    /// beyond it requests are refused (503 usage_backlog) until it can
    /// [default: 200000].
    #[arg(long, env = "KEYWARD_USAGE_BUFFER_EVENTS")]
    usage_buffer_events: Option<usize>,
    /// Seconds in-flight requests get to finish at shutdown [default: 30].
    #[arg(long, env = "KEYWARD_SHUTDOWN_GRACE_SECS")]
    shutdown_grace_secs: Option<u64>,
    /// Threads serving connections, each with its own event loop [default: one per core].
    #[arg(long, env = "KEYWARD_WORKERS")]
    workers: Option<usize>,
    /// Seconds a client has to complete a request's headers, from the connection's
    /// start or the end of its previous response; also the idle keep-alive timeout
    /// [default: 30].
    #[arg(long, env = "KEYWARD_HEADER_TIMEOUT_SECS")]
    header_timeout_secs: Option<u64>,
    /// Seconds a request body may take once its handler has to wait for it [default: 60].
    #[arg(long, env = "KEYWARD_BODY_TIMEOUT_SECS")]
    body_timeout_secs: Option<u64>,
    /// Most client connections open at once; more are closed at once [default: 4096].
    #[arg(long, env = "KEYWARD_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Largest body POST /leaks/github reads, bytes [default: 1048576].
    #[arg(long, env = "KEYWARD_GITHUB_MAX_BODY_BYTES")]
    github_max_body_bytes: Option<usize>,
    /// Most POST /leaks/github bodies read at once; more get 503 [default: 8].
    #[arg(long, env = "KEYWARD_GITHUB_CONCURRENT_BODIES")]
    github_concurrent_bodies: Option<usize>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "KEYWARD_LOG_FORMAT")]
    log_format: Option<String>,
    /// GitHub's secret-scanning public-keys document (enables POST /leaks/github).
    #[arg(long, env = "KEYWARD_GITHUB_PUBLIC_KEYS")]
    github_public_keys: Option<PathBuf>,
    /// URL to refresh GitHub's public keys from when a request names an unknown one.
    #[arg(long, env = "KEYWARD_GITHUB_PUBLIC_KEYS_URL")]
    github_public_keys_url: Option<String>,
    /// SMTP server for email notifications (host name).
    #[arg(long, env = "KEYWARD_SMTP_SERVER")]
    smtp_server: Option<String>,
    /// SMTP port [default: 587].
    #[arg(long, env = "KEYWARD_SMTP_PORT")]
    smtp_port: Option<u16>,
    /// SMTP security: starttls, tls or none [default: starttls].
    #[arg(long, env = "KEYWARD_SMTP_SECURITY")]
    smtp_security: Option<String>,
    /// The From: address of notification emails.
    #[arg(long, env = "KEYWARD_SMTP_SENDER")]
    smtp_sender: Option<String>,
    /// SMTP user name.
    #[arg(long, env = "KEYWARD_SMTP_USERNAME")]
    smtp_username: Option<String>,
    /// Name of the environment variable holding the SMTP password.
    #[arg(long, env = "KEYWARD_SMTP_PASSWORD_ENV")]
    smtp_password_env: Option<String>,
    /// Proxies (CIDRs, comma-separated) whose forwarding header gives the client's
    /// address; from anyone else the header is ignored.
    #[arg(long, env = "KEYWARD_TRUSTED_PROXIES")]
    trusted_proxies: Option<String>,
    /// The forwarding header trusted proxies set [default: x-forwarded-for].
    #[arg(long, env = "KEYWARD_CLIENT_IP_HEADER")]
    client_ip_header: Option<String>,
    /// A directory to scan for leaked keyward keys on a schedule (repeatable).
    #[arg(long = "watch-dir")]
    watch_dirs: Vec<PathBuf>,
    /// A local git mirror whose history is scanned on a schedule (repeatable).
    #[arg(long = "watch-git")]
    watch_git: Vec<PathBuf>,
    /// Time between watcher rounds, e.g. 1h [default: 1h].
    #[arg(long, env = "KEYWARD_WATCH_INTERVAL")]
    watch_interval: Option<String>,
    /// The URL people reach keyward at, e.g. https://keys.example.com. Browsers
    /// may change state only from its origin; https makes the session cookie
    /// `__Host-` and `Secure`.
    #[arg(long, env = "KEYWARD_PUBLIC_URL")]
    public_url: Option<String>,
    /// A session unused this long ends, e.g. 1h [default: 1h].
    #[arg(long, env = "KEYWARD_SESSION_IDLE_TIMEOUT")]
    session_idle_timeout: Option<String>,
    /// A session ends this long after sign-in, e.g. 24h [default: 24h].
    #[arg(long, env = "KEYWARD_SESSION_ABSOLUTE_TIMEOUT")]
    session_absolute_timeout: Option<String>,
    /// Sensitive actions need a sign-in this recent, e.g. 10m [default: 10m].
    #[arg(long, env = "KEYWARD_REAUTHENTICATION_WINDOW")]
    reauthentication_window: Option<String>,
    /// A Pwned-Passwords-style range API new passwords are checked against
    /// (GET {url}/range/{5 hex}); off by default.
    #[arg(long, env = "KEYWARD_PASSWORD_BREACH_API")]
    password_breach_api: Option<String>,
    /// "Sign in with Google" (any OpenID provider): the provider's issuer, e.g.
    /// https://accounts.google.com. Needs --oidc-client-id,
    /// --oidc-client-secret-env and --public-url; register
    /// {public-url}/auth/oidc/callback as the redirect URI.
    #[arg(long, env = "KEYWARD_OIDC_ISSUER")]
    oidc_issuer: Option<String>,
    /// The client id the OpenID provider gave keyward.
    #[arg(long, env = "KEYWARD_OIDC_CLIENT_ID")]
    oidc_client_id: Option<String>,
    /// Name of the environment variable holding the OpenID client secret.
    #[arg(long, env = "KEYWARD_OIDC_CLIENT_SECRET_ENV")]
    oidc_client_secret_env: Option<String>,
    /// Email domains (comma-separated) whose verified users get an account, as
    /// `member` of --oidc-org, on their first sign-in [default: none, only
    /// existing users sign in with the provider].
    #[arg(long, env = "KEYWARD_OIDC_ALLOWED_DOMAINS")]
    oidc_allowed_domains: Option<String>,
    /// The organization (name or id) accounts made on first sign-in join.
    #[arg(long, env = "KEYWARD_OIDC_ORG")]
    oidc_org: Option<String>,
    /// Fixed costs (USD) for routes whose cost cannot be bounded: config file only,
    /// e.g. `[route_costs]` `"/v1/images/generations" = 0.08`.
    #[arg(skip)]
    route_costs: Option<std::collections::HashMap<String, f64>>,
    #[command(flatten)]
    simulator: SimulatorFlags,
}

/// How the simulated upstream answers: flags of `keyward simulate`, and of
/// `keyward serve --upstream simulated`.
#[derive(Args, Debug, Default, Clone)]
pub struct SimulatorFlags {
    /// Pace of each simulated stream, tokens per second: one event every 1/N
    /// seconds, from 0.001 to 100000 [default: no pacing, events as fast as the
    /// client reads them]. Plain (non-streaming) answers are not paced.
    #[arg(
        long,
        env = "KEYWARD_SIMULATE_TOKENS_PER_SECOND",
        value_name = "N",
        value_parser = parse_tokens_per_second,
        allow_negative_numbers = true
    )]
    simulate_tokens_per_second: Option<f64>,
    /// Content events (tokens) of each simulated reply, from 1 to 100000: the
    /// reply's words repeated as needed; a request's max_tokens still cuts it
    /// [default: the 14-word reply once].
    #[arg(
        long,
        env = "KEYWARD_SIMULATE_OUTPUT_TOKENS",
        value_name = "N",
        value_parser = parse_output_tokens,
        allow_negative_numbers = true
    )]
    simulate_output_tokens: Option<usize>,
}

impl SimulatorFlags {
    fn is_set(&self) -> bool {
        self.simulate_tokens_per_second.is_some() || self.simulate_output_tokens.is_some()
    }

    /// The simulator's options; values from the config file are checked here
    /// (flags and variables already were, by their parsers).
    fn options(&self) -> anyhow::Result<SimulatorOptions> {
        SimulatorOptions::new(self.simulate_tokens_per_second, None)
            .context("invalid --simulate-tokens-per-second (simulate_tokens_per_second)")?;
        SimulatorOptions::new(None, self.simulate_output_tokens)
            .context("invalid --simulate-output-tokens (simulate_output_tokens)")?;
        Ok(SimulatorOptions::new(
            self.simulate_tokens_per_second,
            self.simulate_output_tokens,
        )?)
    }
}

fn parse_tokens_per_second(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of tokens per second"))?;
    SimulatorOptions::new(Some(rate), None)
        .map(|_| rate)
        .map_err(|e| e.to_string())
}

fn parse_output_tokens(text: &str) -> Result<usize, String> {
    match text.trim().parse::<usize>() {
        Ok(n) => SimulatorOptions::new(None, Some(n))
            .map(|_| n)
            .map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "output tokens must be a whole number from 1 to {}, not {text:?}",
            SimulatorOptions::MAX_OUTPUT_TOKENS
        )),
    }
}

/// The config file: the same settings as the flags.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    secrets_key_file: Option<PathBuf>,
    database: Option<String>,
    redis: Option<String>,
    redis_prefix: Option<String>,
    redis_lease_ms: Option<u64>,
    redis_share_ms: Option<u64>,
    redis_down: Option<String>,
    upstream: Option<String>,
    upstream_key_env: Option<String>,
    upstream_no_key: Option<bool>,
    prices: Option<PathBuf>,
    key_prefix: Option<String>,
    max_body_bytes: Option<usize>,
    upstream_timeout_secs: Option<u64>,
    metrics_listen: Option<String>,
    usage_flush_ms: Option<u64>,
    cache_ttl_ms: Option<u64>,
    usage_buffer_events: Option<usize>,
    shutdown_grace_secs: Option<u64>,
    workers: Option<usize>,
    header_timeout_secs: Option<u64>,
    body_timeout_secs: Option<u64>,
    max_connections: Option<usize>,
    github_max_body_bytes: Option<usize>,
    github_concurrent_bodies: Option<usize>,
    log_format: Option<String>,
    github_public_keys: Option<PathBuf>,
    github_public_keys_url: Option<String>,
    smtp_server: Option<String>,
    smtp_port: Option<u16>,
    smtp_security: Option<String>,
    smtp_sender: Option<String>,
    smtp_username: Option<String>,
    smtp_password_env: Option<String>,
    trusted_proxies: Option<String>,
    client_ip_header: Option<String>,
    #[serde(default)]
    watch_dirs: Vec<PathBuf>,
    #[serde(default)]
    watch_git: Vec<PathBuf>,
    watch_interval: Option<String>,
    route_costs: Option<std::collections::HashMap<String, f64>>,
    public_url: Option<String>,
    session_idle_timeout: Option<String>,
    session_absolute_timeout: Option<String>,
    reauthentication_window: Option<String>,
    password_breach_api: Option<String>,
    oidc_issuer: Option<String>,
    oidc_client_id: Option<String>,
    oidc_client_secret_env: Option<String>,
    oidc_allowed_domains: Option<String>,
    oidc_org: Option<String>,
    simulate_tokens_per_second: Option<f64>,
    simulate_output_tokens: Option<usize>,
}

impl ServeArgs {
    /// Fills unset flags from the config file.
    fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        let f: FileConfig = toml::from_str(&text)
            .with_context(|| format!("parsing config file {}", path.display()))?;
        macro_rules! fill {
            ($($field:ident),*) => { $( if self.$field.is_none() { self.$field = f.$field; } )* };
        }
        fill!(
            public_url,
            session_idle_timeout,
            session_absolute_timeout,
            reauthentication_window,
            password_breach_api,
            oidc_issuer,
            oidc_client_id,
            oidc_client_secret_env,
            oidc_allowed_domains,
            oidc_org,
            listen,
            data_dir,
            secrets_key_file,
            database,
            redis,
            upstream,
            upstream_key_env,
            upstream_no_key,
            prices,
            key_prefix,
            max_body_bytes,
            upstream_timeout_secs,
            metrics_listen,
            usage_flush_ms,
            cache_ttl_ms,
            usage_buffer_events,
            shutdown_grace_secs,
            redis_prefix,
            redis_lease_ms,
            redis_share_ms,
            redis_down,
            workers,
            header_timeout_secs,
            body_timeout_secs,
            max_connections,
            github_max_body_bytes,
            github_concurrent_bodies,
            log_format,
            github_public_keys,
            github_public_keys_url,
            smtp_server,
            smtp_port,
            smtp_security,
            smtp_sender,
            smtp_username,
            smtp_password_env,
            trusted_proxies,
            client_ip_header,
            watch_interval,
            route_costs
        );
        if self.simulator.simulate_tokens_per_second.is_none() {
            self.simulator.simulate_tokens_per_second = f.simulate_tokens_per_second;
        }
        if self.simulator.simulate_output_tokens.is_none() {
            self.simulator.simulate_output_tokens = f.simulate_output_tokens;
        }
        if self.watch_dirs.is_empty() {
            self.watch_dirs = f.watch_dirs;
        }
        if self.watch_git.is_empty() {
            self.watch_git = f.watch_git;
        }
        Ok(self)
    }
}

/// Flags of `keyward simulate`.
#[derive(Args, Debug)]
pub struct SimulateArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9000")]
    listen: String,
    #[command(flatten)]
    simulator: SimulatorFlags,
}

/// Runs the server until SIGTERM or Ctrl-C.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let args = args.merge_file()?;
    init_logging(args.log_format.as_deref().unwrap_or("text"))?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    // The upstream first: a missing key is refused before anything is created.
    let upstream = upstream(&args).await?;
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("keyward-data"));
    keyward_gateway::data_dir::prepare(&data_dir)
        .with_context(|| format!("creating data directory {}", data_dir.display()))?;
    let database = match &args.database {
        Some(url) => url.clone(),
        None => format!("sqlite://{}", data_dir.join("keyward.db").display()),
    };
    // Before the database is opened (or a SQLite file created).
    let mut redis = cluster_redis(args.redis.as_deref(), &database)?;
    if let Some(redis) = &mut redis {
        if let Some(prefix) = &args.redis_prefix {
            if prefix.is_empty() || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bail!("--redis-prefix must be non-empty, without spaces or control characters");
            }
            redis.prefix = prefix.clone();
        }
        if let Some(ms) = args.redis_lease_ms {
            if ms < 100 {
                bail!("--redis-lease-ms must be at least 100, not {ms}");
            }
            redis.lease = Duration::from_millis(ms);
        }
        if let Some(ms) = args.redis_share_ms {
            if ms > 10_000 {
                bail!("--redis-share-ms must be at most 10000, not {ms}");
            }
            redis.share = Duration::from_millis(ms);
        }
        if let Some(when) = &args.redis_down {
            redis.when_down = match when.as_str() {
                "serve-unlimited" => keyward_gateway::config::WhenRedisDown::ServeUnlimited,
                "refuse-all" => keyward_gateway::config::WhenRedisDown::RefuseAll,
                other => bail!("--redis-down must be serve-unlimited or refuse-all, not {other:?}"),
            };
        }
    }
    let store = keyward_store::open(&database)
        .await
        .context("opening the database")?;
    tracing::info!(backend = store.backend(), "database ready");

    let mut config = GatewayConfig::new(upstream, data_dir);
    config.redis = redis;
    if let Some(source) = sealing_key(&args)? {
        config.sealing_key = source;
    }
    if let Some(path) = &args.prices {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading price file {}", path.display()))?;
        let overrides =
            PriceTable::parse(&text).with_context(|| format!("price file {}", path.display()))?;
        config.prices = PriceTable::embedded().extended_with(overrides);
    }
    if let Some(stem) = &args.key_prefix {
        config.key_format = KeyFormat::new(stem).with_context(|| {
            format!("invalid key prefix {stem:?}: use 1-16 lowercase letters or digits")
        })?;
    }
    accounts(&args, &mut config.accounts)?;
    if let Some(n) = args.max_body_bytes {
        config.max_body_bytes = n;
    }
    if let Some(s) = args.upstream_timeout_secs {
        config.upstream_timeout = Duration::from_secs(s);
    }
    if let Some(ms) = args.usage_flush_ms {
        config.usage_batch.interval = Duration::from_millis(ms.max(1));
    }
    if let Some(ms) = args.cache_ttl_ms {
        anyhow::ensure!(
            (1..=600_000).contains(&ms),
            "--cache-ttl-ms must be between 1 and 600000 (ten minutes)"
        );
        config.key_cache_ttl = Duration::from_millis(ms);
    }
    if let Some(n) = args.usage_buffer_events {
        anyhow::ensure!(n > 0, "--usage-buffer-events must be at least 1");
        config.usage_batch.max_pending = n;
    }
    if let Some(s) = args.shutdown_grace_secs {
        config.shutdown_grace = Duration::from_secs(s);
    }
    if let Some(n) = args.workers {
        config.workers = n;
    }
    config.leaks = super::leak_settings::from_args(super::leak_settings::LeakArgs {
        github_public_keys: args.github_public_keys.as_deref(),
        github_public_keys_url: args.github_public_keys_url.clone(),
        smtp_server: args.smtp_server.clone(),
        smtp_port: args.smtp_port,
        smtp_security: args.smtp_security.as_deref(),
        smtp_sender: args.smtp_sender.clone(),
        smtp_username: args.smtp_username.clone(),
        smtp_password_env: args.smtp_password_env.as_deref(),
    })?;
    if let Some(s) = args.header_timeout_secs {
        if s == 0 {
            bail!("--header-timeout-secs must be at least 1");
        }
        config.connections.header_timeout = Duration::from_secs(s);
    }
    if let Some(s) = args.body_timeout_secs {
        if s == 0 {
            bail!("--body-timeout-secs must be at least 1");
        }
        config.connections.body_timeout = Duration::from_secs(s);
    }
    if let Some(n) = args.max_connections {
        if n == 0 {
            bail!("--max-connections must be at least 1");
        }
        config.connections.max_connections = n;
    }
    if let Some(n) = args.github_max_body_bytes {
        config.leaks.github_max_body_bytes = n;
    }
    if let Some(n) = args.github_concurrent_bodies {
        if n == 0 {
            bail!("--github-concurrent-bodies must be at least 1");
        }
        config.leaks.github_concurrent_bodies = n;
    }
    let sources = args
        .watch_dirs
        .iter()
        .map(|p| (p, false))
        .chain(args.watch_git.iter().map(|p| (p, true)));
    for (path, git) in sources {
        if !path.is_dir() {
            bail!("watched source {} is not a directory", path.display());
        }
        config
            .leaks
            .watchers
            .sources
            .push(keyward_gateway::config::WatchSource {
                name: path.display().to_string(),
                path: path.clone(),
                git,
            });
    }
    if let Some(every) = &args.watch_interval {
        let ms = keyward_core::duration::parse_ms(every)
            .map_err(anyhow::Error::msg)
            .context("--watch-interval")?;
        if ms < 1_000 {
            bail!("--watch-interval must be at least 1s");
        }
        config.leaks.watchers.interval = Duration::from_millis(ms as u64);
    }
    if let Some(spec) = &args.trusted_proxies {
        config.client_ip.trusted_proxies =
            keyward_core::policy::parse_networks(spec).context("--trusted-proxies")?;
    }
    if let Some(name) = &args.client_ip_header {
        config.client_ip.header = Some(
            http::HeaderName::try_from(name.to_ascii_lowercase())
                .with_context(|| format!("invalid --client-ip-header {name:?}"))?,
        );
    }
    for (route, usd) in args.route_costs.clone().unwrap_or_default() {
        let cost = keyward_core::Micros::from_usd(usd)
            .with_context(|| format!("route_costs: invalid cost {usd} for {route}"))?;
        if !route.starts_with("/v1/") {
            bail!("route_costs: {route:?} must be a path under /v1/");
        }
        config.route_costs.insert(route, cost);
    }

    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let metrics = match args.metrics_listen.as_deref().unwrap_or("127.0.0.1:9464") {
        "off" => None,
        addr => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics listener {addr}"))?,
        ),
    };
    let server = Server::new(config, store, Clock::system()).await?;
    // Registered before the server says it is serving: a SIGTERM sent the
    // moment it does is a clean shutdown, not the default death by signal.
    let shutdown = shutdown_signal();
    tracing::info!(addr = %listener.local_addr()?, metrics = ?metrics.as_ref().and_then(|m| m.local_addr().ok()), "keyward is serving");
    server
        .run(listener, metrics, shutdown)
        .await
        .context("serving")
}

/// The cluster's Redis, if `--redis` names one. Cluster mode shares durable
/// state through PostgreSQL, so Redis over SQLite (one node's file) is refused
/// rather than letting nodes with separate databases believe they are one.
/// Messages never repeat the URL: it may hold a password.
fn cluster_redis(
    url: Option<&str>,
    database: &str,
) -> anyhow::Result<Option<keyward_gateway::config::RedisSettings>> {
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    if !(database.starts_with("postgres://") || database.starts_with("postgresql://")) {
        bail!(
            "--redis needs --database postgres://…: cluster mode keeps the nodes' shared state in PostgreSQL, and a SQLite database is one node's file"
        );
    }
    if !url.starts_with("redis://") {
        // The shared counters' client is built without TLS (rustls for Redis
        // would be one more stack to keep); say so rather than fail later.
        bail!("--redis must be a redis:// URL (TLS to Redis is not built in: reach Redis over a private network or a TLS tunnel)");
    }
    Ok(Some(keyward_gateway::config::RedisSettings::new(
        Secret::new(url),
    )))
}

/// The upstream to forward to, with its key.
///
/// Decision: a real upstream whose key variable is unset or empty is an error,
/// not a warning: forwarding without credentials fails every request at the
/// upstream (or, worse, reaches an upstream the operator did not mean to leave
/// open). An upstream that truly needs no key (a local model server) is said so
/// with `--upstream-no-key`; the variable is then not read at all.
async fn upstream(args: &ServeArgs) -> anyhow::Result<UpstreamConfig> {
    let upstream_arg = args
        .upstream
        .clone()
        .unwrap_or_else(|| "https://api.openai.com/v1".into());
    if upstream_arg == "simulated" {
        let options = args.simulator.options()?;
        let sim = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the simulated upstream")?;
        let addr = sim.local_addr()?;
        tokio::spawn(keyward_gateway::upstream::simulated::serve(sim, options));
        tracing::warn!(%addr, "SIMULATED upstream: answers are generated by keyward, no real model is called");
        return Ok(UpstreamConfig {
            base_url: format!("http://{addr}/v1").parse()?,
            api_key: None,
        });
    }
    if args.simulator.is_set() {
        bail!(
            "--simulate-tokens-per-second and --simulate-output-tokens apply only to the \
             simulated upstream (--upstream simulated), not to {upstream_arg:?}"
        );
    }
    let base_url: http::Uri = upstream_arg
        .parse()
        .with_context(|| format!("invalid upstream URL {upstream_arg:?}"))?;
    if !matches!(base_url.scheme_str(), Some("http" | "https")) || base_url.authority().is_none() {
        bail!("invalid upstream URL {upstream_arg:?}: expected http(s)://host[:port]/v1");
    }
    if args.upstream_no_key == Some(true) {
        tracing::info!(upstream = %base_url, "--upstream-no-key: requests are forwarded without upstream credentials");
        return Ok(UpstreamConfig {
            base_url,
            api_key: None,
        });
    }
    let var = args
        .upstream_key_env
        .clone()
        .unwrap_or_else(|| "OPENAI_API_KEY".into());
    let Some(api_key) = std::env::var(&var).ok().filter(|v| !v.trim().is_empty()) else {
        bail!(
            "the upstream key variable {var} is not set (or is empty): put the upstream's key \
             in {var}, name another variable with --upstream-key-env, or, \
             if this upstream needs no key, say so with --upstream-no-key \
             (KEYWARD_UPSTREAM_NO_KEY=true, upstream_no_key = true in the config file)"
        );
    };
    Ok(UpstreamConfig {
        base_url,
        api_key: Some(Secret::new(api_key)),
    })
}

/// The key that seals stored secrets: the key in `KEYWARD_SECRETS_KEY` (a key,
/// hence never a flag or a config-file setting), else the key file when one is
/// named; `None` keeps the default key file in the data directory.
fn sealing_key(args: &ServeArgs) -> anyhow::Result<Option<SealingKeySource>> {
    let given = std::env::var(sealing::KEY_ENV)
        .ok()
        .filter(|v| !v.trim().is_empty());
    Ok(match (given, &args.secrets_key_file) {
        (Some(_), Some(_)) => bail!(
            "both {} and --secrets-key-file are set: give the secrets key one way",
            sealing::KEY_ENV
        ),
        (Some(text), None) => Some(SealingKeySource::Key(SealingKey::from_base64(
            &text,
            sealing::KEY_ENV,
        )?)),
        (None, Some(path)) => Some(SealingKeySource::File(path.clone())),
        (None, None) => None,
    })
}

/// Registers for SIGTERM and Ctrl-C at once (a signal that arrives before the
/// future is first polled is not lost) and resolves on either.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{signal, SignalKind};
        (
            signal(SignalKind::terminate()).ok(),
            signal(SignalKind::interrupt()).ok(),
        )
    };
    async move {
        #[cfg(unix)]
        {
            let wait = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            let (term, int) = signals;
            tokio::select! { _ = wait(term) => {}, _ = wait(int) => {} }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
        tracing::info!("shutdown requested; finishing in-flight requests");
    }
}

/// Runs the simulated upstream alone.
pub fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let options = args.simulator.options()?;
    init_logging("text")?;
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async {
        let listener = TcpListener::bind(&args.listen).await.with_context(|| format!("binding {}", args.listen))?;
        tracing::warn!(addr = %listener.local_addr()?, tokens_per_second = ?options.tokens_per_second(), output_tokens = ?options.output_tokens(), "SIMULATED upstream serving: no real model is called");
        tokio::select! {
            r = keyward_gateway::upstream::simulated::serve(listener, options) => r.context("serving"),
            _ = shutdown_signal() => Ok(()),
        }
    })
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYWARD_LOG")
        .unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("unknown log format {other:?}: use text or json"),
    }
    Ok(())
}

/// The accounts settings from their flags.
fn accounts(
    args: &ServeArgs,
    settings: &mut keyward_gateway::config::AccountSettings,
) -> anyhow::Result<()> {
    if let Some(url) = &args.public_url {
        let uri: http::Uri = url
            .parse()
            .ok()
            .filter(|u: &http::Uri| {
                matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some()
            })
            .with_context(|| format!("--public-url {url:?} is not an absolute http(s) URL"))?;
        settings.public_url = Some(uri);
    }
    for (flag, value, slot) in [
        (
            "--session-idle-timeout",
            &args.session_idle_timeout,
            &mut settings.idle_timeout,
        ),
        (
            "--session-absolute-timeout",
            &args.session_absolute_timeout,
            &mut settings.absolute_timeout,
        ),
        (
            "--reauthentication-window",
            &args.reauthentication_window,
            &mut settings.reauthentication_window,
        ),
    ] {
        if let Some(text) = value {
            let ms = keyward_core::duration::parse_ms(text)
                .ok()
                .filter(|ms| *ms > 0)
                .with_context(|| format!("{flag} {text:?}: use a duration such as 30m or 24h"))?;
            *slot = std::time::Duration::from_millis(ms as u64);
        }
    }
    settings.breach_check_url = args.password_breach_api.clone();
    settings.oidc = oidc(args)?;
    Ok(())
}

/// The OpenID provider's settings: the issuer, client id and secret variable
/// all or none (from flags, variables or the file, so checked after merging).
fn oidc(args: &ServeArgs) -> anyhow::Result<Option<keyward_gateway::config::OidcSettings>> {
    let required = [
        ("--oidc-issuer", &args.oidc_issuer),
        ("--oidc-client-id", &args.oidc_client_id),
        ("--oidc-client-secret-env", &args.oidc_client_secret_env),
    ];
    let given: Vec<&str> = required
        .iter()
        .filter(|(_, v)| v.is_some())
        .map(|(f, _)| *f)
        .collect();
    if given.is_empty() {
        if args.oidc_allowed_domains.is_some() || args.oidc_org.is_some() {
            bail!("--oidc-allowed-domains and --oidc-org need --oidc-issuer, --oidc-client-id and --oidc-client-secret-env");
        }
        return Ok(None);
    }
    if given.len() < required.len() {
        let missing: Vec<&str> = required
            .iter()
            .filter(|(_, v)| v.is_none())
            .map(|(f, _)| *f)
            .collect();
        bail!(
            "--oidc-issuer, --oidc-client-id and --oidc-client-secret-env go together: {} given without {}",
            given.join(", "),
            missing.join(", ")
        );
    }
    let issuer = args.oidc_issuer.clone().unwrap_or_default();
    let parsed: Option<http::Uri> = issuer.parse().ok();
    if !parsed
        .is_some_and(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
    {
        bail!(
            "--oidc-issuer {issuer:?} is not an absolute https URL (plain http only on loopback)"
        );
    }
    let allowed_domains = args
        .oidc_allowed_domains
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(|d| d.trim().to_ascii_lowercase())
        .filter(|d| !d.is_empty())
        .collect();
    Ok(Some(keyward_gateway::config::OidcSettings {
        issuer_url: issuer,
        client_id: args.oidc_client_id.clone().unwrap_or_default(),
        client_secret_env: args.oidc_client_secret_env.clone().unwrap_or_default(),
        allowed_domains,
        org: args.oidc_org.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Simulate {
        #[command(flatten)]
        args: SimulateArgs,
    }

    fn parse(flags: &[&str]) -> Result<SimulatorOptions, String> {
        let argv = std::iter::once("simulate").chain(flags.iter().copied());
        let parsed = Simulate::try_parse_from(argv).map_err(|e| e.to_string())?;
        parsed
            .args
            .simulator
            .options()
            .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn simulate_flags_set_the_pace_and_the_reply_length() {
        assert_eq!(parse(&[]).unwrap(), SimulatorOptions::default());
        let o = parse(&[
            "--simulate-tokens-per-second",
            "50",
            "--simulate-output-tokens",
            "200",
        ])
        .unwrap();
        assert_eq!(o.tokens_per_second(), Some(50.0));
        assert_eq!(o.output_tokens(), Some(200));
    }

    #[test]
    fn simulate_flags_out_of_range_are_refused_naming_the_flag() {
        for (flag, value) in [
            ("--simulate-tokens-per-second", "0"),
            ("--simulate-tokens-per-second", "-5"),
            ("--simulate-tokens-per-second", "NaN"),
            ("--simulate-tokens-per-second", "inf"),
            ("--simulate-tokens-per-second", "100001"),
            ("--simulate-tokens-per-second", "fast"),
            ("--simulate-output-tokens", "0"),
            ("--simulate-output-tokens", "-3"),
            ("--simulate-output-tokens", "100001"),
            ("--simulate-output-tokens", "2.5"),
        ] {
            let err = parse(&[flag, value]).unwrap_err();
            assert!(err.contains(flag), "{flag} {value}: {err}");
        }
    }

    #[test]
    fn simulate_settings_from_the_config_file_are_checked_naming_the_flag() {
        let flags = SimulatorFlags {
            simulate_tokens_per_second: Some(1e9),
            simulate_output_tokens: None,
        };
        let err = format!("{:#}", flags.options().unwrap_err());
        assert!(err.contains("--simulate-tokens-per-second"), "{err}");
        let flags = SimulatorFlags {
            simulate_tokens_per_second: None,
            simulate_output_tokens: Some(0),
        };
        let err = format!("{:#}", flags.options().unwrap_err());
        assert!(err.contains("--simulate-output-tokens"), "{err}");
    }

    #[tokio::test]
    async fn simulate_flags_for_a_real_upstream_are_refused() {
        let args = ServeArgs {
            upstream: Some("http://127.0.0.1:1/v1".into()),
            upstream_no_key: Some(true),
            simulator: SimulatorFlags {
                simulate_tokens_per_second: Some(10.0),
                simulate_output_tokens: None,
            },
            ..ServeArgs::default()
        };
        let err = format!("{:#}", upstream(&args).await.unwrap_err());
        assert!(err.contains("--upstream simulated"), "{err}");
    }
}
