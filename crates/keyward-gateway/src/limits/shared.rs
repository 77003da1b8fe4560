//! Cluster mode's counters: [`RedisCounters`] keeps the rate-limit buckets,
//! requests in flight and budget accounts in Redis, shared by every gateway
//! node, so that a limit or a hard budget holds for the cluster, not per node.
//!
//! # One round trip per request
//!
//! [`Counters::charge`] is one Lua script (`shared/charge.lua`, loaded once
//! and called by its SHA; [`redis::Script`] loads it again if Redis lost it):
//! it checks every subject and every account and charges all or nothing, in
//! the order and with the arithmetic of [`crate::limits::LocalCounters`], and
//! answers with the numbers it decided on. This module then re-derives the
//! answer (the refusal's message and wait, the headers, the output cap) with
//! the same functions `LocalCounters` uses ([`within`], [`tell`], [`fit`]), so
//! both implementations tell a client the same thing. A request with no rate
//! limit and no budget does not reach Redis at all, and neither does one that
//! this node's shares cover ([`RedisCounters::with_shares`], `shared/shares.rs`):
//! parts of limits far from their end, taken from Redis by an earlier charge.
//!
//! Releases and settlements (`release_rate`, `settle_budget`,
//! `release_budget`) are called from `Drop` and must not block: they go to an
//! unbounded channel read by one task, which applies everything that ended
//! since its last batch in one call of `shared/finish.lua` (under load, one
//! script run for dozens of requests) and raises budget alerts itself. A
//! settlement that fails (Redis out of reach) is retried at every lease
//! renewal until Redis answers: the spend must be counted (a settlement
//! applied twice, when an answer was lost after Redis applied it, counts a
//! request twice: it refuses early, never overspends).
//!
//! # Clocks
//!
//! The buckets refill on the caller's clock (`now_ms`, the server's
//! [`keyward_core::Clock`]), like `LocalCounters`: budget periods already
//! start on the nodes' clocks, so a cluster needs them synchronised anyway
//! (NTP), the same request gets the same answer from either implementation,
//! and tests drive both with a manual clock. A bucket refills from the latest
//! time any node charged it and never moves back, so a node whose clock runs
//! `d` ahead gives at most `d × limit / 60 s` extra once, and one behind gives
//! nothing. Leases, which decide when a dead node's holds are given back, are
//! on Redis server time (`TIME` in the scripts): one clock for every node
//! that may purge them.
//!
//! # Leases
//!
//! An in-flight slot or a budget hold is a member of a sorted set scored by
//! the time its lease ends (a budget hold's member is `<hold id>~<amount>`,
//! so that ending or purging it reads nothing else). A charge does not count
//! slots whose lease ran out (renewals remove them), and gives back budget
//! holds whose lease ran out only when they would refuse it (until then they
//! only make the output cap of an uncapped request smaller). A live
//! node renews the leases of the holds it has open every lease / 3, in one
//! script call (per 512 holds), and puts back any that went missing (Redis
//! restarted empty, or a lease ran out while Redis was unreachable), so what
//! is in flight stays held. With the default lease ([`DEFAULT_LEASE`], 30 s),
//! a node that dies holds its slots and reservations for 20 to 30 s after
//! its death, then they are usable again; the requests and tokens it charged
//! stay charged (they were sent), and whatever its in-flight requests really
//! cost upstream is counted only if their usage reached storage. A charge
//! whose caller went away after Redis ran it (the client hung up during the
//! round trip) is never recorded as open on the node: its slot and hold
//! lapse with their first lease the same way.
//!
//! # Redis restarted empty
//!
//! Budget accounts are never created by a settlement: an account Redis does
//! not hold is answered `Unloaded` to the next charge, and admission reads its
//! spend from storage (after flushing the usage not yet written), which is
//! where every settled request's usage goes. So a budget is rebuilt from
//! storage, never reset to zero.
//!
//! # Redis unreachable
//!
//! A charge that cannot run its script is [`Refusal::Unavailable`] (fail
//! closed), counted in [`Metrics::redis_errors`] and logged (at most every
//! 10 s). The connection is re-established by itself on the next call; calls
//! give up after a short timeout rather than hold requests.
//!
//! Keys are `<prefix>:rate:…`, `<prefix>:flight:…` and `<prefix>:acct:…`; one
//! Redis (or a primary), not Redis Cluster (a script's keys are not in one
//! slot). Amounts must stay below 2^52 micro-dollars (about $4.5 billion), the
//! range Lua's numbers hold exactly; larger budget amounts are treated as that.

mod shares;

use crate::limits::alerts::RaiseAlerts;
use crate::limits::budgets::{
    fit, thresholds_crossed, Account, AccountId, CostBound, PeriodBudgets, ThresholdCrossed,
};
use crate::limits::counters::{Charge, Charged, Counters, Refusal};
use crate::limits::rate::{tell, within, Bucket, Limits, RateHeaders, State, Subject};
use crate::metrics::Metrics;
use keyward_core::Budget;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use shares::{RateGrant, Shares, SlabGrant};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

/// How long a slot or a hold outlives its node's last renewal (renewed every
/// third of it): what a crash costs, against how long Redis may be out of
/// reach before a live node's holds lapse (they are put back when it returns).
pub const DEFAULT_LEASE: Duration = crate::config::RedisSettings::DEFAULT_LEASE;

/// The shortest lease accepted (tests use short ones; a lease shorter than a
/// few round trips would lapse under a live node).
pub const MIN_LEASE: Duration = Duration::from_millis(100);

/// How long an account nothing uses stays in Redis (as `LocalCounters` forgets
/// idle accounts): a past period, an expired token. It is read from storage
/// again if used.
const ACCOUNT_IDLE_MS: i64 = 10 * 60_000;

