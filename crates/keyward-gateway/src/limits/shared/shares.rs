//! Shares: parts of the shared limits a node charges by itself, so that most
//! requests cost no Redis round trip at all.
//!
//! When the charge script finds every limit and budget of a request far from
//! its end, it hands the node, in the same call, a share of each: up to 1,024
//! requests and 1,024 requests' worth of tokens of a subject's buckets, up to
//! 1,024 in-flight slots (one member `<hold>/s~<slots>` of the in-flight set's
//! `:s` set, counted by the charge script with the requests' own and leased
//! like them), and a slab of up to 1,024 times the request's hold of each
//! budget (a budget hold of its own, `<hold>/b~<amount>`, leased and renewed
//! like any hold). A share is at most 1/64 of what was left, and none is
//! granted unless every part of it is at least a few requests' worth: near a
//! limit every request goes to Redis and is decided there, one by one, as
//! without shares. (1,024: a share outlasts the round trip that replaces it
//! at a node's full rate, so about 2 % of requests reach Redis at 17,000 a
//! second; 64 let 20 % through.)
//!
//! Requests whose subjects and budgets all have a live share are charged from
//! them in this process, under the lock the open holds use, with the same
//! arithmetic ([`fit`] on what the slabs have free): nothing a share covers
//! was not first taken from the shared counters, so a share never lets a
//! limit or a budget be exceeded. What it costs is timing: for at most the
//! share's life (`ttl`, 500 ms by default) another node may be refused what
//! this node holds unused, at most 1/64 of what was left per node. Then the
//! release task gives back what is unused (requests and tokens to their
//! buckets, within the limits; slots out of the in-flight set; the slab's
//! free amount off the account's reservations), and the next request that
//! needs Redis asks for a new share.
//!
//! Settlements of requests charged from a slab add their cost to the slab's
//! pending spend; the release task moves it into the account's spend, and
//! the slab's registered amount down by as much, in one `'s'` op of the
//! finish script per slab every sweep (100 ms), however many requests ended
//! (so Redis's spend lags storage's by no more than that, which
//! reconciliation allows for). Rate releases of
//! such requests go back into the share. A share ends once retired and every
//! request charged from it ended.
//!
//! The `x-ratelimit-*` headers of a request charged from a share tell the
//! bucket's level when the share was granted plus what the share has left:
//! what the node knows, not other nodes' use since.

use super::{GiveBack, SlabSync};
use crate::limits::budgets::{fit, CostBound, PeriodBudgets};
use crate::limits::counters::Charged;
use crate::limits::rate::{tell, Bucket, Limits, RateHeaders, State, Subject};
use keyward_core::Budget;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A node's shares; see the module's documentation. Lives in the lock of the
/// open holds.
#[derive(Default)]
pub(super) struct Shares {
    /// Per bucket key, its shares: older (retired) ones first, the live one
    /// last.
    rate: HashMap<String, Vec<RateShare>>,
    /// Per account key, its slabs, in the same order.
    slabs: HashMap<String, Vec<Slab>>,
    /// Requests charged from shares and not yet released, by the buckets
    /// charged (as the open holds count theirs: such requests are
    /// interchangeable).
    local_rate: HashMap<Vec<String>, u32>,
    /// The same for budget holds, by the accounts and the amount held.
    local_budget: HashMap<(Vec<String>, i64), u32>,
}

/// A subject's share.
struct RateShare {
    limits: Limits,
    flight: String,
    born: Instant,
    /// Unused requests and tokens (not checked for a limit that is unset).
    requests: f64,
    tokens: f64,
    /// Its slots: the name of their member (`<hold>/s`, in the in-flight
    /// set's `:s` set), how many it registers, how many are in use.
    slot_name: String,
    slots: u32,
    in_use: u32,
    /// The bucket's levels after the grant (for the headers).
    levels: (Option<f64>, Option<f64>),
    /// Requests charged from it and not released yet.
    out: u32,
    retired: bool,
}

/// A budget's slab.
struct Slab {
    /// Its member's name in the lease set (before `~<amount>`).
    name: String,
    leases: String,
    budget: (Arc<Budget>, i64),
    born: Instant,
    /// The amount its member holds in Redis.
    registered: i64,
    /// Of it: free, and spent by settled requests but not yet added to the
    /// account's spend; the rest is held by requests in flight.
    free: i64,
    pending: i64,
    out: u32,
    retired: bool,
    /// Redis no longer held it (its lease ran out while Redis was out of
    /// reach, or Redis restarted): nothing more is charged from it.
    lapsed: bool,
}

