//! Rate limits per key and per project: requests per minute, tokens per minute,
//! and requests in flight.
//!
//! Each minute limit is a token bucket that refills continuously (capacity L,
//! L per 60 s), which is what OpenAI's `x-ratelimit-*` headers describe. All the
//! subjects of one request (its key and its project) are checked first and only
//! then charged, under one lock, so a refusal by one limit consumes nothing of the
//! others. A [`Permit`] that is dropped before [`Permit::commit`] gives everything
//! back; a committed one gives back only its in-flight slot and the difference
//! between estimated and actual tokens.

pub use crate::rate_headers::{format_reset, write_headers, Allowance, RateHeaders, RateLimited};
use crate::FastMap as HashMap;
use keyward_core::{KeyId, ProjectId};
use std::sync::Mutex;

const MINUTE_MS: f64 = 60_000.0;

/// Who a limit applies to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Subject {
    /// One key.
    Key(KeyId),
    /// All keys of a project.
    Project(ProjectId),
}

/// The limits of one subject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute.
    pub tpm: Option<u32>,
    /// Requests in flight.
    pub max_concurrent: Option<u32>,
}

impl Limits {
    /// Whether no limit is set (such a subject is not counted).
    pub fn is_empty(&self) -> bool {
        self.rpm.is_none() && self.tpm.is_none() && self.max_concurrent.is_none()
    }
}

/// A token bucket: its level when last refilled, and when that was.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Bucket {
    pub(crate) level: f64,
    pub(crate) at_ms: i64,
}

impl Bucket {
    fn refill(&mut self, capacity: u32, now_ms: i64) {
        let rate = f64::from(capacity) / MINUTE_MS;
        let elapsed = (now_ms - self.at_ms).max(0) as f64;
        self.level = (self.level + elapsed * rate).min(f64::from(capacity));
        self.at_ms = now_ms.max(self.at_ms);
    }
}

/// One subject's buckets and requests in flight.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub(crate) requests: Option<Bucket>,
    pub(crate) tokens: Option<Bucket>,
    pub(crate) in_flight: u32,
}

impl State {
    /// Whether forgetting this subject changes nothing: no request in flight
    /// and every bucket full again, whatever its capacity now. A bucket at
    /// level `l >= 0` refills any capacity within a minute; one below zero (a
    /// request used more tokens than the limit) within `1 - l` minutes, since
    /// a capacity is at least 1. A forgotten subject comes back with full
    /// buckets, as it would have found them.
    fn is_idle(&self, now_ms: i64) -> bool {
        let full = |b: &Option<Bucket>| {
            b.is_none_or(|b| (now_ms - b.at_ms) as f64 >= MINUTE_MS * (1.0 - b.level.min(0.0)))
        };
        self.in_flight == 0 && full(&self.requests) && full(&self.tokens)
    }
}

/// Below this many subjects the map is never swept.
const SWEEP_FLOOR: usize = 1024;

/// Every subject's buckets.
#[derive(Default)]
pub(crate) struct Subjects {
    map: HashMap<Subject, State>,
    /// The size at which the map is next swept: twice what the last sweep
    /// kept, so sweeping costs O(1) per request, amortized.
    next_sweep: usize,
}

/// All rate-limit state of this node (inside [`crate::limits::LocalCounters`]).
#[derive(Default)]
pub(crate) struct RateLimiter {
    state: Mutex<Subjects>,
}

impl RateLimiter {
    /// How many subjects are held.
    pub(crate) fn len(&self) -> usize {
        self.lock().map.len()
    }

