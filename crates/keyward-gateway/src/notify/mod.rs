//! Notifications: events (a key leaked, a budget threshold crossed, a new-device
//! sign-in) delivered to the webhooks and email recipients whose scope matches.
//!
//! Delivery goes through a durable outbox (the store's `deliveries`): `publish`
//! queues one delivery per matching channel and wakes the worker; the worker
//! claims due deliveries (a lease, so two nodes never send the same attempt at
//! once), sends them, and records each attempt, retrying failures with
//! exponential backoff. Delivery is at least once; every attempt of an event
//! carries the same `Keyward-Event-Id`, so a receiver that remembers the ids it
//! has processed handles each event exactly once.

pub mod email;
pub mod webhook;

use crate::sealing::SealingKey;
use keyward_core::{Clock, DeliveryId, EventId, OrgId, ProjectId, Secret, WebhookId};
use keyward_store::{
    AttemptResult, Channel, Delivery, DeliveryStatus, NewDelivery, SharedStore, StoreResult,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// How deliveries are retried.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Wait before the second attempt; doubled after each failure.
    pub initial_backoff: Duration,
    /// Longest wait between attempts.
    pub max_backoff: Duration,
    /// Attempts before a delivery is marked failed.
    pub max_attempts: i64,
    /// How often the worker looks for due deliveries when not woken.
    pub poll_interval: Duration,
    /// Time allowed for one attempt (a webhook's response, an SMTP exchange).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(3_600),
            max_attempts: 12,
            poll_interval: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after `attempts` failed attempts.
    pub fn backoff(&self, attempts: i64) -> Duration {
        let factor = 1u32 << attempts.clamp(0, 20) as u32;
        self.initial_backoff
            .saturating_mul(factor)
            .min(self.max_backoff)
    }
}

/// Notification settings.
#[derive(Clone, Debug, Default)]
pub struct NotifySettings {
    /// Outgoing email; `None` disables email (deliveries to recipients fail and
    /// are logged as such).
    pub smtp: Option<email::SmtpSettings>,
    /// Retries.
    pub retry: RetryPolicy,
}

/// Something that happened that people should hear about.
#[derive(Clone, Debug)]
pub struct Event {
    /// Stable id: every delivery and retry of this event carries it.
    pub id: EventId,
    /// e.g. `key.leaked`.
    pub event_type: String,
    /// When, ms.
    pub created_at: i64,
    /// The organization it concerns, for channel scopes.
    pub org_id: Option<OrgId>,
    /// The project it concerns, for channel scopes.
    pub project_id: Option<ProjectId>,
    /// Event-specific detail (never secrets).
    pub data: Value,
    /// One-line summary, the email subject.
    pub summary: String,
}

impl Event {
    /// The JSON body webhooks receive.
    pub fn payload(&self) -> Value {
        json!({
            "id": self.id,
            "type": self.event_type,
            "created_at": self.created_at,
            "summary": self.summary,
            "data": self.data,
        })
    }
}

/// Publishes events and runs the delivery worker. Shared by leak response and,
/// later, budget and sign-in alerts.
pub struct Notifier {
    store: SharedStore,
    clock: Clock,
    settings: NotifySettings,
    /// Opens the stored webhook signing secrets.
    sealing: SealingKey,
    wake: Notify,
    http: reqwest::Client,
}

/// Deliveries claimed per round.
const CLAIM_BATCH: i64 = 32;
/// How long a claimed delivery is reserved for the claimer.
const LEASE_MS: i64 = 120_000;