/// Amounts are kept below this, so that Lua's doubles hold them exactly.
const EXACT: i64 = 1 << 52;

/// The highest output price (micro-dollars per million tokens, $9,000) whose
/// output cap the script computes exactly.
const MAX_EXACT_PRICE: i64 = 9_000_000_000;

/// Holds renewed per script call.
const RENEW_CHUNK: usize = 512;

/// How often shares are checked for their age (and slabs synced).
const SHARE_SWEEP: Duration = Duration::from_millis(100);

/// Requests ended per call of the finish script: a call blocks Redis for
/// about 256 × 5 commands, a millisecond or so.
const BATCH: usize = 256;

/// Settlements waiting for Redis beyond this many are dropped (and logged):
/// memory stays bounded through a long outage.
const MAX_RETRIES_QUEUED: usize = 100_000;

/// Why [`RedisCounters::connect`] refused its settings. Messages never hold
/// the URL (it may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum SharedCountersError {
    /// The URL does not parse.
    #[error("the Redis URL is not valid; expected redis://[[user]:password@]host[:port][/db]")]
    InvalidUrl,
    /// `rediss://` (TLS) is not built in.
    #[error("Redis over TLS (rediss://) is not supported by this build; use redis:// on a private network")]
    TlsUnsupported,
    /// The key prefix is empty or has spaces.
    #[error("the Redis key prefix must be non-empty and have no whitespace")]
    InvalidPrefix,
    /// The lease is too short.
    #[error("the lease must be at least {} ms", MIN_LEASE.as_millis())]
    LeaseTooShort,
    /// Redis did not answer (only [`RedisCounters::reachable`] says so;
    /// `connect` starts without it).
    #[error("Redis did not answer: {0}")]
    Unreachable(String),
}

/// Rate limits, requests in flight and budget accounts in Redis, shared by
/// every node that connects with the same key prefix.
pub struct RedisCounters {
    shared: Arc<Shared>,
    ops: mpsc::UnboundedSender<Op>,
}

/// What the counters and their release task share.
struct Shared {
    redis: ConnectionManager,
    prefix: String,
    lease_ms: i64,
    /// This node's name in hold ids: random, so that nodes never collide.
    node: String,
    next_hold: AtomicU64,
    open: Mutex<OpenHolds>,
    metrics: Arc<Metrics>,
    alerts: RaiseAlerts,
    scripts: Scripts,
    started: Instant,
    /// When an error was last logged, ms since `started` (+1; 0: never).
    logged_at: AtomicU64,
    /// Settlements waiting for a retry (for the metrics).
    retries_queued: AtomicU64,
    /// How long a share lives, in ms; 0: this node takes none
    /// ([`RedisCounters::with_shares`]).
    share_ms: AtomicU64,
    /// Requests charged from shares (for the metrics).
    local_charges: AtomicU64,
}

struct Scripts {
    charge: Script,
    finish: Script,
    load: Script,
    account: Script,
    renew: Script,
    reconcile: Script,
}

/// `common.lua` then the script: the helpers every script uses.
macro_rules! script {
    ($file:literal) => {
        Script::new(concat!(
            include_str!("shared/common.lua"),
            include_str!(concat!("shared/", $file))
        ))
    };
}

impl Scripts {
    fn new() -> Self {
        Self {
            charge: script!("charge.lua"),
            finish: script!("finish.lua"),
            load: script!("load.lua"),
            account: script!("account.lua"),
            renew: script!("renew.lua"),
            reconcile: script!("reconcile.lua"),
        }
    }
}

/// The holds this node has open, to renew their leases and to name the one a
/// release gives back. Holds charged to the same sets (and amount) are
/// interchangeable, so a release takes any of them.
#[derive(Default)]
struct OpenHolds {
    /// In-flight slots, by the in-flight sets of the subjects charged.
    slots: HashMap<Vec<String>, Vec<u64>>,
    /// Budget holds, by the accounts charged and the amount held on each.
    holds: HashMap<(Vec<String>, i64), Vec<u64>>,
    /// Accounts charged since reconciliation last asked, by their key.
    charged: HashMap<String, AccountId>,
    /// Parts of the limits this node charges by itself.
    shares: Shares,
}

/// Takes one of the holds open under `key` (none when the charge was not
/// this node's, or its hold was never recorded).
fn take<K: std::hash::Hash + Eq>(open: &mut HashMap<K, Vec<u64>>, key: &K) -> Option<u64> {
    let ids = open.get_mut(key)?;
    let id = ids.pop();
    if ids.is_empty() {
        open.remove(key);
    }
    id
}

/// Work for the release task.
enum Op {
    /// [`Counters::release_rate`].
    Rate {
        /// Per subject: its bucket, its in-flight set, whether it counts
        /// requests in flight.
        subjects: Vec<(String, String, bool)>,
        hold: Option<u64>,
        estimated: i64,
        actual: Option<i64>,
    },
    /// [`Counters::settle_budget`] (`actual` set) or
    /// [`Counters::release_budget`].
    Budget(BudgetOp),
    /// What is left of a share, back to the shared counters.
    GiveBack(GiveBack),
    /// Answers once everything sent before it was applied.
    Flush(oneshot::Sender<()>),
}

/// What is left of a share (see `shares`), given back to a subject's
/// buckets (within its limits) and in-flight set.
struct GiveBack {
    bucket: String,
    flight: String,
    /// The share's slots: their member's name, how many it registered and
    /// how many it registers now.
    name: String,
    was: u32,
    now: u32,
    requests: f64,
    tokens: f64,
    limits: Limits,
}

/// One change of a slab for the finish script's `'s'` op.
struct SlabSync {
    account: String,
    leases: String,
    name: String,
    budget: (Arc<Budget>, i64),
    /// The amount registered in Redis, and the amount to register now.
    was: i64,
    now: i64,
    /// Spend to add to the account.
    spend: i64,
    /// Of `was - now - spend`: the free amount given back.
    freed: i64,
}

