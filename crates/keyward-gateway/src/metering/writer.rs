//! Usage events leave the request path through a channel and are written in
//! batches by one task. Nothing is dropped: a failed write is retried, and
//! [`UsageWriter::flush`] (called at shutdown) returns only once everything sent
//! before it is stored.
//!
//! The writer does not wait on the channel: it wakes on its interval, when
//! `max_events` are waiting, or when a flush is asked for, and then drains the
//! channel. A request thread that queues an event therefore never wakes another
//! thread (a cross-thread wake-up per request was a measurable part of the
//! gateway's CPU per request; docs/BENCHMARKS.md history, `git log -p`).
//!
//! # What a crash loses
//!
//! Events wait in memory until their batch is committed, so `kill -9` (or a
//! crash) of one node loses **the events answered in the last
//! [`BatchPolicy::interval`] (25 ms by default), plus those answered while the
//! batch in progress was being written** (a write of a second's worth of
//! events at 10 k req/s takes a few ms on SQLite), and budgets can be overspent
//! by what those events cost. While the database is unreachable the writer
//! retries and events accumulate: then everything pending is at risk
//! (`keyward_usage_events_pending`). SIGTERM loses nothing ([`UsageWriter::flush`]).
//!
//! # A bounded buffer
//!
//! At most [`BatchPolicy::max_pending`] events wait: beyond it
//! [`UsageWriter::backlog_full`] is true and admission refuses every request
//! (`usage_backlog`, 503) until the writer catches up, so an outage of the
//! database costs memory up to a bound and then availability, never a
//! request served uncounted. Keys already in the cache keep being served
//! until then (for at most the cache's bound, see `key_cache`).
//!
//! Why not a local journal written before answering: a `write(2)` and a
//! serialisation per request on the worker thread (the gateway spends about
//! 25-40 µs of CPU per request, docs/BENCHMARKS.md history, `git log -p`), and without an event id in
//! the store a replay cannot tell a batch committed just before the crash from
//! one that was not. The interval was 200 ms. At 25 ms the writer commits at
//! most 40 batches a second, on the main runtime, not on the worker threads;
//! measured (debug build, 8 connections, one worker, a shared 2-core machine):
//! 630 and 704 µs of server CPU per request at 200 ms against 738 and 680 at
//! 25 ms, within that machine's noise. To be re-measured with the release
//! gateway benchmark.

use crate::config::BatchPolicy;
use crate::limits::Backlog;
use crate::metrics::Metrics;
use crate::FastMap as HashMap;
use keyward_core::KeyId;
use keyward_store::{SharedStore, UsageEvent};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, oneshot, Notify};

enum Msg {
    Event(Box<UsageEvent>),
    Flush(oneshot::Sender<()>),
}

/// Handle for sending usage events to the writer task.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<Msg>,
    /// Events queued and not yet taken by the writer.
    waiting: Arc<AtomicUsize>,
    /// Events of the batch being retried (taken from the channel, not
    /// stored); 0 while writes succeed.
    retrying: Arc<AtomicUsize>,
    /// Wakes the writer before its interval is up.
    wake: Arc<Notify>,
    max_events: usize,
    max_pending: usize,
    metrics: Arc<Metrics>,
}

impl UsageWriter {
    /// Starts the writer task on the current runtime.
    pub fn spawn(store: SharedStore, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let writer = Self {
            tx,
            waiting: Arc::default(),
            retrying: Arc::default(),
            wake: Arc::default(),
            max_events: policy.max_events.max(1),
            max_pending: policy.max_pending.max(1),
            metrics: metrics.clone(),
        };
        tokio::spawn(run(
            store,
            policy,
            rx,
            Pending {
                waiting: writer.waiting.clone(),
                retrying: writer.retrying.clone(),
                max: writer.max_pending,
            },
            writer.wake.clone(),
            metrics,
        ));
        writer
    }

    /// Queues an event. Never blocks the request; the channel is unbounded on
    /// purpose, because dropping a usage event is worse than holding it in memory
    /// while the database is briefly slow.
    pub fn record(&self, event: UsageEvent) {
        self.metrics.usage_queued.inc();
        // Counted before it is sent: the writer may take it (and count it down)
        // before `send` returns, which underflowed the count when it was
        // counted after.
        let waiting = self.waiting.fetch_add(1, Ordering::Relaxed) + 1;
        if self.tx.send(Msg::Event(Box::new(event))).is_err() {
            self.waiting.fetch_sub(1, Ordering::Relaxed);
            tracing::error!("usage writer has stopped; a usage event could not be queued");
            return;
        }
        if waiting == self.max_events {
            self.wake.notify_one();
        }
    }