impl Notifier {
    /// A notifier; call [`Notifier::spawn_worker`] to start delivering.
    /// `sealing` is the key the webhooks' secrets are sealed with.
    pub fn new(
        store: SharedStore,
        clock: Clock,
        settings: NotifySettings,
        sealing: SealingKey,
    ) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.retry.attempt_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Arc::new(Self {
            store,
            clock,
            settings,
            sealing,
            wake: Notify::new(),
            http,
        })
    }

    /// A new webhook's signing secret as it is to be stored (sealed).
    pub fn seal_webhook_secret(&self, id: &WebhookId, secret: &str) -> Secret {
        self.sealing.seal_webhook_secret(id, secret)
    }

    /// Queues `event` for every matching webhook and recipient. Publishing the
    /// same event id twice queues nothing new.
    pub async fn publish(&self, event: &Event) -> StoreResult<u64> {
        let org = event.org_id.as_ref();
        let project = event.project_id.as_ref();
        let mut queued = Vec::new();
        for w in self.store.list_webhooks().await? {
            if w.scope.matches(&event.event_type, org, project) {
                queued.push((Channel::Webhook, w.id.to_string()));
            }
        }
        for r in self.store.list_recipients().await? {
            if r.scope.matches(&event.event_type, org, project) {
                queued.push((Channel::Email, r.id.to_string()));
            }
        }
        self.enqueue(event, queued).await
    }

    /// Sends a message that carries a single-use secret to one address now,
    /// in the background, outside the outbox (see [`email::send_now`]).
    /// Without SMTP the message is not sent and a warning says so.
    pub fn send_secret_mail(self: &Arc<Self>, to: String, subject: String, text: String) {
        let Some(smtp) = self.settings.smtp.clone() else {
            tracing::warn!(
                "email is not configured (no SMTP server): a sign-in email was not sent"
            );
            return;
        };
        let timeout = self.settings.retry.attempt_timeout;
        tokio::spawn(async move {
            if let Err(f) = email::send_now(&smtp, &to, &subject, text, timeout).await {
                tracing::warn!(reason = %f.reason, "a sign-in email could not be sent");
            }
        });
    }

    /// Queues `event` for one channel only (a test delivery).
    pub async fn publish_to(
        &self,
        event: &Event,
        channel: Channel,
        target: &str,
    ) -> StoreResult<u64> {
        self.enqueue(event, vec![(channel, target.to_owned())])
            .await
    }

    async fn enqueue(&self, event: &Event, targets: Vec<(Channel, String)>) -> StoreResult<u64> {
        if targets.is_empty() {
            return Ok(0);
        }
        let payload = event.payload();
        let deliveries: Vec<NewDelivery> = targets
            .into_iter()
            .map(|(channel, target_id)| NewDelivery {
                id: DeliveryId::generate(),
                channel,
                target_id,
                event_id: event.id.clone(),
                event_type: event.event_type.clone(),
                payload: payload.clone(),
                created_at: self.clock.now_ms(),
            })
            .collect();
        let n = self.store.enqueue_deliveries(&deliveries).await?;
        self.wake.notify_one();
        Ok(n)
    }

    /// Starts the delivery worker on the current runtime.
    pub fn spawn_worker(self: &Arc<Self>) {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let busy = match me.deliver_due().await {
                    Ok(n) => n > 0,
                    Err(e) => {
                        tracing::error!(error = %e, "notification worker: storage failed");
                        false
                    }
                };
                if !busy {
                    tokio::select! {
                        () = me.wake.notified() => {}
                        () = tokio::time::sleep(me.settings.retry.poll_interval) => {}
                    }
                }
            }
        });
    }

    /// One round: claims due deliveries, sends them concurrently, records the
    /// outcomes. Returns how many were attempted.
    pub async fn deliver_due(&self) -> StoreResult<usize> {
        let now = self.clock.now_ms();
        let due = self
            .store
            .claim_due_deliveries(now, now + LEASE_MS, CLAIM_BATCH)
            .await?;
        let n = due.len();
        let attempts = due.into_iter().map(|d| self.attempt(d));
        for result in futures_util::future::join_all(attempts).await {
            self.store.record_attempt(&result).await?;
        }
        Ok(n)
    }

    async fn attempt(&self, d: Delivery) -> AttemptResult {
        let outcome = match d.channel {
            Channel::Webhook => self.send_webhook(&d).await,
            Channel::Email => self.send_email(&d).await,
        };
        let at = self.clock.now_ms();
        let attempts = d.attempts + 1;
        let (status, next, code, error) = match outcome {
            Ok(code) => (DeliveryStatus::Delivered, at, code, None),
            Err(Failure { status, reason }) => {
                let give_up = attempts >= self.settings.retry.max_attempts || status == Some(410);
                tracing::warn!(delivery = %d.id, event = %d.event_id, attempts, reason = %reason, "notification attempt failed");
                let backoff = self.settings.retry.backoff(attempts - 1).as_millis() as i64;
                (
                    if give_up {
                        DeliveryStatus::Failed
                    } else {
                        DeliveryStatus::Pending
                    },
                    at + backoff,
                    status,
                    Some(reason),
                )
            }
        };
        AttemptResult {
            id: d.id,
            status,
            next_attempt_at: next,
            last_status: code.map(i64::from),
            last_error: error,
            at,
        }
    }

    async fn send_webhook(&self, d: &Delivery) -> Result<Option<u16>, Failure> {
        let hooks = self
            .store
            .list_webhooks()
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let Some(hook) = hooks.into_iter().find(|w| w.id.as_str() == d.target_id) else {
            return Err(Failure {
                status: Some(410),
                reason: "the webhook was deleted".into(),
            });
        };
        let secret = self
            .sealing
            .open_webhook_secret(&hook)
            .map_err(|e| Failure::new(format!("webhook signing secret: {e}")))?;
        webhook::send(&self.http, &hook, &secret, d, self.clock.now_ms()).await
    }

    async fn send_email(&self, d: &Delivery) -> Result<Option<u16>, Failure> {
        let Some(smtp) = &self.settings.smtp else {
            return Err(Failure::new(
                "email is not configured (no SMTP server)".into(),
            ));
        };
        let recipients = self
            .store
            .list_recipients()
            .await
            .map_err(|e| Failure::new(e.to_string()))?;
        let Some(r) = recipients
            .into_iter()
            .find(|r| r.id.as_str() == d.target_id)
        else {
            return Err(Failure {
                status: Some(410),
                reason: "the recipient was deleted".into(),
            });
        };
        email::send(smtp, &r.address, d, self.settings.retry.attempt_timeout)
            .await
            .map(|()| None)
    }
}

/// A failed attempt: the HTTP status if one came back, and why (no secrets).
#[derive(Debug)]
pub struct Failure {
    /// HTTP status received, if any.
    pub status: Option<u16>,
    /// What went wrong.
    pub reason: String,
}

impl Failure {
    fn new(reason: String) -> Self {
        Self {
            status: None,
            reason,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let p = RetryPolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            ..Default::default()
        };
        let waits: Vec<u64> = (0..6).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
    }
}