struct BudgetOp {
    accounts: Vec<String>,
    budgets: Vec<(Arc<Budget>, i64)>,
    hold: Option<u64>,
    /// The amount held on each account.
    held: i64,
    actual: Option<i64>,
}

/// The budget arithmetic the charge script needs, prepared so that it is
/// exact in Lua's doubles (see `charge.lua`).
enum Plan {
    /// The amount to hold does not depend on what remains.
    Fixed(i64),
    /// No output cap was set: the cap is what the tightest budget can pay
    /// for, up to `max` tokens (the model's limit; else what `fit` clamps
    /// to). The input cost (parts per million) is `a * 1e6 - b`.
    Auto {
        a: i64,
        b: i64,
        price: i64,
        max: i64,
        held_at_max: i64,
    },
}

impl Plan {
    /// Mirrors the first half of [`fit`].
    fn of(bound: CostBound) -> Option<Plan> {
        let held_for = |output: i64| {
            let e6 = bound.input_e6 + i128::from(output) * i128::from(bound.output_price);
            // Above what an account can hold: refused, as `fit` refuses it.
            i64::try_from((e6 + 999_999) / 1_000_000)
                .unwrap_or(i64::MAX)
                .min(EXACT + 1)
        };
        match bound.requested_output {
            Some(n) => Some(Plan::Fixed(held_for(n.max(0)))),
            None if bound.output_price == 0 => Some(Plan::Fixed(held_for(0))),
            None if !(1..=MAX_EXACT_PRICE).contains(&bound.output_price) => None,
            None => {
                let e6 = bound.input_e6;
                let a = -((-e6).div_euclid(1_000_000));
                let b = a * 1_000_000 - e6;
                // No limit of the model's own: `fit` clamps what is
                // affordable to i64::MAX tokens, which holds the same.
                let max = bound.model_max_output.map_or(i64::MAX, |m| m.min(EXACT));
                Some(Plan::Auto {
                    // An input this large leaves nothing affordable either way.
                    a: i64::try_from(a).unwrap_or(i64::MAX).min(EXACT),
                    b: i64::try_from(b).unwrap_or(0),
                    price: bound.output_price,
                    max,
                    held_at_max: held_for(max),
                })
            }
        }
    }

    fn args(&self) -> [String; 6] {
        match *self {
            Plan::Fixed(held) => [
                "fixed".into(),
                held.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
            ],
            Plan::Auto {
                a,
                b,
                price,
                max,
                held_at_max,
            } => [
                "auto".into(),
                a.to_string(),
                b.to_string(),
                price.to_string(),
                max.to_string(),
                held_at_max.to_string(),
            ],
        }
    }
}

