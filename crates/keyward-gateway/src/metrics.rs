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

/// A value that goes up and down.
#[derive(Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Adds one; returns the value before.
    pub fn inc(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed)
    }
    /// Subtracts one.
    pub fn dec(&self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Upper bounds of [`Histogram`]'s buckets, µs: a loopback round trip is
/// tens of µs, a cross-zone one a millisecond or two.
const BUCKETS_US: [u64; 10] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000, 1_000_000,
];

/// How long something took, in fixed buckets (a Prometheus histogram).
#[derive(Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last is over the
    /// highest bound.
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    /// Counts one observation.
    pub fn observe(&self, took: std::time::Duration) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        let i = BUCKETS_US.partition_point(|&bound| bound < us);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Appends it in Prometheus' text format, in seconds.
    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            match BUCKETS_US.get(i) {
                Some(us) => {
                    let le = *us as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Why an unauthenticated `POST /leaks/github` was refused (a metric label;
/// never the caller's text).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeakRejection {
    /// A signature header is absent.
    MissingSignature,
    /// The key identifier names no known GitHub key.
    UnknownKey,
    /// The signature is not base64 DER.
    MalformedSignature,
    /// The signature does not match the body.
    BadSignature,
    /// The body is over the endpoint's cap.
    TooLarge,
    /// The body broke off or timed out.
    Unreadable,
    /// Signed, but not the feedback array.
    MalformedBody,
    /// Too many reports were being read at once.
    Busy,
}

impl LeakRejection {
    /// Every reason, in the order of [`Metrics::leak_rejections`].
    pub const ALL: [LeakRejection; 8] = [
        Self::MissingSignature,
        Self::UnknownKey,
        Self::MalformedSignature,
        Self::BadSignature,
        Self::TooLarge,
        Self::Unreadable,
        Self::MalformedBody,
        Self::Busy,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingSignature => "missing_signature",
            Self::UnknownKey => "unknown_key",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::TooLarge => "too_large",
            Self::Unreadable => "unreadable",
            Self::MalformedBody => "malformed_body",
            Self::Busy => "busy",
        }
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
    /// Client connections open now (the cap counts these).
    pub connections_open: Gauge,
    /// Connections closed at once because the cap was reached.
    pub connections_refused: Counter,
    /// Refused GitHub leak reports, by [`LeakRejection`].
    pub leak_rejections: [Counter; LeakRejection::ALL.len()],
    /// Failed calls to the shared counters' Redis (cluster mode): unreachable,
    /// timed out, or a script error.
    pub redis_errors: Counter,
    /// Round trips of the shared counters' check-and-charge script (the one
    /// on a request's path).
    pub redis_round_trip: Histogram,
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

    /// Counts a refused GitHub leak report.
    pub fn leak_rejected(&self, reason: LeakRejection) {
        self.leak_rejections[reason as usize].inc();
    }

    /// Refused GitHub leak reports, all reasons.
    pub fn leak_rejections_total(&self) -> u64 {
        self.leak_rejections.iter().map(Counter::get).sum()
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
        counter(
            "keyward_connections_refused_total",
            "Connections closed at once because the connection cap was reached.",
            &[("", self.connections_refused.get())],
        );
        counter(
            "keyward_redis_errors_total",
            "Failed calls to the shared counters' Redis (unreachable, timed out, script error).",
            &[("", self.redis_errors.get())],
        );
        let labels: Vec<String> = LeakRejection::ALL
            .iter()
            .map(|r| format!("{{reason=\"{}\"}}", r.as_str()))
            .collect();
        let rejections: Vec<(&str, u64)> = labels
            .iter()
            .zip(&self.leak_rejections)
            .map(|(l, c)| (l.as_str(), c.get()))
            .collect();
        counter(
            "keyward_leak_reports_rejected_total",
            "Refused GitHub leak reports (unsigned, badly signed, oversized, malformed, or over the concurrency bound).",
            &rejections,
        );
        let _ = writeln!(
            out,
            "# HELP keyward_connections_open Client connections open.\n# TYPE keyward_connections_open gauge\nkeyward_connections_open {}",
            self.connections_open.get()
        );
        let pending = self
            .usage_queued
            .get()
            .saturating_sub(self.usage_written.get());
        let _ = writeln!(
            out,
            "# HELP keyward_usage_events_pending Usage events waiting to be written.\n# TYPE keyward_usage_events_pending gauge\nkeyward_usage_events_pending {pending}"
        );
        if self.redis_round_trip.count() > 0 {
            self.redis_round_trip.render(
                &mut out,
                "keyward_redis_round_trip_seconds",
                "Round trips of the shared counters' check-and-charge script, on a request's path.",
            );
        }
        out
    }
}