    /// Whether writes succeed, fail, or failed long enough that
    /// [`BatchPolicy::max_pending`] events wait. Two loads, no write: it is
    /// asked on every request.
    pub fn backlog(&self) -> Backlog {
        let retrying = self.retrying.load(Ordering::Relaxed);
        // A write that hangs (not fails) lets the queue grow too.
        if self.waiting.load(Ordering::Relaxed) + retrying >= self.max_pending {
            Backlog::Full
        } else if retrying > 0 {
            Backlog::Stalled
        } else {
            Backlog::Flowing
        }
    }

    /// Waits until every event queued before this call is stored.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            self.wake.notify_one();
            let _ = done.await;
        }
    }
}

#[async_trait::async_trait]
impl crate::limits::UnwrittenSpend for UsageWriter {
    async fn flush(&self) {
        UsageWriter::flush(self).await;
    }

    fn backlog(&self) -> Backlog {
        UsageWriter::backlog(self)
    }
}

/// What the writer reports of the events it has not stored.
struct Pending {
    /// Queued, not yet taken.
    waiting: Arc<AtomicUsize>,
    /// Taken, in a batch being retried.
    retrying: Arc<AtomicUsize>,
    /// [`BatchPolicy::max_pending`].
    max: usize,
}

async fn run(
    store: SharedStore,
    policy: BatchPolicy,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    pending: Pending,
    wake: Arc<Notify>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<UsageEvent> = Vec::new();
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = wake.notified() => {}
        }
        loop {
            match rx.try_recv() {
                Ok(Msg::Event(e)) => {
                    pending.waiting.fetch_sub(1, Ordering::Relaxed);
                    batch.push(*e);
                    if batch.len() >= policy.max_events {
                        write(&store, &mut batch, &pending, &metrics).await;
                    }
                }
                Ok(Msg::Flush(ack)) => {
                    write(&store, &mut batch, &pending, &metrics).await;
                    let _ = ack.send(());
                }
                Err(TryRecvError::Empty) => {
                    write(&store, &mut batch, &pending, &metrics).await;
                    break;
                }
                Err(TryRecvError::Disconnected) => {
                    write(&store, &mut batch, &pending, &metrics).await;
                    return;
                }
            }
        }
    }
}

/// Writes the batch, retrying with backoff until it is stored.
async fn write(
    store: &SharedStore,
    batch: &mut Vec<UsageEvent>,
    pending: &Pending,
    metrics: &Metrics,
) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    let mut told_full = false;
    loop {
        match store.insert_usage(batch).await {
            Ok(()) => break,
            Err(e) => {
                metrics.usage_write_failures.inc();
                pending.retrying.store(batch.len(), Ordering::Relaxed);
                tracing::warn!(error = %e, events = batch.len(), "writing usage failed; retrying");
                let waiting = pending.waiting.load(Ordering::Relaxed) + batch.len();
                if waiting >= pending.max && !told_full {
                    told_full = true;
                    tracing::error!(
                        events = waiting,
                        "the usage buffer is full: requests are refused (usage_backlog) until usage can be stored"
                    );
                }
                tokio::time::sleep(delay).await;
                // Short: service returns soon after the database does.
                delay = (delay * 2).min(Duration::from_secs(1));
            }
        }
    }
    if pending.retrying.swap(0, Ordering::Relaxed) > 0 {
        tracing::info!(events = batch.len(), "usage is being stored again");
    }
    let mut last_used: HashMap<KeyId, i64> = HashMap::default();
    for e in batch.iter() {
        let t = last_used.entry(e.key_id.clone()).or_insert(e.at);
        *t = (*t).max(e.at);
    }
    let last_used: Vec<_> = last_used.into_iter().collect();
    if let Err(e) = store.touch_keys(&last_used).await {
        tracing::warn!(error = %e, "updating keys' last-used time failed");
    }
    metrics.usage_written.add(batch.len() as u64);
    batch.clear();
}