impl RedisCounters {
    /// Counters in the Redis at `url`, every key under `key_prefix`, with
    /// slots and holds leased for `lease` ([`DEFAULT_LEASE`] unless a test
    /// needs a short one). `metrics` counts Redis failures; `alerts` receives
    /// the budget thresholds settlements cross.
    ///
    /// Call it on the server's main runtime: the connection and the release
    /// task live there. It does not wait for Redis: a node may start while
    /// Redis is down (it refuses what needs the counters until Redis
    /// answers; [`RedisCounters::reachable`] is for readiness). Errors are
    /// settings only.
    pub async fn connect(
        url: &str,
        key_prefix: &str,
        lease: Duration,
        metrics: Arc<Metrics>,
        alerts: RaiseAlerts,
    ) -> Result<Self, SharedCountersError> {
        if key_prefix.is_empty() || key_prefix.chars().any(char::is_whitespace) {
            return Err(SharedCountersError::InvalidPrefix);
        }
        if lease < MIN_LEASE {
            return Err(SharedCountersError::LeaseTooShort);
        }
        let scheme = url.split(':').next().unwrap_or_default();
        if scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys") {
            return Err(SharedCountersError::TlsUnsupported);
        }
        let client = redis::Client::open(url).map_err(|_| SharedCountersError::InvalidUrl)?;
        // Fail fast rather than hold requests: one quick retry, then the
        // caller refuses; the next call reconnects.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(20))
            .set_max_delay(Duration::from_millis(200));
        let redis = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|_| SharedCountersError::InvalidUrl)?;
        let shared = Arc::new(Shared {
            redis,
            prefix: key_prefix.to_owned(),
            lease_ms: i64::try_from(lease.as_millis()).unwrap_or(i64::MAX / 4),
            node: keyward_core::base62::random(12),
            next_hold: AtomicU64::new(0),
            open: Mutex::new(OpenHolds::default()),
            metrics,
            alerts,
            scripts: Scripts::new(),
            started: Instant::now(),
            logged_at: AtomicU64::new(0),
            retries_queued: AtomicU64::new(0),
            share_ms: AtomicU64::new(0),
            local_charges: AtomicU64::new(0),
        });
        // Connect now, from this runtime, so that the connection is driven
        // here and not by the first request's worker.
        if let Err(e) = shared.ping().await {
            tracing::warn!(error = %e, "Redis is not reachable yet: requests that need the shared counters are refused until it is");
        }
        let (ops, rx) = mpsc::unbounded_channel();
        tokio::spawn(release_task(shared.clone(), rx));
        Ok(Self { shared, ops })
    }

    /// Whether Redis answers now (for readiness probes).
    pub async fn reachable(&self) -> Result<(), SharedCountersError> {
        self.shared
            .ping()
            .await
            .map_err(|e| SharedCountersError::Unreachable(e.to_string()))
    }

    /// Waits until every release and settlement sent before this call has
    /// been tried, and gives back what this node's shares hold unused (at
    /// shutdown, and in tests that read the counters after a release).
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.ops.send(Op::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Lets this node take shares of the limits, each for `ttl` (zero: none,
    /// the default), so that most requests are charged without a round trip
    /// (see `shares`).
    pub fn with_shares(self, ttl: Duration) -> Self {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.shared.share_ms.store(ms, Ordering::Relaxed);
        self
    }

    /// Requests this node charged from its shares, without Redis.
    pub fn local_charges(&self) -> u64 {
        self.shared.local_charges.load(Ordering::Relaxed)
    }

    /// How many shares and slabs this node has (live, or retired with
    /// requests still open).
    pub fn shares_open(&self) -> usize {
        self.shared.lock().shares.count()
    }

    /// How many slots and budget holds this node has open.
    pub fn open_holds(&self) -> (usize, usize) {
        let open = self.shared.lock();
        (
            open.slots.values().map(Vec::len).sum(),
            open.holds.values().map(Vec::len).sum(),
        )
    }

    fn rate_keys(&self, subjects: &[(Subject, Limits)]) -> Vec<(String, String, bool)> {
        subjects
            .iter()
            .map(|(s, l)| {
                let name = match s {
                    Subject::Key(id) => format!("k:{id}"),
                    Subject::Project(id) => format!("p:{id}"),
                };
                let prefix = &self.shared.prefix;
                (
                    format!("{prefix}:rate:{name}"),
                    format!("{prefix}:flight:{name}"),
                    l.max_concurrent.is_some(),
                )
            })
            .collect()
    }

    fn account_keys(&self, budgets: &PeriodBudgets) -> Vec<String> {
        budgets
            .iter()
            .map(|(b, start)| self.shared.account_key(&(b.scope.clone(), *start)))
            .collect()
    }
}

/// The in-flight sets of the subjects that count requests in flight.
fn flights(keys: &[(String, String, bool)]) -> Vec<String> {
    keys.iter().filter(|k| k.2).map(|k| k.1.clone()).collect()
}

fn leases_key(account: &str) -> String {
    format!("{account}:leases")
}

/// A number the scripts sent as text (levels are `%.17g`, exact).
fn number(s: &str) -> Option<f64> {
    if s.is_empty() {
        None
    } else {
        s.parse().ok()
    }
}

/// An integer the scripts sent (below 2^53, so exact as a double).
fn integer(s: &str) -> Option<i64> {
    number(s).map(|x| x as i64)
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, OpenHolds> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn account_key(&self, (scope, start): &AccountId) -> String {
        format!(
            "{}:acct:{}:{}:{start}",
            self.prefix,
            scope.kind(),
            scope.id()
        )
    }

    fn hold_id(&self, n: u64) -> String {
        format!("{}.{n}", self.node)
    }

    /// How long shares live; `None` when this node takes none.
    fn share_ttl(&self) -> Option<Duration> {
        match self.share_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(Duration::from_millis(ms)),
        }
    }

    async fn ping(&self) -> redis::RedisResult<()> {
        let mut con = self.redis.clone();
        redis::cmd("PING").query_async::<()>(&mut con).await
    }

    /// Counts a failure and logs it, at most once every 10 s.
    fn failed(&self, what: &str, e: &redis::RedisError) {
        self.metrics.redis_errors.inc();
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.logged_at.load(Ordering::Relaxed);
        if (last == 0 || now.saturating_sub(last) >= 10_000)
            && self
                .logged_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::error!(operation = what, error = %e, "the shared counters' Redis failed: requests that need them are refused");
        }
    }

    /// Something the script decided that this module's arithmetic does not
    /// reproduce: a bug, logged loudly.
    fn disagree(&self, what: &str) {
        self.metrics.redis_errors.inc();
        tracing::error!(
            what,
            "the shared counters' script and the gateway disagree; refusing"
        );
    }
}

/// Notes the accounts a charge took from, for reconciliation.
fn note_charged(
    charged: &mut HashMap<String, AccountId>,
    accounts: &[String],
    budgets: &PeriodBudgets,
) {
    for (key, (budget, start)) in accounts.iter().zip(budgets) {
        if !charged.contains_key(key) {
            charged.insert(key.clone(), (budget.scope.clone(), *start));
        }
    }
}

/// The subjects' shares the charge script granted: `levels` are the levels
/// it answered (per subject, requests then tokens, before the grant was
/// taken), `granted` per subject requests, tokens and slots.
fn rate_grants(
    name: &str,
    keys: &[(String, String, bool)],
    subjects: &[(Subject, Limits)],
    levels: &[String],
    granted: &[String],
) -> Vec<RateGrant> {
    keys.iter()
        .zip(subjects)
        .enumerate()
        .map(|(i, ((bucket, flight, _), (_, limits)))| {
            let requests = number(&granted[3 * i]).unwrap_or(0.0);
            let tokens = number(&granted[3 * i + 1]).unwrap_or(0.0);
            let slots = integer(&granted[3 * i + 2]).unwrap_or(0);
            let slots = u32::try_from(slots).unwrap_or(0);
            RateGrant {
                bucket: bucket.clone(),
                flight: flight.clone(),
                limits: *limits,
                requests,
                tokens,
                slot_name: format!("{name}/s"),
                slots,
                levels: (
                    number(&levels[2 * i]).map(|l| l - requests),
                    number(&levels[2 * i + 1]).map(|l| l - tokens),
                ),
            }
        })
        .collect()
}

/// The budgets' slabs the charge script granted (`granted`: per account).
fn slab_grants(
    name: &str,
    accounts: &[String],
    budgets: &PeriodBudgets,
    granted: &[String],
) -> Vec<SlabGrant> {
    accounts
        .iter()
        .zip(budgets)
        .zip(granted)
        .map(|((account, budget), amount)| SlabGrant {
            account: account.clone(),
            name: format!("{name}/b"),
            budget: budget.clone(),
            amount: integer(amount).unwrap_or(0),
        })
        .collect()
}

