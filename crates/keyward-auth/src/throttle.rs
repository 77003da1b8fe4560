//! Failed sign-ins: growing delays per account and per source, spraying
//! detection both ways, and the lockout threshold.
//!
//! How the server uses it: [`Throttle::check`] before checking a password (a
//! throttled attempt costs no argon2 work and answers 429 with the wait),
//! [`Throttle::record_failure`] after a wrong password or code (it says when
//! the account reached the lockout threshold: the caller locks it in storage),
//! [`Throttle::record_success`] after a right one. The account is the email as
//! typed, lowercased, whether or not it exists, so the answers never tell.
//!
//! The counts live behind [`ThrottleCounters`], the same seam as the gateway's
//! spend counters: one node keeps them in memory ([`LocalThrottleCounters`]),
//! a cluster in Redis, so that an attacker gains nothing by spreading guesses
//! over nodes.

use async_trait::async_trait;
use keyward_core::Clock;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Failures recorded under one key.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Failures {
    /// How many, since the last success or since they expired.
    pub count: u32,
    /// When the last one happened, ms.
    pub last_ms: i64,
}

/// Where failure counts are kept. Every operation is atomic per key.
#[async_trait]
pub trait ThrottleCounters: Send + Sync {
    /// Adds a failure to `key`; the count expires `ttl_ms` after the last one.
    async fn add_failure(&self, key: &str, now_ms: i64, ttl_ms: i64) -> Failures;
    /// The failures of `key` still counting at `now_ms`.
    async fn failures(&self, key: &str, now_ms: i64) -> Failures;
    /// Forgets `key`'s failures.
    async fn reset(&self, key: &str);
    /// Adds `member` to the set `key` (members expire `ttl_ms` after being
    /// added); returns how many distinct members it holds.
    async fn add_distinct(&self, key: &str, member: &str, now_ms: i64, ttl_ms: i64) -> usize;
    /// How many distinct members the set `key` holds at `now_ms`.
    async fn distinct(&self, key: &str, now_ms: i64) -> usize;
}

/// The thresholds. Defaults: 5 free failures per account and 20 per source,
/// then delays doubling from 1 s up to 15 min; a source failing on 10 accounts
/// within an hour, or an account failing from 10 sources, is sprayed and
/// waits the full 15 min after each failure; lockout at 100 consecutive
/// failures (NIST SP 800-63B-4's ceiling).
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// Failures on one account before delays start.
    pub free_per_account: u32,
    /// Failures from one source before delays start.
    pub free_per_source: u32,
    /// The first delay, ms; each further failure doubles it.
    pub base_delay_ms: i64,
    /// The longest delay, ms.
    pub max_delay_ms: i64,
    /// How long failures count after the last one, ms.
    pub memory_ms: i64,
    /// Distinct accounts one source may fail on within `spray_window_ms`.
    pub spray_accounts: usize,
    /// Distinct sources that may fail on one account within `spray_window_ms`.
    pub spray_sources: usize,
    /// The spraying window, ms.
    pub spray_window_ms: i64,
    /// Consecutive failures that lock an account.
    pub lockout_after: u32,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        Self {
            free_per_account: 5,
            free_per_source: 20,
            base_delay_ms: 1_000,
            max_delay_ms: 15 * 60_000,
            memory_ms: 24 * 3_600_000,
            spray_accounts: 10,
            spray_sources: 10,
            spray_window_ms: 3_600_000,
            lockout_after: 100,
        }
    }
}

/// Whether an attempt may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Check the credentials.
    Allow,
    /// Refuse without checking; try again after this many seconds.
    Throttled {
        /// Seconds to wait (at least 1).
        retry_after_secs: u64,
    },
}

/// Sign-in throttling over some [`ThrottleCounters`].
#[derive(Clone)]
pub struct Throttle {
    counters: Arc<dyn ThrottleCounters>,
    clock: Clock,
    config: ThrottleConfig,
}

/// The source key: an IPv4 address, or an IPv6 /64 (one host holds a whole
/// /64, so counting single IPv6 addresses would count nothing).
pub fn source_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("src:{v4}"),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => format!("src:{v4}"),
            None => {
                let s = v6.segments();
                format!("src:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
            }
        },
    }
}

impl Throttle {
    /// Throttling with the default thresholds.
    pub fn new(counters: Arc<dyn ThrottleCounters>, clock: Clock) -> Self {
        Self::with_config(counters, clock, ThrottleConfig::default())
    }

    /// Throttling with the given thresholds.
    pub fn with_config(
        counters: Arc<dyn ThrottleCounters>,
        clock: Clock,
        config: ThrottleConfig,
    ) -> Self {
        Self {
            counters,
            clock,
            config,
        }
    }

    fn delay(&self, failures: u32, free: u32) -> i64 {
        if failures <= free {
            return 0;
        }
        let doublings = (failures - free - 1).min(30);
        (self.config.base_delay_ms << doublings).min(self.config.max_delay_ms)
    }