/// What a grant gave one subject.
pub(super) struct RateGrant {
    pub bucket: String,
    pub flight: String,
    pub limits: Limits,
    pub requests: f64,
    pub tokens: f64,
    pub slot_name: String,
    pub slots: u32,
    pub levels: (Option<f64>, Option<f64>),
}

/// What a grant gave one budget.
pub(super) struct SlabGrant {
    pub account: String,
    pub name: String,
    pub budget: (Arc<Budget>, i64),
    pub amount: i64,
}

/// Whether a share of `limits`, granted at `born`, may still be charged.
fn live(born: Instant, retired: bool, ttl: Duration) -> bool {
    !retired && born.elapsed() < ttl
}

impl Shares {
    /// Charges a request from this node's shares when they cover every
    /// subject and budget of it; `None` sends it to Redis.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn charge(
        &mut self,
        ttl: Duration,
        subjects: &[(Subject, Limits)],
        buckets: &[String],
        budgets: &PeriodBudgets,
        accounts: &[String],
        bound: Option<CostBound>,
        estimated: i64,
        now_ms: i64,
    ) -> Option<Charged> {
        let est = estimated.max(0) as f64;
        for ((_, limits), bucket) in subjects.iter().zip(buckets) {
            let s = self.rate.get(bucket)?.last()?;
            if !live(s.born, s.retired, ttl)
                || s.limits != *limits
                || (limits.rpm.is_some() && s.requests < 1.0)
                || (limits.tpm.is_some() && s.tokens < est)
                || (limits.max_concurrent.is_some() && s.in_use >= s.slots)
            {
                return None;
            }
        }
        let mut free = Vec::with_capacity(accounts.len());
        for ((budget, start), account) in budgets.iter().zip(accounts) {
            let s = self.slabs.get(account)?.last()?;
            if !live(s.born, s.retired, ttl)
                || s.lapsed
                || s.budget.1 != *start
                || s.budget.0.amount_micros != budget.amount_micros
            {
                return None;
            }
            free.push(s.free);
        }
        let held = match bound {
            // Only what the request would be held without a share's limit
            // on it: an output cap would depend on the slab, not the budget.
            Some(bound) => match fit(budgets, &free, bound) {
                Ok((held, None)) => held,
                _ => return None,
            },
            None if budgets.is_empty() => 0,
            None => return None,
        };
        let mut headers = RateHeaders::default();
        for ((_, limits), bucket) in subjects.iter().zip(buckets) {
            let Some(s) = self.rate.get_mut(bucket).and_then(|v| v.last_mut()) else {
                continue;
            };
            s.out += 1;
            if limits.rpm.is_some() {
                s.requests -= 1.0;
            }
            if limits.tpm.is_some() {
                s.tokens -= est;
            }
            if limits.max_concurrent.is_some() {
                s.in_use += 1;
            }
            let level = |at: Option<f64>, left: f64| {
                at.map(|level| Bucket {
                    level: level + left,
                    at_ms: now_ms,
                })
            };
            let st = State {
                requests: level(s.levels.0, s.requests),
                tokens: level(s.levels.1, s.tokens),
                in_flight: 0,
            };
            tell(&mut headers, &st, limits, now_ms);
        }
        for account in accounts {
            if let Some(s) = self.slabs.get_mut(account).and_then(|v| v.last_mut()) {
                s.out += 1;
                s.free -= held;
            }
        }
        if !buckets.is_empty() {
            *self.local_rate.entry(buckets.to_vec()).or_default() += 1;
        }
        if !accounts.is_empty() {
            *self
                .local_budget
                .entry((accounts.to_vec(), held))
                .or_default() += 1;
        }
        Some(Charged {
            headers,
            held,
            output_cap: None,
        })
    }

    /// Takes the shares a charge granted; the ones they replace are retired
    /// (what they give back is returned).
    pub(super) fn grant(&mut self, rates: Vec<RateGrant>, slabs: Vec<SlabGrant>) -> Vec<GiveBack> {
        let mut back = Vec::new();
        for g in rates {
            let shares = self.rate.entry(g.bucket.clone()).or_default();
            if let Some(old) = shares.last_mut() {
                back.extend(retire_rate(&g.bucket, old));
            }
            shares.retain(|s| !(s.retired && s.out == 0));
            shares.push(RateShare {
                limits: g.limits,
                flight: g.flight,
                born: Instant::now(),
                requests: g.requests,
                tokens: g.tokens,
                slot_name: g.slot_name,
                slots: g.slots,
                in_use: 0,
                levels: g.levels,
                out: 0,
                retired: false,
            });
        }
        for g in slabs {
            let leases = super::leases_key(&g.account);
            let list = self.slabs.entry(g.account).or_default();
            if let Some(old) = list.last_mut() {
                old.retired = true;
            }
            list.push(Slab {
                name: g.name,
                leases,
                budget: g.budget,
                born: Instant::now(),
                registered: g.amount,
                free: g.amount,
                pending: 0,
                out: 0,
                retired: false,
                lapsed: false,
            });
        }
        back
    }

    /// Takes back a rate release when the request was charged from shares
    /// (`None`: it was charged in Redis). Returns what a share that ended
    /// gives back.
    pub(super) fn release_rate(
        &mut self,
        buckets: &[String],
        estimated: i64,
        actual: Option<i64>,
    ) -> Option<Vec<GiveBack>> {
        take_one(&mut self.local_rate, buckets)?;
        let est = estimated.max(0) as f64;
        let mut back = Vec::new();
        for bucket in buckets {
            let Some(shares) = self.rate.get_mut(bucket) else {
                continue;
            };
            let Some(i) = shares.iter().position(|s| s.out > 0) else {
                continue;
            };
            let s = &mut shares[i];
            s.out -= 1;
            match actual {
                None => {
                    s.requests += 1.0;
                    s.tokens += est;
                }
                Some(actual) => s.tokens += est - actual.max(0) as f64,
            }
            if s.limits.max_concurrent.is_some() && s.in_use > 0 {
                s.in_use -= 1;
            }
            if s.retired && s.out == 0 {
                let mut ended = shares.remove(i);
                back.extend(give_back(bucket, &mut ended));
            }
        }
        Some(back)
    }

    /// Takes back a budget settlement (`actual` set) or release when the hold
    /// was charged from slabs; `None` when it was charged in Redis. The
    /// release task syncs the slab at its next sweep (every 100 ms): one op
    /// per slab, however many requests ended.
    pub(super) fn end_hold(
        &mut self,
        accounts: &[String],
        held: i64,
        actual: Option<i64>,
    ) -> Option<()> {
        let key = (accounts.to_vec(), held);
        take_one(&mut self.local_budget, &key)?;
        for account in accounts {
            let Some(s) = self
                .slabs
                .get_mut(account)
                .and_then(|v| v.iter_mut().find(|s| s.out > 0))
            else {
                continue;
            };
            s.out -= 1;
            match actual {
                Some(cost) => {
                    let cost = cost.max(0);
                    s.free += held - cost;
                    s.pending += cost;
                }
                None => s.free += held,
            }
        }
        Some(())
    }

    /// Retires the shares older than `ttl`; returns what they give back now.
    pub(super) fn retire_old(&mut self, ttl: Duration) -> Vec<GiveBack> {
        let mut back = Vec::new();
        for (bucket, shares) in &mut self.rate {
            for s in shares.iter_mut() {
                if !s.retired && s.born.elapsed() >= ttl {
                    back.extend(retire_rate(bucket, s));
                }
            }
            shares.retain(|s| !(s.retired && s.out == 0));
        }
        self.rate.retain(|_, v| !v.is_empty());
        for slabs in self.slabs.values_mut() {
            for s in slabs.iter_mut() {
                if s.born.elapsed() >= ttl {
                    s.retired = true;
                }
            }
        }
        back
    }

    /// The slab changes for Redis: pending spend, free amounts of retired
    /// slabs, ended slabs. Applied here at once; [`Shares::synced`] undoes a
    /// change Redis did not take.
    pub(super) fn syncs(&mut self) -> Vec<SlabSync> {
        let mut out = Vec::new();
        for (account, slabs) in &mut self.slabs {
            for s in slabs.iter_mut() {
                let freed = if s.retired { s.free } else { 0 };
                if s.pending == 0 && freed == 0 && !(s.retired && s.out == 0) {
                    continue;
                }
                let was = s.registered;
                let now = if s.lapsed {
                    0
                } else {
                    (was - s.pending - freed).max(0)
                };
                out.push(SlabSync {
                    account: account.clone(),
                    leases: s.leases.clone(),
                    name: s.name.clone(),
                    budget: s.budget.clone(),
                    was,
                    now,
                    spend: s.pending,
                    freed,
                });
                s.registered = now;
                s.pending = 0;
                s.free -= freed;
            }
        }
        out
    }

    /// What Redis did with [`Shares::syncs`]: `Some(held)` when applied
    /// (`held`: the slab was still in Redis), `None` when Redis was not
    /// reached (undone, to be sent again).
    pub(super) fn synced(&mut self, sync: &SlabSync, applied: Option<bool>) {
        let Some(slabs) = self.slabs.get_mut(&sync.account) else {
            return;
        };
        let Some(i) = slabs.iter().position(|s| s.name == sync.name) else {
            return;
        };
        let s = &mut slabs[i];
        match applied {
            None => {
                s.registered = sync.was;
                s.pending += sync.spend;
                s.free += sync.freed;
            }
            Some(held) => {
                if !held {
                    s.lapsed = true;
                    s.registered = 0;
                }
                // Ended only once Redis holds nothing of it: it may have
                // been retired (by a new grant) while this sync was on its
                // way, with its free amount not yet given back.
                if s.retired && s.out == 0 && s.pending == 0 && s.registered == 0 {
                    slabs.remove(i);
                }
            }
        }
        if slabs.is_empty() {
            self.slabs.remove(&sync.account);
        }
    }

    /// Every lease shares hold, to renew: slots (their set, member name,
    /// count) and slabs (account, lease set, member name, amount).
    #[allow(clippy::type_complexity)]
    pub(super) fn leases(
        &self,
    ) -> (
        Vec<(String, String, i64)>,
        Vec<(String, String, String, i64)>,
    ) {
        let slots = self
            .rate
            .values()
            .flatten()
            .filter(|s| s.slots > 0)
            .map(|s| {
                (
                    format!("{}:s", s.flight),
                    s.slot_name.clone(),
                    i64::from(s.slots),
                )
            })
            .collect();
        let slabs = self
            .slabs
            .iter()
            .flat_map(|(account, v)| {
                v.iter().filter(|s| !s.lapsed && s.registered > 0).map(|s| {
                    (
                        account.clone(),
                        s.leases.clone(),
                        s.name.clone(),
                        s.registered,
                    )
                })
            })
            .collect();
        (slots, slabs)
    }

    /// Live shares and slabs (for the metrics).
    pub(super) fn count(&self) -> usize {
        self.rate.values().map(Vec::len).sum::<usize>()
            + self.slabs.values().map(Vec::len).sum::<usize>()
    }
}