#[async_trait::async_trait]
impl Counters for RedisCounters {
    async fn charge(&self, charge: Charge<'_>) -> Result<Charged, Refusal> {
        let Charge {
            subjects,
            estimated_tokens,
            reserve,
            now_ms,
        } = charge;
        let budgets: &PeriodBudgets = reserve.map_or(&[], |(b, _)| b);
        if subjects.is_empty() && budgets.is_empty() {
            // Nothing shared to check (admission calls `charge` for every
            // request): no round trip.
            let held = match reserve {
                Some((b, bound)) => fit(b, &[], bound).map_err(Refusal::Exhausted)?.0,
                None => 0,
            };
            return Ok(Charged {
                held,
                ..Charged::default()
            });
        }
        let plan = match reserve {
            Some((b, bound)) if !b.is_empty() => match Plan::of(bound) {
                Some(plan) => Some(plan),
                None => {
                    tracing::error!(
                        output_price = bound.output_price,
                        "an output price above $9,000 per million tokens cannot be capped exactly by the shared counters; refusing"
                    );
                    return Err(Refusal::Unavailable);
                }
            },
            _ => None,
        };
        let rate_keys = self.rate_keys(subjects);
        let accounts = self.account_keys(budgets);
        let share_ttl = self.shared.share_ttl();
        if let Some(ttl) = share_ttl {
            let buckets: Vec<String> = rate_keys.iter().map(|k| k.0.clone()).collect();
            let bound = reserve.map(|(_, b)| b);
            let mut open = self.shared.lock();
            let local = open.shares.charge(
                ttl,
                subjects,
                &buckets,
                budgets,
                &accounts,
                bound,
                estimated_tokens,
                now_ms,
            );
            if let Some(charged) = local {
                note_charged(&mut open.charged, &accounts, budgets);
                drop(open);
                self.shared.local_charges.fetch_add(1, Ordering::Relaxed);
                return Ok(charged);
            }
        }
        let hold = self.shared.next_hold.fetch_add(1, Ordering::Relaxed);
        let mut call = self.shared.scripts.charge.prepare_invoke();
        for (bucket, flight, _) in &rate_keys {
            call.key(bucket).key(flight);
        }
        for a in &accounts {
            call.key(a).key(leases_key(a));
        }
        call.arg(now_ms)
            .arg(self.shared.hold_id(hold))
            .arg(self.shared.lease_ms)
            .arg(ACCOUNT_IDLE_MS)
            .arg(subjects.len())
            .arg(estimated_tokens)
            .arg(budgets.len());
        match &plan {
            Some(plan) => {
                call.arg(&plan.args()[..]);
            }
            None => {
                call.arg(&Plan::Fixed(0).args()[..]);
            }
        }
        let limit = |l: Option<u32>| l.map_or(-1, i64::from);
        for (_, l) in subjects {
            call.arg(limit(l.rpm))
                .arg(limit(l.tpm))
                .arg(limit(l.max_concurrent));
        }
        for (b, _) in budgets {
            call.arg(b.amount_micros.0.clamp(-EXACT, EXACT));
        }
        if share_ttl.is_some() {
            call.arg("1");
        }
        let mut con = self.shared.redis.clone();
        let sent = Instant::now();
        let reply: Vec<String> = match call.invoke_async(&mut con).await {
            Ok(reply) => {
                self.shared.metrics.redis_round_trip.observe(sent.elapsed());
                reply
            }
            Err(e) => {
                self.shared.failed("charge", &e);
                return Err(Refusal::Unavailable);
            }
        };
        let state = |requests: &str, tokens: &str, in_flight: u32| State {
            requests: number(requests).map(|level| Bucket {
                level,
                at_ms: now_ms,
            }),
            tokens: number(tokens).map(|level| Bucket {
                level,
                at_ms: now_ms,
            }),
            in_flight,
        };
        let bound = reserve.map(|(_, b)| b);
        let granted_at = 2 + 2 * subjects.len() + budgets.len();
        let grants = if share_ttl.is_some() {
            3 * subjects.len() + budgets.len()
        } else {
            0
        };
        match reply.first().map(String::as_str) {
            Some("rate") if reply.len() == 5 => {
                let i = integer(&reply[1]).unwrap_or(0) as usize;
                let Some((subject, limits)) = i.checked_sub(1).and_then(|i| subjects.get(i)) else {
                    self.shared.disagree("rate-limited subject");
                    return Err(Refusal::Unavailable);
                };
                let in_flight = integer(&reply[4])
                    .unwrap_or(0)
                    .clamp(0, i64::from(u32::MAX)) as u32;
                let st = state(&reply[2], &reply[3], in_flight);
                match within(subject, limits, &st, estimated_tokens, now_ms) {
                    Err(r) => Err(Refusal::RateLimited(r)),
                    Ok(()) => {
                        self.shared.disagree("rate limit");
                        Err(Refusal::Unavailable)
                    }
                }
            }
            Some("unloaded") => Err(Refusal::Unloaded(
                reply[1..]
                    .iter()
                    .filter_map(|j| integer(j)?.checked_sub(1))
                    .filter_map(|j| budgets.get(j as usize))
                    .map(|(b, start)| (b.scope.clone(), *start))
                    .collect(),
            )),
            Some("exhausted") if reply.len() == budgets.len() + 1 => {
                let remaining: Vec<i64> =
                    reply[1..].iter().map(|r| integer(r).unwrap_or(0)).collect();
                match bound.map(|bound| fit(budgets, &remaining, bound)) {
                    Some(Err(e)) => Err(Refusal::Exhausted(e)),
                    _ => {
                        self.shared.disagree("budget refusal");
                        Err(Refusal::Unavailable)
                    }
                }
            }
            Some("ok") if reply.len() == granted_at + grants => {
                let held_in_redis = integer(&reply[1]).unwrap_or(0);
                let mut headers = RateHeaders::default();
                for (i, (_, limits)) in subjects.iter().enumerate() {
                    let st = state(&reply[2 + 2 * i], &reply[3 + 2 * i], 0);
                    tell(&mut headers, &st, limits, now_ms);
                }
                let remaining: Vec<i64> = reply[2 + 2 * subjects.len()..]
                    .iter()
                    .map(|r| integer(r).unwrap_or(0))
                    .collect();
                let (held, output_cap) = match bound {
                    None => (0, None),
                    Some(bound) => match fit(budgets, &remaining, bound) {
                        Ok((held, cap)) => {
                            if !budgets.is_empty() && held != held_in_redis {
                                self.shared.disagree("amount held");
                            }
                            (
                                if budgets.is_empty() {
                                    held
                                } else {
                                    held_in_redis
                                },
                                cap,
                            )
                        }
                        Err(_) => {
                            // Charged in Redis already: keep its hold, with
                            // no cap (the bound it checked is the request's).
                            self.shared.disagree("budget admission");
                            (held_in_redis, None)
                        }
                    },
                };
                let flights = flights(&rate_keys);
                let mut open = self.shared.lock();
                note_charged(&mut open.charged, &accounts, budgets);
                let granted = &reply[granted_at..];
                if granted.iter().any(|g| g != "0") {
                    let name = self.shared.hold_id(hold);
                    let back = open.shares.grant(
                        rate_grants(&name, &rate_keys, subjects, &reply[2..], granted),
                        slab_grants(&name, &accounts, budgets, &granted[3 * subjects.len()..]),
                    );
                    for b in back {
                        let _ = self.ops.send(Op::GiveBack(b));
                    }
                }
                if !flights.is_empty() {
                    open.slots.entry(flights).or_default().push(hold);
                }
                if !accounts.is_empty() {
                    open.holds.entry((accounts, held)).or_default().push(hold);
                }
                Ok(Charged {
                    headers,
                    held,
                    output_cap,
                })
            }
            _ => {
                self.shared.disagree("reply shape");
                Err(Refusal::Unavailable)
            }
        }
    }