    /// The subjects, locked: [`Subjects::check`] and [`Subjects::charge`]
    /// under one guard are one atomic check-and-charge.
    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, Subjects> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Subjects {
    /// Checks every subject's limits (refilling their buckets) without
    /// charging anything; sweeps out idle subjects when the map has doubled.
    pub(crate) fn check(
        &mut self,
        subjects: &[(Subject, Limits)],
        estimated_tokens: i64,
        now_ms: i64,
    ) -> Result<(), RateLimited> {
        if self.map.len() >= self.next_sweep {
            self.map.retain(|_, st| !st.is_idle(now_ms));
            self.next_sweep = (self.map.len() * 2).max(SWEEP_FLOOR);
        }
        let map = &mut self.map;
        for (subject, limits) in subjects {
            let st = map.entry(subject.clone()).or_default();
            refill(st, limits, now_ms);
            within(subject, limits, st, estimated_tokens, now_ms)?;
        }
        Ok(())
    }

    /// Charges one request, `estimated_tokens` tokens and one in-flight slot
    /// to every subject; [`Subjects::check`] must have passed under the same
    /// guard.
    pub(crate) fn charge(
        &mut self,
        subjects: &[(Subject, Limits)],
        estimated_tokens: i64,
        now_ms: i64,
    ) -> RateHeaders {
        let estimated = estimated_tokens.max(0) as f64;
        let map = &mut self.map;
        let mut headers = RateHeaders::default();
        for (subject, limits) in subjects {
            let st = map.get_mut(subject).expect("inserted above");
            if let Some(b) = st.requests.as_mut() {
                b.level -= 1.0;
            }
            if let Some(b) = st.tokens.as_mut() {
                b.level -= estimated;
            }
            st.in_flight += 1;
            tell(&mut headers, st, limits, now_ms);
        }
        headers
    }
}

/// Checks one subject's refilled state against its limits, in the order every
/// implementation checks them: requests per minute, tokens per minute, then
/// requests in flight; the refusal names the first limit reached.
pub(crate) fn within(
    subject: &Subject,
    limits: &Limits,
    st: &State,
    estimated_tokens: i64,
    now_ms: i64,
) -> Result<(), RateLimited> {
    let estimated = estimated_tokens.max(0) as f64;
    let name = match subject {
        Subject::Key(_) => "key",
        Subject::Project(_) => "project",
    };
    if let (Some(rpm), Some(b)) = (limits.rpm, st.requests) {
        if b.level < 1.0 {
            let wait = ((1.0 - b.level) * MINUTE_MS / f64::from(rpm)).ceil() as i64;
            return Err(refusal(
                format!("Rate limit reached for this {name}: {rpm} requests per minute."),
                wait,
                st,
                limits,
                now_ms,
            ));
        }
    }
    if let (Some(tpm), Some(b)) = (limits.tpm, st.tokens) {
        let need = estimated.min(f64::from(tpm));
        if b.level < need {
            let wait = ((need - b.level) * MINUTE_MS / f64::from(tpm)).ceil() as i64;
            return Err(refusal(format!("Rate limit reached for this {name}: {tpm} tokens per minute (this request needs up to {estimated_tokens})."), wait, st, limits, now_ms));
        }
    }
    if let Some(max) = limits.max_concurrent {
        if st.in_flight >= max {
            return Err(refusal(
                format!("Too many concurrent requests for this {name}: at most {max} at once."),
                1_000,
                st,
                limits,
                now_ms,
            ));
        }
    }
    Ok(())
}

/// Adds one charged subject's allowances to what the client is told: the
/// key's own limits are what its holder is told about; a project's when the
/// key has none (subjects come key first).
pub(crate) fn tell(headers: &mut RateHeaders, st: &State, limits: &Limits, now_ms: i64) {
    let h = report(st, limits, now_ms);
    if headers.requests.is_none() {
        headers.requests = h.requests;
    }
    if headers.tokens.is_none() {
        headers.tokens = h.tokens;
    }
}

impl RateLimiter {
    /// See [`Counters::release_rate`].
    pub(crate) fn release(
        &self,
        charged: &[(Subject, Limits)],
        estimated_tokens: i64,
        actual_tokens: Option<i64>,
    ) {
        let mut guard = self.lock();
        for (subject, _) in charged {
            let Some(st) = guard.map.get_mut(subject) else {
                continue;
            };
            st.in_flight = st.in_flight.saturating_sub(1);
            match actual_tokens {
                // Refused before forwarding: give everything back.
                None => {
                    if let Some(b) = st.requests.as_mut() {
                        b.level += 1.0;
                    }
                    if let Some(b) = st.tokens.as_mut() {
                        b.level += estimated_tokens as f64;
                    }
                }
                // Completed: correct the estimate to what was really used.
                Some(actual) => {
                    if let Some(b) = st.tokens.as_mut() {
                        b.level += (estimated_tokens - actual) as f64;
                    }
                }
            }
        }
    }
}

fn refill(st: &mut State, limits: &Limits, now_ms: i64) {
    if let Some(rpm) = limits.rpm {
        st.requests
            .get_or_insert(Bucket {
                level: f64::from(rpm),
                at_ms: now_ms,
            })
            .refill(rpm, now_ms);
    }
    if let Some(tpm) = limits.tpm {
        st.tokens
            .get_or_insert(Bucket {
                level: f64::from(tpm),
                at_ms: now_ms,
            })
            .refill(tpm, now_ms);
    }
}

fn allowance(bucket: Option<Bucket>, limit: Option<u32>) -> Option<Allowance> {
    let (b, limit) = (bucket?, limit?);
    let missing = (f64::from(limit) - b.level).max(0.0);
    Some(Allowance {
        limit,
        remaining: b.level.max(0.0).floor() as u32,
        reset_ms: (missing * MINUTE_MS / f64::from(limit)).ceil() as i64,
    })
}

fn report(st: &State, limits: &Limits, _now_ms: i64) -> RateHeaders {
    RateHeaders {
        requests: allowance(st.requests, limits.rpm),
        tokens: allowance(st.tokens, limits.tpm),
    }
}

fn refusal(
    message: String,
    retry_after_ms: i64,
    st: &State,
    limits: &Limits,
    now_ms: i64,
) -> RateLimited {
    RateLimited {
        message,
        retry_after_ms,
        headers: report(st, limits, now_ms),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::counters::{Charge, Counters, LocalCounters, Refusal};
    use crate::limits::held::Permit;
    use futures_util::FutureExt;
    use std::sync::Arc;

    fn limiter() -> Arc<dyn Counters> {
        Arc::new(LocalCounters::default())
    }

    /// Local counters never wait, so their futures are ready at once.
    fn admit_now(
        rl: &Arc<dyn Counters>,
        subjects: &[(Subject, Limits)],
        estimated_tokens: i64,
        now_ms: i64,
    ) -> Result<Permit, RateLimited> {
        let mut subjects = subjects.to_vec();
        subjects.retain(|(_, l)| !l.is_empty());
        let charge = Charge {
            subjects: &subjects,
            estimated_tokens,
            reserve: None,
            now_ms,
        };
        let charged = rl
            .charge(charge)
            .now_or_never()
            .expect("local counters do not wait");
        match charged {
            Ok(c) => Ok(Permit::new(
                rl.clone(),
                subjects,
                estimated_tokens,
                c.headers,
            )),
            Err(Refusal::RateLimited(r)) => Err(r),
            Err(other) => panic!("{other:?}"),
        }
    }

    fn key() -> Subject {
        Subject::Key(KeyId::generate())
    }

    #[test]
    fn requests_per_minute_are_exact_at_the_boundary_and_refill() {
        let rl = limiter();
        let k = key();
        let limits = Limits {
            rpm: Some(3),
            ..Default::default()
        };
        let mut permits = Vec::new();
        for i in 0..3 {
            let mut p = admit_now(&rl, &[(k.clone(), limits)], 0, 0).unwrap();
            assert_eq!(p.headers.requests.unwrap().remaining, 2 - i);
            p.commit();
            permits.push(p);
        }
        let refused = admit_now(&rl, &[(k.clone(), limits)], 0, 0).err().unwrap();
        assert_eq!(refused.retry_after_ms, 20_000);
        assert_eq!(refused.headers.requests.unwrap().remaining, 0);
        // One request's worth refills after 20 s.
        assert!(admit_now(&rl, &[(k.clone(), limits)], 0, 19_999).is_err());
        assert!(admit_now(&rl, &[(k, limits)], 0, 20_000).is_ok());
    }

    #[test]
    fn a_refusal_by_one_limit_consumes_nothing_of_the_others() {
        let rl = limiter();
        let (k, p) = (key(), Subject::Project(ProjectId::generate()));
        let key_limits = Limits {
            rpm: Some(10),
            ..Default::default()
        };
        let project_limits = Limits {
            rpm: Some(1),
            ..Default::default()
        };
        let mut first = admit_now(
            &rl,
            &[(k.clone(), key_limits), (p.clone(), project_limits)],
            0,
            0,
        )
        .unwrap();
        first.commit();
        assert!(admit_now(
            &rl,
            &[(k.clone(), key_limits), (p.clone(), project_limits)],
            0,
            0
        )
        .is_err());
        // The key's own allowance is untouched by the refused request.
        let alone = admit_now(&rl, &[(k, key_limits)], 0, 0).unwrap();
        assert_eq!(alone.headers.requests.unwrap().remaining, 8);
    }

    #[test]
    fn uncommitted_permits_give_everything_back() {
        let rl = limiter();
        let k = key();
        let limits = Limits {
            rpm: Some(1),
            tpm: Some(100),
            max_concurrent: Some(1),
        };
        drop(admit_now(&rl, &[(k.clone(), limits)], 50, 0).unwrap());
        let p = admit_now(&rl, &[(k.clone(), limits)], 50, 0).unwrap();
        assert_eq!(p.headers.tokens.unwrap().remaining, 50);
    }

    #[test]
    fn tokens_are_corrected_to_actual_use_and_concurrency_is_held() {
        let rl = limiter();
        let k = key();
        let limits = Limits {
            tpm: Some(100),
            max_concurrent: Some(1),
            ..Default::default()
        };
        let mut p = admit_now(&rl, &[(k.clone(), limits)], 80, 0).unwrap();
        p.commit();
        let busy = admit_now(&rl, &[(k.clone(), limits)], 1, 0).err().unwrap();
        assert!(busy.message.contains("concurrent"));
        p.finish(30);
        let p = admit_now(&rl, &[(k.clone(), limits)], 70, 0).unwrap();
        assert_eq!(p.headers.tokens.unwrap().remaining, 0);
        drop(p);
        assert!(
            admit_now(&rl, &[(k, limits)], 71, 0).is_err(),
            "70 left after the first request used 30"
        );
    }
}