    /// Whether an attempt on `account` from `source` may go ahead now.
    pub async fn check(&self, account: &str, source: IpAddr) -> Decision {
        let now = self.clock.now_ms();
        let c = &self.config;
        let acct_key = format!("acct:{account}");
        let src_key = source_key(source);
        let acct = self.counters.failures(&acct_key, now).await;
        let src = self.counters.failures(&src_key, now).await;
        let mut acct_delay = self.delay(acct.count, c.free_per_account);
        let mut src_delay = self.delay(src.count, c.free_per_source);
        if acct.count > 0
            && self
                .counters
                .distinct(&format!("sources:{account}"), now)
                .await
                >= c.spray_sources
        {
            acct_delay = c.max_delay_ms;
        }
        if src.count > 0
            && self
                .counters
                .distinct(&format!("accounts:{src_key}"), now)
                .await
                >= c.spray_accounts
        {
            src_delay = c.max_delay_ms;
        }
        let until = (acct.last_ms + acct_delay).max(src.last_ms + src_delay);
        if (acct_delay > 0 || src_delay > 0) && until > now {
            let secs = (until - now + 999) / 1_000;
            return Decision::Throttled {
                retry_after_secs: secs.max(1) as u64,
            };
        }
        Decision::Allow
    }

    /// Counts a failed attempt; `true` when the account has now failed
    /// `lockout_after` times in a row (the caller locks it).
    pub async fn record_failure(&self, account: &str, source: IpAddr) -> bool {
        let now = self.clock.now_ms();
        let c = &self.config;
        let src_key = source_key(source);
        let acct = self
            .counters
            .add_failure(&format!("acct:{account}"), now, c.memory_ms)
            .await;
        self.counters.add_failure(&src_key, now, c.memory_ms).await;
        self.counters
            .add_distinct(
                &format!("sources:{account}"),
                &src_key,
                now,
                c.spray_window_ms,
            )
            .await;
        self.counters
            .add_distinct(
                &format!("accounts:{src_key}"),
                account,
                now,
                c.spray_window_ms,
            )
            .await;
        acct.count >= c.lockout_after
    }

    /// A right password or code: the account's consecutive failures end.
    /// The source's count stays: one success between guesses on other
    /// accounts must not wipe a sprayer's record.
    pub async fn record_success(&self, account: &str, _source: IpAddr) {
        self.counters.reset(&format!("acct:{account}")).await;
    }
}

#[derive(Default)]
struct Entries {
    failures: HashMap<String, (Failures, i64)>,
    sets: HashMap<String, HashMap<String, i64>>,
    inserts: usize,
}

/// Counters in this process's memory, for a single node. Expired entries are
/// swept every 4,096 writes, so memory stays bounded by recent failures.
#[derive(Default)]
pub struct LocalThrottleCounters {
    entries: Mutex<Entries>,
}

impl LocalThrottleCounters {
    fn sweep(e: &mut Entries, now_ms: i64) {
        e.inserts += 1;
        if !e.inserts.is_multiple_of(4_096) {
            return;
        }
        e.failures.retain(|_, (_, expires)| *expires > now_ms);
        for set in e.sets.values_mut() {
            set.retain(|_, expires| *expires > now_ms);
        }
        e.sets.retain(|_, set| !set.is_empty());
    }
}

#[async_trait]
impl ThrottleCounters for LocalThrottleCounters {
    async fn add_failure(&self, key: &str, now_ms: i64, ttl_ms: i64) -> Failures {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::sweep(&mut e, now_ms);
        let slot = e
            .failures
            .entry(key.to_owned())
            .or_insert((Failures::default(), 0));
        if slot.1 <= now_ms {
            slot.0 = Failures::default();
        }
        slot.0.count += 1;
        slot.0.last_ms = now_ms;
        slot.1 = now_ms + ttl_ms;
        slot.0
    }

    async fn failures(&self, key: &str, now_ms: i64) -> Failures {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match e.failures.get(key) {
            Some((f, expires)) if *expires > now_ms => *f,
            _ => Failures::default(),
        }
    }

    async fn reset(&self, key: &str) {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.failures.remove(key);
    }

    async fn add_distinct(&self, key: &str, member: &str, now_ms: i64, ttl_ms: i64) -> usize {
        let mut e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        Self::sweep(&mut e, now_ms);
        let set = e.sets.entry(key.to_owned()).or_default();
        set.retain(|_, expires| *expires > now_ms);
        set.insert(member.to_owned(), now_ms + ttl_ms);
        set.len()
    }

    async fn distinct(&self, key: &str, now_ms: i64) -> usize {
        let e = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        e.sets.get(key).map_or(0, |set| {
            set.values().filter(|expires| **expires > now_ms).count()
        })
    }
}
