//! What the nodes of a cluster tell each other: which cached records a change
//! made stale, over a Redis pub/sub channel.
//!
//! Every node caches keys, sessions, projects, budgets and the listed origins
//! for a short time (`key_cache_ttl`). A change made through one node drops its
//! own copies before it answers (`crate::invalidation`) and is published here,
//! also before it answers, so the other nodes drop theirs about one network
//! round trip later. Decisions:
//! - Pub/sub has no memory: a node that was not subscribed when a message went
//!   out never sees it. So a subscriber drops *all* its caches each time it
//!   (re)subscribes, after subscribing, so nothing falls in between; and the
//!   caches' TTL stays the last resort for a subscriber that is down.
//! - A broken subscription is found by a ping each second (the redis client
//!   does not end the message stream when its socket closes).
//! - A message names ids only, never a secret or a token hash, so Redis and
//!   whoever can read it learn nothing that opens anything. Messages are not
//!   signed (whoever can publish on the channel can also rewrite the shared
//!   counters); what is read is bounded and checked, and a message that does
//!   not parse is logged and ignored.
//! - A publish that fails is logged and counted, and does not fail the change:
//!   the change is already stored, and the other nodes then see it within the
//!   TTL, as without a bus.

use crate::config::RedisSettings;
use futures_util::StreamExt;
use keyward_core::{KeyId, OrgId, ProjectId, SessionId, UserId};
use serde::{Deserialize, Serialize};
use std::fmt::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a change made stale. Applying one drops cached copies only; the next
/// request reads storage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// Keys changed (revoked, deleted, rotated, leaked, leak cleared): every
    /// cached secret of each, each as the parent of tokens, and the origins
    /// keys list.
    Keys(Vec<KeyId>),
    /// One session ended.
    Session(SessionId),
    /// Every cached session of a user: they ended, or the user changed (role,
    /// disabled, second factors) and the cached copy is stale.
    User(UserId),
    /// A project's limits changed.
    Project(ProjectId),
    /// The budget of a scope (an organization, project or key id) was set or
    /// removed.
    Budget(String),
    /// The set of origins keys list changed.
    Origins,
    /// Everything: a node that may have missed messages.
    Everything,
}

/// Ids in one message; more are sent as several messages.
const MAX_IDS: usize = 256;
/// Bytes of one message read; longer ones are ignored. `MAX_IDS` ids of at most
/// 70 bytes each, quoted, fit.
const MAX_MESSAGE_BYTES: usize = 32 * 1024;
/// How long a publish or a readiness ping may take.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(1);
/// How often a subscription is checked with a ping.
const SUBSCRIPTION_CHECK: Duration = Duration::from_secs(1);
/// Longest wait between two attempts to subscribe.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A message on the wire: JSON, the sender's node id, what kind of change,
/// and the ids it names.
#[derive(Serialize, Deserialize, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
struct Message {
    node: String,
    kind: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ids: Vec<String>,
}

impl Invalidation {
    /// The messages that carry this invalidation from `node`.
    fn messages(&self, node: &str) -> Vec<Message> {
        let one = |kind: &str, ids: Vec<String>| Message {
            node: node.to_owned(),
            kind: kind.to_owned(),
            ids,
        };
        match self {
            Invalidation::Keys(ids) => ids
                .chunks(MAX_IDS)
                .map(|chunk| one("keys", chunk.iter().map(|i| i.to_string()).collect()))
                .collect(),
            Invalidation::Session(id) => vec![one("session", vec![id.to_string()])],
            Invalidation::User(id) => vec![one("user", vec![id.to_string()])],
            Invalidation::Project(id) => vec![one("project", vec![id.to_string()])],
            Invalidation::Budget(scope) => vec![one("budget", vec![scope.clone()])],
            Invalidation::Origins => vec![one("origins", vec![])],
            Invalidation::Everything => vec![one("everything", vec![])],
        }
    }
}