    fn release_rate(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    ) {
        if charged.is_empty() {
            return;
        }
        let subjects = self.rate_keys(charged);
        if self.shared.share_ttl().is_some() {
            let buckets: Vec<String> = subjects.iter().map(|k| k.0.clone()).collect();
            let local =
                self.shared
                    .lock()
                    .shares
                    .release_rate(&buckets, estimated_tokens, actual_tokens);
            if let Some(back) = local {
                for b in back {
                    let _ = self.ops.send(Op::GiveBack(b));
                }
                return;
            }
        }
        let flights = flights(&subjects);
        let hold = if flights.is_empty() {
            None
        } else {
            take(&mut self.shared.lock().slots, &flights)
        };
        let _ = self.ops.send(Op::Rate {
            subjects,
            hold,
            estimated: estimated_tokens,
            actual: actual_tokens,
        });
    }

    async fn load(&self, id: AccountId, spent: i64, _now_ms: i64) {
        let key = self.shared.account_key(&id);
        let mut con = self.shared.redis.clone();
        let loaded: redis::RedisResult<i64> = self
            .shared
            .scripts
            .load
            .key(&key)
            .key(leases_key(&key))
            .arg(spent)
            .arg(ACCOUNT_IDLE_MS)
            .invoke_async(&mut con)
            .await;
        if let Err(e) = loaded {
            // The next charge finds the account unloaded again, or Redis
            // unreachable: refused either way.
            self.shared.failed("load", &e);
        }
    }

    async fn flush(&self) {
        RedisCounters::flush(self).await;
    }

    fn charged_accounts(&self) -> Vec<AccountId> {
        std::mem::take(&mut self.shared.lock().charged)
            .into_values()
            .collect()
    }

    async fn reconcile(&self, id: &AccountId, stored: i64) -> Option<i64> {
        let key = self.shared.account_key(id);
        let mut con = self.shared.redis.clone();
        let raised: redis::RedisResult<String> = self
            .shared
            .scripts
            .reconcile
            .key(&key)
            .arg(stored.clamp(0, EXACT))
            .invoke_async(&mut con)
            .await;
        match raised {
            Ok(before) => integer(&before),
            Err(e) => {
                self.shared.failed("reconcile", &e);
                None
            }
        }
    }

    fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let (slots, holds) = self.open_holds();
        let queued = self.shared.retries_queued.load(Ordering::Relaxed);
        let shares = self.shares_open();
        let local = self.local_charges();
        let _ = writeln!(
            out,
            "# HELP keyward_redis_holds_open In-flight slots and budget holds this node has open in Redis (renewed until released).\n# TYPE keyward_redis_holds_open gauge\nkeyward_redis_holds_open{{kind=\"slot\"}} {slots}\nkeyward_redis_holds_open{{kind=\"budget\"}} {holds}\nkeyward_redis_holds_open{{kind=\"share\"}} {shares}\n# HELP keyward_redis_local_charges_total Requests charged from this node's shares of the limits, without a round trip to Redis.\n# TYPE keyward_redis_local_charges_total counter\nkeyward_redis_local_charges_total {local}\n# HELP keyward_redis_settlements_waiting Budget settlements Redis did not take yet (retried at each lease renewal).\n# TYPE keyward_redis_settlements_waiting gauge\nkeyward_redis_settlements_waiting {queued}"
        );
    }

    async fn account(&self, id: &AccountId) -> Account {
        let key = self.shared.account_key(id);
        let mut con = self.shared.redis.clone();
        let read: redis::RedisResult<Vec<String>> = self
            .shared
            .scripts
            .account
            .key(&key)
            .key(leases_key(&key))
            .invoke_async(&mut con)
            .await;
        match read {
            Ok(v) if v.len() == 2 => Account {
                spent: integer(&v[0]).unwrap_or(0),
                reserved: integer(&v[1]).unwrap_or(0),
            },
            Ok(_) => Account::default(),
            Err(e) => {
                self.shared.failed("account", &e);
                Account::default()
            }
        }
    }

    fn settle_budget(
        &self,
        budgets: &[(Arc<Budget>, i64)],
        held: i64,
        actual: i64,
    ) -> Vec<ThresholdCrossed> {
        self.end_hold(budgets, held, Some(actual));
        // Raised by the release task once Redis says what the spend became.
        Vec::new()
    }

    fn release_budget(&self, budgets: &[(Arc<Budget>, i64)], held: i64) {
        self.end_hold(budgets, held, None);
    }
}

