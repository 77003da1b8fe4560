//! Usage events leave the request path through a channel and are written in
//! batches by one task. Nothing is dropped: a failed write is retried, and
//! [`UsageWriter::flush`] (called at shutdown) returns only once everything sent
//! before it is stored.

use crate::metrics::Metrics;
use keyward_core::KeyId;
use keyward_store::{SharedStore, UsageEvent};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

enum Msg {
    Event(Box<UsageEvent>),
    Flush(oneshot::Sender<()>),
}

/// Handle for sending usage events to the writer task.
#[derive(Clone)]
pub struct UsageWriter {
    tx: mpsc::UnboundedSender<Msg>,
    metrics: Arc<Metrics>,
}

/// How the writer batches.
#[derive(Clone, Copy, Debug)]
pub struct BatchPolicy {
    /// Write at least this often while events wait.
    pub interval: Duration,
    /// Write as soon as this many events wait.
    pub max_events: usize,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            interval: Duration::from_millis(200),
            max_events: 2_000,
        }
    }
}

impl UsageWriter {
    /// Starts the writer task.
    pub fn spawn(store: SharedStore, policy: BatchPolicy, metrics: Arc<Metrics>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, policy, rx, metrics.clone()));
        Self { tx, metrics }
    }

    /// Queues an event. Never blocks the request; the channel is unbounded on
    /// purpose, because dropping a usage event is worse than holding it in memory
    /// while the database is briefly slow.
    pub fn record(&self, event: UsageEvent) {
        self.metrics.usage_queued.inc();
        if self.tx.send(Msg::Event(Box::new(event))).is_err() {
            tracing::error!("usage writer has stopped; a usage event could not be queued");
        }
    }

    /// Waits until every event queued before this call is stored.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(
    store: SharedStore,
    policy: BatchPolicy,
    mut rx: mpsc::UnboundedReceiver<Msg>,
    metrics: Arc<Metrics>,
) {
    let mut batch: Vec<UsageEvent> = Vec::new();
    let mut tick = tokio::time::interval(policy.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(Msg::Event(e)) => {
                    batch.push(*e);
                    if batch.len() >= policy.max_events {
                        write(&store, &mut batch, &metrics).await;
                    }
                }
                Some(Msg::Flush(ack)) => {
                    write(&store, &mut batch, &metrics).await;
                    let _ = ack.send(());
                }
                None => {
                    write(&store, &mut batch, &metrics).await;
                    return;
                }
            },
            _ = tick.tick() => write(&store, &mut batch, &metrics).await,
        }
    }
}

/// Writes the batch, retrying with backoff until it is stored.
async fn write(store: &SharedStore, batch: &mut Vec<UsageEvent>, metrics: &Metrics) {
    if batch.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(50);
    loop {
        match store.insert_usage(batch).await {
            Ok(()) => break,
            Err(e) => {
                metrics.usage_write_failures.inc();
                tracing::warn!(error = %e, events = batch.len(), "writing usage failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
    let mut last_used: HashMap<KeyId, i64> = HashMap::new();
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