/// Why a message read from the channel was ignored (for the log; it never
/// holds the message).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MalformedMessage {
    /// Over [`MAX_MESSAGE_BYTES`].
    #[error("the message is over {MAX_MESSAGE_BYTES} bytes")]
    TooLong,
    /// Not JSON of the expected shape.
    #[error("the message is not an invalidation")]
    Shape,
    /// A kind this version does not know.
    #[error("unknown kind of invalidation")]
    UnknownKind,
    /// An id that is not one of the kind named, or the wrong number of ids.
    #[error("the ids do not fit the kind of invalidation")]
    Ids,
}

/// Reads a message: who sent it, and what it invalidates.
fn decode(payload: &[u8]) -> Result<(String, Invalidation), MalformedMessage> {
    if payload.len() > MAX_MESSAGE_BYTES {
        return Err(MalformedMessage::TooLong);
    }
    let m: Message = serde_json::from_slice(payload).map_err(|_| MalformedMessage::Shape)?;
    if m.ids.len() > MAX_IDS || m.node.len() > 64 {
        return Err(MalformedMessage::Shape);
    }
    fn single(ids: &[String]) -> Result<&str, MalformedMessage> {
        match ids {
            [one] => Ok(one.as_str()),
            _ => Err(MalformedMessage::Ids),
        }
    }
    let none = |ids: &[String]| {
        if ids.is_empty() {
            Ok(())
        } else {
            Err(MalformedMessage::Ids)
        }
    };
    let what = match m.kind.as_str() {
        "keys" if !m.ids.is_empty() => Invalidation::Keys(
            m.ids
                .iter()
                .map(|i| KeyId::parse(i).ok_or(MalformedMessage::Ids))
                .collect::<Result<_, _>>()?,
        ),
        "keys" => return Err(MalformedMessage::Ids),
        "session" => {
            Invalidation::Session(SessionId::parse(single(&m.ids)?).ok_or(MalformedMessage::Ids)?)
        }
        "user" => Invalidation::User(UserId::parse(single(&m.ids)?).ok_or(MalformedMessage::Ids)?),
        "project" => {
            Invalidation::Project(ProjectId::parse(single(&m.ids)?).ok_or(MalformedMessage::Ids)?)
        }
        "budget" => {
            let scope = single(&m.ids)?;
            let known = OrgId::parse(scope).is_some()
                || ProjectId::parse(scope).is_some()
                || KeyId::parse(scope).is_some();
            if !known {
                return Err(MalformedMessage::Ids);
            }
            Invalidation::Budget(scope.to_owned())
        }
        "origins" => {
            none(&m.ids)?;
            Invalidation::Origins
        }
        "everything" => {
            none(&m.ids)?;
            Invalidation::Everything
        }
        _ => return Err(MalformedMessage::UnknownKind),
    };
    Ok((m.node, what))
}

/// The Redis URL could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The URL does not parse. The message never repeats the URL: it may hold
    /// a password.
    #[error("the Redis URL is not a valid redis:// or rediss:// URL")]
    InvalidUrl,
}

/// How a dependency answered a readiness check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// It answered.
    Up,
    /// It did not (the reason is in the log).
    Down,
}

/// This node's end of the bus: publishes invalidations and, once
/// [`Bus::subscribe`] is called, applies the other nodes'. Without Redis
/// (one node) it does nothing.
pub struct Bus {
    redis: Option<Arc<RedisBus>>,
}

struct RedisBus {
    client: redis::Client,
    publisher: redis::aio::ConnectionManager,
    channel: String,
    /// Tells this node's own messages apart (it applied them before sending).
    node: String,
    subscribed: AtomicBool,
    counts: BusCounts,
    /// This node's messages on their way round (payload, when published),
    /// oldest first: each comes back to its sender like to every node, and
    /// the time it took is the bus's lag, on one clock.
    in_transit: std::sync::Mutex<std::collections::VecDeque<(String, std::time::Instant)>>,
}

/// This node's messages whose return is awaited; older ones are forgotten
/// (a message lost with a subscription never comes back).
const MAX_IN_TRANSIT: usize = 64;

/// The bus's counters, rendered with the server's metrics.
#[derive(Default)]
struct BusCounts {
    published: AtomicU64,
    publish_failures: AtomicU64,
    received: AtomicU64,
    malformed: AtomicU64,
    subscriptions: AtomicU64,
    /// From publishing a message to receiving it back.
    lag: crate::metrics::Histogram,
}