/// Takes one of the requests counted under `key`.
fn take_one<K, Q>(counts: &mut HashMap<K, u32>, key: &Q) -> Option<()>
where
    K: std::hash::Hash + Eq + std::borrow::Borrow<Q>,
    Q: std::hash::Hash + Eq + ?Sized,
{
    let n = counts.get_mut(key)?;
    *n -= 1;
    if *n == 0 {
        counts.remove(key);
    }
    Some(())
}

/// Retires a share: what it has unused goes back now.
fn retire_rate(bucket: &str, s: &mut RateShare) -> Option<GiveBack> {
    if s.retired {
        return None;
    }
    s.retired = true;
    give_back(bucket, s)
}

/// Gives back what a share has unused (everything once no request charged
/// from it is open).
fn give_back(bucket: &str, s: &mut RateShare) -> Option<GiveBack> {
    let back = GiveBack {
        bucket: bucket.to_owned(),
        flight: s.flight.clone(),
        name: s.slot_name.clone(),
        was: s.slots,
        now: s.in_use.min(s.slots),
        requests: s.requests.max(0.0),
        tokens: s.tokens.max(0.0),
        limits: s.limits,
    };
    s.slots = back.now;
    s.requests = 0.0;
    s.tokens = 0.0;
    (back.requests > 0.0 || back.tokens > 0.0 || back.was != back.now).then_some(back)
}
