//! Prometheus metrics, rendered by hand: a handful of counters does not need a
//! metrics framework. Labels never hold key material or key ids.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every metric the server exports.
#[derive(Default)]
pub struct Metrics {
    /// Gateway requests answered, by status class.
    pub responses_2xx: Counter,
    /// 4xx answers.
    pub responses_4xx: Counter,
    /// 5xx answers.
    pub responses_5xx: Counter,
    /// Requests refused before reaching the upstream because of the key.
    pub auth_refusals: Counter,
    /// Upstream connection failures and timeouts.
    pub upstream_failures: Counter,
    /// Usage events queued.
    pub usage_queued: Counter,
    /// Usage events stored.
    pub usage_written: Counter,
    /// Failed usage batch writes (each retried).
    pub usage_write_failures: Counter,
    /// Key lookups served from the cache.
    pub key_cache_hits: Counter,
    /// Key lookups that read storage.
    pub key_cache_misses: Counter,
    /// Requests that used tokens of a model with no price (metered at $0).
    pub unpriced_requests: Counter,
    /// When the last unpriced-model warning was logged, ms since the epoch.
    unpriced_warned_at_ms: AtomicI64,
}

/// Least time between two unpriced-model warnings in the log.
const UNPRICED_WARNING_EVERY_MS: i64 = 60_000;

impl Metrics {
    /// Whether to log an unpriced-model warning now: at most one a minute, so
    /// that a caller naming such a model cannot flood the log. Lock-free.
    pub fn unpriced_warning_due(&self, now_ms: i64) -> bool {
        let last = self.unpriced_warned_at_ms.load(Ordering::Relaxed);
        (last == 0 || now_ms - last >= UNPRICED_WARNING_EVERY_MS)
            && self
                .unpriced_warned_at_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// Counts a response by its status.
    pub fn response(&self, status: u16) {
        match status {
            500.. => self.responses_5xx.inc(),
            400..=499 => self.responses_4xx.inc(),
            _ => self.responses_2xx.inc(),
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "keyward_gateway_responses_total",
            "Gateway responses by status class.",
            &[
                ("{class=\"2xx\"}", self.responses_2xx.get()),
                ("{class=\"4xx\"}", self.responses_4xx.get()),
                ("{class=\"5xx\"}", self.responses_5xx.get()),
            ],
        );
        counter(
            "keyward_gateway_auth_refusals_total",
            "Requests refused because of their key.",
            &[("", self.auth_refusals.get())],
        );
        counter(
            "keyward_upstream_failures_total",
            "Upstream connection failures and timeouts.",
            &[("", self.upstream_failures.get())],
        );
        counter(
            "keyward_usage_events_queued_total",
            "Usage events queued for writing.",
            &[("", self.usage_queued.get())],
        );
        counter(
            "keyward_usage_events_written_total",
            "Usage events stored.",
            &[("", self.usage_written.get())],
        );
        counter(
            "keyward_usage_write_failures_total",
            "Failed usage batch writes (retried).",
            &[("", self.usage_write_failures.get())],
        );
        counter(
            "keyward_key_cache_lookups_total",
            "Key lookups by outcome.",
            &[
                ("{result=\"hit\"}", self.key_cache_hits.get()),
                ("{result=\"miss\"}", self.key_cache_misses.get()),
            ],
        );
        counter(
            "keyward_unpriced_requests_total",
            "Requests that used tokens of a model with no price, metered at $0.",
            &[("", self.unpriced_requests.get())],
        );
        let pending = self
            .usage_queued
            .get()
            .saturating_sub(self.usage_written.get());
        let _ = writeln!(
            out,
            "# HELP keyward_usage_events_pending Usage events waiting to be written.\n# TYPE keyward_usage_events_pending gauge\nkeyward_usage_events_pending {pending}"
        );
        out
    }
}