impl Bus {
    /// A bus on `settings`' Redis, or none. Connects lazily: a node starts
    /// while Redis is down, and `/readyz` says so.
    pub fn new(settings: Option<&RedisSettings>) -> Result<Self, ClusterError> {
        let Some(settings) = settings else {
            return Ok(Self { redis: None });
        };
        let client =
            redis::Client::open(settings.url.expose()).map_err(|_| ClusterError::InvalidUrl)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(ROUND_TRIP_LIMIT))
            .set_response_timeout(Some(ROUND_TRIP_LIMIT))
            .set_number_of_retries(1);
        let publisher = client
            .get_connection_manager_lazy(config)
            .map_err(|_| ClusterError::InvalidUrl)?;
        Ok(Self {
            redis: Some(Arc::new(RedisBus {
                client,
                publisher,
                channel: format!("{}invalidations", settings.prefix),
                node: keyward_core::base62::random(16),
                subscribed: AtomicBool::new(false),
                counts: BusCounts::default(),
                in_transit: Default::default(),
            })),
        })
    }

    /// Whether this node shares a Redis with others.
    pub fn is_configured(&self) -> bool {
        self.redis.is_some()
    }

    /// Tells the other nodes; returns once Redis has taken the message (or
    /// failed to, which is logged and counted: the others then see the change
    /// within their caches' TTL).
    pub async fn publish(&self, what: &Invalidation) {
        let Some(bus) = &self.redis else { return };
        let messages = what.messages(&bus.node);
        let total = messages.len() as u64;
        for (sent_before, message) in (0u64..).zip(messages) {
            let payload = match serde_json::to_string(&message) {
                Ok(p) => p,
                Err(_) => continue, // strings only: cannot fail
            };
            let mut conn = bus.publisher.clone();
            if bus.subscribed.load(Ordering::Relaxed) {
                let mut in_transit = bus.lock_in_transit();
                if in_transit.len() == MAX_IN_TRANSIT {
                    in_transit.pop_front();
                }
                in_transit.push_back((payload.clone(), std::time::Instant::now()));
            }
            let sent = tokio::time::timeout(
                ROUND_TRIP_LIMIT,
                redis::cmd("PUBLISH")
                    .arg(&bus.channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn),
            )
            .await;
            match sent {
                Ok(Ok(_)) => {
                    bus.counts.published.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, kind = message.kind, "publishing an invalidation failed; other nodes will see the change within their cache TTL");
                }
                Err(_) => {
                    tracing::warn!(
                        kind = message.kind,
                        "publishing an invalidation timed out; other nodes will see the change within their cache TTL"
                    );
                }
            }
            // Redis is failing: the rest would wait as long and fail too.
            bus.counts
                .publish_failures
                .fetch_add(total - sent_before, Ordering::Relaxed);
            return;
        }
    }

    /// Starts applying the other nodes' invalidations with `apply`, until
    /// `stop` turns true. Each (re)subscription applies
    /// [`Invalidation::Everything`] first.
    pub fn subscribe(
        &self,
        apply: Arc<dyn Fn(&Invalidation) + Send + Sync>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let Some(bus) = self.redis.clone() else {
            return;
        };
        tokio::spawn(bus.listen(apply, stop));
    }

    /// Redis's state for `/readyz`: `None` without Redis; `Down` unless a
    /// ping answers and the subscription is up.
    pub async fn health(&self) -> Option<Health> {
        let bus = self.redis.as_ref()?;
        let mut conn = bus.publisher.clone();
        let ping = tokio::time::timeout(
            ROUND_TRIP_LIMIT,
            redis::cmd("PING").query_async::<String>(&mut conn),
        )
        .await;
        let up = match ping {
            Ok(Ok(_)) => bus.subscribed.load(Ordering::Acquire),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "readiness: Redis did not answer a ping");
                false
            }
            Err(_) => {
                tracing::warn!("readiness: Redis did not answer a ping in time");
                false
            }
        };
        Some(if up { Health::Up } else { Health::Down })
    }

    /// Whether the subscription is up (tests wait for it).
    pub fn is_subscribed(&self) -> bool {
        self.redis
            .as_ref()
            .is_some_and(|b| b.subscribed.load(Ordering::Acquire))
    }

    /// How many times this node has subscribed (tests see a resubscription).
    pub fn subscriptions(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |b| b.counts.subscriptions.load(Ordering::Acquire))
    }

    /// How many invalidations from other nodes were applied.
    pub fn received(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |b| b.counts.received.load(Ordering::Acquire))
    }

    /// Appends the bus's metrics in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        let Some(bus) = &self.redis else { return };
        let c = &bus.counts;
        let lines = [
            (
                "keyward_invalidations_published_total",
                "Invalidation messages published.",
                &c.published,
            ),
            (
                "keyward_invalidations_publish_failures_total",
                "Invalidation messages that could not be published.",
                &c.publish_failures,
            ),
            (
                "keyward_invalidations_received_total",
                "Invalidation messages applied from other nodes.",
                &c.received,
            ),
            (
                "keyward_invalidations_malformed_total",
                "Messages on the invalidation channel that were ignored as malformed.",
                &c.malformed,
            ),
            (
                "keyward_invalidation_subscriptions_total",
                "Subscriptions to the invalidation channel (each drops every cache).",
                &c.subscriptions,
            ),
        ];
        for (name, help, value) in lines {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        c.lag.render(
            out,
            "keyward_invalidation_lag_seconds",
            "From publishing an invalidation to receiving it back from Redis (what another node waits, less the network between them).",
        );
        let _ = writeln!(
            out,
            "# HELP keyward_invalidation_subscribed Whether the invalidation subscription is up.\n# TYPE keyward_invalidation_subscribed gauge\nkeyward_invalidation_subscribed {}",
            u8::from(bus.subscribed.load(Ordering::Relaxed))
        );
    }
}