impl RedisCounters {
    fn end_hold(&self, budgets: &PeriodBudgets, held: i64, actual: Option<i64>) {
        if budgets.is_empty() {
            return;
        }
        let accounts = self.account_keys(budgets);
        if self.shared.share_ttl().is_some() {
            let local = self.shared.lock().shares.end_hold(&accounts, held, actual);
            if local.is_some() {
                return;
            }
        }
        let key = (accounts, held);
        let hold = take(&mut self.shared.lock().holds, &key);
        let _ = self.ops.send(Op::Budget(BudgetOp {
            accounts: key.0,
            budgets: budgets.to_vec(),
            hold,
            held,
            actual,
        }));
    }
}

/// Applies releases and settlements as they come, renews the leases of the
/// holds still open every lease / 3, and retries settlements Redis did not
/// take. Ends when the counters are dropped (after what was queued).
async fn release_task(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Op>) {
    let period = Duration::from_millis((shared.lease_ms / 3).max(1) as u64);
    let mut renewals = tokio::time::interval(period);
    renewals.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry: Vec<BudgetOp> = Vec::new();
    let mut sweeps = tokio::time::interval(SHARE_SWEEP);
    sweeps.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            op = rx.recv() => {
                let Some(op) = op else { break };
                let mut batch = vec![op];
                while batch.len() < BATCH {
                    match rx.try_recv() {
                        Ok(op) => batch.push(op),
                        Err(_) => break,
                    }
                }
                apply(&shared, batch, &mut retry).await;
            }
            _ = sweeps.tick(), if shared.share_ttl().is_some() => {
                if let Some(ttl) = shared.share_ttl() {
                    let back = shared.lock().shares.retire_old(ttl);
                    apply(&shared, back.into_iter().map(Op::GiveBack).collect(), &mut retry).await;
                }
            }
            _ = renewals.tick() => {
                renew(&shared).await;
                if !retry.is_empty() {
                    let again = std::mem::take(&mut retry)
                        .into_iter()
                        .map(Op::Budget)
                        .collect();
                    apply(&shared, again, &mut retry).await;
                }
            }
        }
    }
    // Dropped: one last try for what Redis did not take.
    if !retry.is_empty() {
        let again = std::mem::take(&mut retry)
            .into_iter()
            .map(Op::Budget)
            .collect();
        apply(&shared, again, &mut retry).await;
    }
}

/// Applies a batch in one call of the finish script (one round trip and one
/// script run for every request that ended since the last batch).
async fn apply(shared: &Shared, mut batch: Vec<Op>, retry: &mut Vec<BudgetOp>) {
    if batch.iter().any(|op| matches!(op, Op::Flush(_))) {
        let back = shared.lock().shares.retire_old(Duration::ZERO);
        batch.extend(back.into_iter().map(Op::GiveBack));
    }
    let mut flushed = Vec::new();
    let mut call = shared.scripts.finish.prepare_invoke();
    call.arg(ACCOUNT_IDLE_MS).arg(shared.lease_ms);
    let mut budgets = Vec::new();
    let mut rates = 0;
    for op in batch {
        match op {
            Op::Rate {
                subjects,
                hold,
                estimated,
                actual,
            } => {
                rates += 1;
                call.arg("r")
                    .arg(subjects.len())
                    .arg(hold.map(|h| shared.hold_id(h)).unwrap_or_default())
                    .arg(estimated)
                    .arg(actual.map(|a| a.to_string()).unwrap_or_default());
                for (bucket, flight, counts) in &subjects {
                    call.key(bucket).key(flight);
                    call.arg(if *counts { "1" } else { "0" });
                }
            }
            Op::Budget(op) => {
                call.arg("b")
                    .arg(op.accounts.len())
                    .arg(op.hold.map(|h| shared.hold_id(h)).unwrap_or_default())
                    .arg(op.held)
                    .arg(op.actual.map(|a| a.to_string()).unwrap_or_default());
                for a in &op.accounts {
                    call.key(a).key(leases_key(a));
                }
                budgets.push(op);
            }
            Op::GiveBack(g) => {
                rates += 1;
                let limit = |l: Option<u32>| l.map_or(-1, i64::from);
                call.arg("g")
                    .arg(&g.name)
                    .arg(g.was)
                    .arg(g.now)
                    .arg(g.requests)
                    .arg(g.tokens)
                    .arg(limit(g.limits.rpm))
                    .arg(limit(g.limits.tpm));
                call.key(&g.bucket).key(&g.flight);
            }
            Op::Flush(done) => flushed.push(done),
        }
    }
    // Last, so that their answers follow the budget ops'.
    let syncs = shared.lock().shares.syncs();
    for s in &syncs {
        call.arg("s")
            .arg(&s.name)
            .arg(s.was)
            .arg(s.now)
            .arg(s.spend);
        call.key(&s.account).key(&s.leases);
    }
    if rates > 0 || !budgets.is_empty() || !syncs.is_empty() {
        let mut con = shared.redis.clone();
        match call.invoke_async::<Vec<String>>(&mut con).await {
            Ok(spend) => {
                // Two answers per account of a budget op, then three per
                // slab sync.
                let at = 2 * budgets.iter().map(|op| op.budgets.len()).sum::<usize>();
                let (pairs, triples) = spend.split_at(at.min(spend.len()));
                let mut pairs = pairs.chunks(2);
                let mut crossed = Vec::new();
                let mut cross = |budget: &Arc<Budget>, start: i64, answer: &[String]| {
                    if let [Some(before), Some(after)] = [
                        integer(&answer[0]),
                        integer(answer.get(1).map_or("", String::as_str)),
                    ] {
                        crossed.extend(thresholds_crossed(budget, start, before, after));
                    }
                };
                for op in &budgets {
                    for (budget, start) in &op.budgets {
                        let Some(pair) = pairs.next() else { break };
                        cross(budget, *start, pair);
                    }
                }
                let mut open = shared.lock();
                for (s, answer) in syncs.iter().zip(triples.chunks(3)) {
                    cross(&s.budget.0, s.budget.1, answer);
                    let held = answer.get(2).is_some_and(|h| h == "1");
                    open.shares.synced(s, Some(held));
                }
                drop(open);
                if !crossed.is_empty() {
                    (shared.alerts)(crossed);
                }
            }
            Err(e) => {
                let mut open = shared.lock();
                for s in &syncs {
                    open.shares.synced(s, None);
                }
                drop(open);
                // Settlements are retried: the spend must be counted. Rate
                // releases are not: a slot left behind lapses with its
                // lease, and tokens not given back only make the limit
                // stricter.
                shared.failed("finish", &e);
                for op in budgets {
                    if retry.len() < MAX_RETRIES_QUEUED {
                        retry.push(op);
                    } else {
                        tracing::error!("a budget settlement was dropped: too many wait for Redis");
                    }
                }
            }
        }
    }
    shared
        .retries_queued
        .store(retry.len() as u64, Ordering::Relaxed);
    for done in flushed {
        let _ = done.send(());
    }
}