impl RedisBus {
    async fn listen(
        self: Arc<Self>,
        apply: Arc<dyn Fn(&Invalidation) + Send + Sync>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut failing_since_logged = false;
        loop {
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                ended = self.subscription(&*apply) => match ended {
                    Ok(()) => {
                        tracing::warn!("the invalidation subscription was lost; subscribing again");
                        backoff = Duration::from_millis(100);
                        failing_since_logged = false;
                    }
                    Err(e) if !failing_since_logged => {
                        tracing::warn!(error = %e, "cannot subscribe to invalidations on Redis; trying again (caches hold entries at most their TTL meanwhile)");
                        failing_since_logged = true;
                    }
                    Err(_) => {}
                },
            }
            self.subscribed.store(false, Ordering::Release);
            tokio::select! {
                _ = stop.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One subscription, from connecting to its loss: `Err` when it could not
    /// be set up, `Ok` when it broke afterwards.
    async fn subscription(
        &self,
        apply: &(dyn Fn(&Invalidation) + Send + Sync),
    ) -> redis::RedisResult<()> {
        let connect = tokio::time::timeout(ROUND_TRIP_LIMIT, self.client.get_async_pubsub());
        let pubsub = match connect.await {
            Ok(p) => p?,
            Err(_) => {
                return Err(redis::RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )))
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        sink.subscribe(&self.channel).await?;
        // Subscribed first, then everything dropped: a message sent in between
        // is received, and anything missed before is read again from storage.
        apply(&Invalidation::Everything);
        self.subscribed.store(true, Ordering::Release);
        self.counts.subscriptions.fetch_add(1, Ordering::AcqRel);
        tracing::info!("subscribed to invalidations; dropped every cache");
        let mut check = tokio::time::interval(SUBSCRIPTION_CHECK);
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else { return Ok(()) };
                    self.receive(message.get_payload_bytes(), apply);
                }
                _ = check.tick() => {
                    let pong = tokio::time::timeout(ROUND_TRIP_LIMIT, sink.ping::<redis::Value>()).await;
                    if !matches!(pong, Ok(Ok(_))) {
                        return Ok(());
                    }
                }
            }
        }
    }

    fn lock_in_transit(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::VecDeque<(String, std::time::Instant)>> {
        self.in_transit.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One of this node's messages came back: how long it took.
    fn returned(&self, payload: &[u8]) {
        let mut in_transit = self.lock_in_transit();
        // Messages come back in the order Redis took them; those before this
        // one were lost with a subscription (or, rarely, published at the
        // same moment in the other order: one observation is skipped).
        while let Some((sent, at)) = in_transit.pop_front() {
            if sent.as_bytes() == payload {
                self.counts.lag.observe(at.elapsed());
                return;
            }
        }
    }

    fn receive(&self, payload: &[u8], apply: &(dyn Fn(&Invalidation) + Send + Sync)) {
        match decode(payload) {
            Ok((node, _)) if node == self.node => self.returned(payload),
            Ok((_, what)) => {
                apply(&what);
                self.counts.received.fetch_add(1, Ordering::AcqRel);
            }
            Err(e) => {
                self.counts.malformed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(reason = %e, bytes = payload.len(), "ignored a malformed message on the invalidation channel");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(what: Invalidation) {
        let messages = what.messages("node1");
        assert_eq!(messages.len(), 1);
        let bytes = serde_json::to_vec(&messages[0]).unwrap();
        assert_eq!(decode(&bytes), Ok(("node1".to_owned(), what)));
    }

    #[test]
    fn every_invalidation_survives_the_wire() {
        round_trip(Invalidation::Keys(vec![
            KeyId::generate(),
            KeyId::generate(),
        ]));
        round_trip(Invalidation::Session(SessionId::generate()));
        round_trip(Invalidation::User(UserId::generate()));
        round_trip(Invalidation::Project(ProjectId::generate()));
        round_trip(Invalidation::Budget(OrgId::generate().to_string()));
        round_trip(Invalidation::Budget(KeyId::generate().to_string()));
        round_trip(Invalidation::Origins);
        round_trip(Invalidation::Everything);
    }

    #[test]
    fn many_keys_travel_in_several_bounded_messages() {
        let ids: Vec<KeyId> = (0..MAX_IDS * 2 + 1).map(|_| KeyId::generate()).collect();
        let messages = Invalidation::Keys(ids.clone()).messages("n");
        assert_eq!(messages.len(), 3);
        let mut back = Vec::new();
        for m in messages {
            let bytes = serde_json::to_vec(&m).unwrap();
            assert!(bytes.len() <= MAX_MESSAGE_BYTES);
            match decode(&bytes).unwrap().1 {
                Invalidation::Keys(chunk) => back.extend(chunk),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(back, ids);
    }

    #[test]
    fn malformed_messages_are_refused_with_a_reason() {
        let key = KeyId::generate().to_string();
        let cases: &[(&[u8], MalformedMessage)] = &[
            (b"not json", MalformedMessage::Shape),
            (br#"{"node":"n","kind":"keys"}"#, MalformedMessage::Ids),
            (
                br#"{"node":"n","kind":"keys","ids":["usr_abc"]}"#,
                MalformedMessage::Ids,
            ),
            (
                br#"{"node":"n","kind":"session","ids":[]}"#,
                MalformedMessage::Ids,
            ),
            (
                br#"{"node":"n","kind":"budget","ids":["../etc"]}"#,
                MalformedMessage::Ids,
            ),
            (
                br#"{"node":"n","kind":"origins","ids":["x"]}"#,
                MalformedMessage::Ids,
            ),
            (
                br#"{"node":"n","kind":"reboot"}"#,
                MalformedMessage::UnknownKind,
            ),
            (
                br#"{"node":"n","kind":"origins","extra":1}"#,
                MalformedMessage::Shape,
            ),
        ];
        for (payload, why) in cases {
            assert_eq!(
                decode(payload).map(|_| ()),
                Err(*why),
                "{}",
                String::from_utf8_lossy(payload)
            );
        }
        let too_many = format!(
            r#"{{"node":"n","kind":"keys","ids":[{}]}}"#,
            vec![format!("{key:?}"); MAX_IDS + 1].join(",")
        );
        assert_eq!(
            decode(too_many.as_bytes()).map(|_| ()),
            Err(MalformedMessage::Shape)
        );
        let huge = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert_eq!(decode(&huge).map(|_| ()), Err(MalformedMessage::TooLong));
    }
}