/// Renews the lease of every hold open on this node (and puts back those
/// Redis lost).
async fn renew(shared: &Shared) {
    let mut held: Vec<(String, String, &'static str, String, i64)> = Vec::new();
    {
        let open = shared.lock();
        for (flights, ids) in &open.slots {
            for f in flights {
                for &id in ids {
                    held.push((f.clone(), f.clone(), "f", shared.hold_id(id), 0));
                }
            }
        }
        for ((accounts, amount), ids) in &open.holds {
            for a in accounts {
                for &id in ids {
                    held.push((a.clone(), leases_key(a), "b", shared.hold_id(id), *amount));
                }
            }
        }
        let (slots, slabs) = open.shares.leases();
        for (set, name, slots) in slots {
            held.push((set.clone(), set, "s", name, slots));
        }
        for (account, leases, name, amount) in slabs {
            held.push((account, leases, "b", name, amount));
        }
    }
    for chunk in held.chunks(RENEW_CHUNK) {
        let mut call = shared.scripts.renew.prepare_invoke();
        call.arg(shared.lease_ms).arg(ACCOUNT_IDLE_MS);
        for (a, b, kind, name, amount) in chunk {
            call.key(a).key(b).arg(*kind).arg(name).arg(*amount);
        }
        let mut con = shared.redis.clone();
        if let Err(e) = call.invoke_async::<i64>(&mut con).await {
            shared.failed("renew", &e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(input_e6: i128, price: i64, max: Option<i64>) -> CostBound {
        CostBound {
            input_e6,
            output_price: price,
            requested_output: None,
            model_max_output: max,
        }
    }

    /// What the script computes in the auto case, done here in exact
    /// integers from the plan, so that the plan's split is checked against
    /// `fit` without Redis (the integration tests run the script itself).
    fn held_by_plan(plan: &Plan, rem: i64) -> Option<i64> {
        match *plan {
            Plan::Fixed(held) => (held <= rem).then_some(held),
            Plan::Auto {
                a,
                b,
                price,
                max,
                held_at_max,
            } => {
                let r = i128::from(rem) - i128::from(a);
                let (affordable, m) = if r >= 0 {
                    let x = r * 1_000_000 + i128::from(b);
                    (x / i128::from(price), x % i128::from(price))
                } else {
                    (0, 0)
                };
                if affordable >= i128::from(max) {
                    (held_at_max <= rem).then_some(held_at_max)
                } else if affordable == 0 {
                    None
                } else {
                    Some(rem - i64::try_from(m / 1_000_000).ok()?)
                }
            }
        }
    }

    #[test]
    fn the_plan_holds_what_fit_holds() {
        let budget = Arc::new(Budget {
            scope: keyward_core::BudgetScope::Key("key_a".into()),
            amount_micros: keyward_core::Micros(0),
            period: keyward_core::Period::None,
            soft_thresholds: vec![],
        });
        let budgets = [(budget, 0)];
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..100_000 {
            let input_e6 = i128::from(next(50_000_000_000));
            let price = 1 + next(100_000_000) as i64;
            let max = (next(3) > 0).then(|| next(10_000) as i64);
            // Small budgets, and a few huge ones with cheap output.
            let (rem, price) = if next(10) == 0 {
                (next(EXACT as u64) as i64, 1 + next(500) as i64)
            } else {
                (next(2_000_000) as i64 - 1_000, price)
            };
            let b = bound(input_e6, price, max);
            let plan = Plan::of(b).expect("in range");
            let want = fit(&budgets, &[rem], b).ok().map(|(held, _)| held);
            assert_eq!(
                held_by_plan(&plan, rem),
                want,
                "{input_e6} {price} {max:?} {rem}"
            );
        }
    }
}
