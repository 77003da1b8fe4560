//! Records of leak response: reports of exposed keys, notification channels
//! (webhooks, email recipients) and the delivery log.

use crate::columns::Columns;
use crate::{StoreError, StoreResult};
use keyward_core::{
    DeliveryId, EventId, KeyId, LeakReportId, OrgId, ProjectId, RecipientId, Secret, WebhookId,
};
use serde::Serialize;

/// What a leak report did to the key it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeakOutcome {
    /// The key was active; this report disabled it.
    Disabled,
    /// The key was already marked leaked.
    AlreadyLeaked,
    /// The key was revoked, expired or suspended: nothing to disable.
    Inactive,
}

impl LeakOutcome {
    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            LeakOutcome::Disabled => "disabled",
            LeakOutcome::AlreadyLeaked => "already_leaked",
            LeakOutcome::Inactive => "inactive",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disabled" => LeakOutcome::Disabled,
            "already_leaked" => LeakOutcome::AlreadyLeaked,
            "inactive" => LeakOutcome::Inactive,
            _ => return None,
        })
    }
}

/// A sighting of one of our keys somewhere it should not be.
#[derive(Clone, Debug)]
pub struct NewLeakReport {
    /// The key found.
    pub key_id: KeyId,
    /// SHA-256 hex of the exposed secret (which of the key's secrets leaked).
    pub token_hash: String,
    /// Who found it: `github`, `api`, `watcher`.
    pub source: String,
    /// Where: a URL, or empty when unknown.
    pub url: String,
    /// Finer position (a path and line, an archive member), or empty.
    pub location: String,
    /// The reporter's name for the token type (GitHub's `type`), or empty.
    pub token_type: String,
    /// What the report did.
    pub outcome: LeakOutcome,
    /// The admin key id, `github`, or `watcher:<name>`.
    pub reporter: String,
    /// When, ms.
    pub reported_at: i64,
}

/// A stored leak report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeakReport {
    /// Its id.
    pub id: LeakReportId,
    /// The key found.
    pub key_id: KeyId,
    /// SHA-256 hex of the exposed secret.
    pub token_hash: String,
    /// Who found it.
    pub source: String,
    /// Where.
    pub url: String,
    /// Finer position.
    pub location: String,
    /// The reporter's token type.
    pub token_type: String,
    /// What the report did.
    pub outcome: LeakOutcome,
    /// Who reported it.
    pub reporter: String,
    /// When, ms.
    pub reported_at: i64,
}

/// Columns selected for a [`LeakReport`].
pub(crate) const LEAK_COLUMNS: &str =
    "id, key_id, token_hash, source, url, location, token_type, outcome, reporter, reported_at";

pub(crate) fn leak_report(row: &impl Columns) -> StoreResult<LeakReport> {
    let outcome = row.text("outcome")?;
    Ok(LeakReport {
        id: LeakReportId::from_trusted(row.text("id")?),
        key_id: KeyId::from_trusted(row.text("key_id")?),
        token_hash: row.text("token_hash")?,
        source: row.text("source")?,
        url: row.text("url")?,
        location: row.text("location")?,
        token_type: row.text("token_type")?,
        outcome: LeakOutcome::parse(&outcome).ok_or_else(|| {
            StoreError::Backend(format!("unknown leak outcome {outcome:?} in storage"))
        })?,
        reporter: row.text("reporter")?,
        reported_at: row.int("reported_at")?,
    })
}

/// Which events a channel receives, and about which keys: a channel with no org
/// and no project hears about every key; one with an org, about that org's keys;
/// one with a project, about that project's keys.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ChannelScope {
    /// Event types, e.g. `key.leaked`; `*` for all.
    pub events: Vec<String>,
    /// Only keys of this organization.
    pub org_id: Option<OrgId>,
    /// Only keys of this project.
    pub project_id: Option<ProjectId>,
}

impl ChannelScope {
    /// Whether an event of `event_type` about a key in `org`/`project` is for this channel.
    pub fn matches(
        &self,
        event_type: &str,
        org: Option<&OrgId>,
        project: Option<&ProjectId>,
    ) -> bool {
        let event_ok = self.events.iter().any(|e| e == "*" || e == event_type);
        let org_ok = self.org_id.as_ref().is_none_or(|o| Some(o) == org);
        let project_ok = self.project_id.as_ref().is_none_or(|p| Some(p) == project);
        event_ok && org_ok && project_ok
    }
}

/// A webhook to create. The secret signs every delivery (HMAC-SHA256).
#[derive(Clone, Debug)]
pub struct NewWebhook {
    /// Its id.
    pub id: WebhookId,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The signing secret as it is to be stored (sealed by the gateway).
    pub secret: Secret,
    /// What it receives.
    pub scope: ChannelScope,
    /// A note for people.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// When, ms.
    pub created_at: i64,
}

/// A webhook as stored. The signing secret is kept (it is needed to sign) but
/// never serialized.
#[derive(Clone, Debug, Serialize)]
pub struct Webhook {
    /// Its id.
    pub id: WebhookId,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The signing secret as stored: the gateway seals it before storing it
    /// (`keyward_gateway::sealing`), so this is the sealed form, or a plaintext
    /// secret stored by a version before sealing, until it is sealed at start.
    #[serde(skip)]
    pub secret: Secret,
    /// What it receives.
    #[serde(flatten)]
    pub scope: ChannelScope,
    /// A note for people.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// When, ms.
    pub created_at: i64,
}

pub(crate) const WEBHOOK_COLUMNS: &str =
    "id, url, secret, events, org_id, project_id, description, created_by, created_at";

fn scope(row: &impl Columns) -> StoreResult<ChannelScope> {
    let events = row.text("events")?;
    Ok(ChannelScope {
        events: serde_json::from_str(&events)
            .map_err(|e| StoreError::Backend(format!("decoding stored events: {e}")))?,
        org_id: row.opt_text("org_id")?.map(OrgId::from_trusted),
        project_id: row.opt_text("project_id")?.map(ProjectId::from_trusted),
    })
}

pub(crate) fn encode_events(events: &[String]) -> StoreResult<String> {
    serde_json::to_string(events).map_err(|e| StoreError::Backend(format!("encoding events: {e}")))
}

pub(crate) fn webhook(row: &impl Columns) -> StoreResult<Webhook> {
    Ok(Webhook {
        id: WebhookId::from_trusted(row.text("id")?),
        url: row.text("url")?,
        secret: Secret::new(row.text("secret")?),
        scope: scope(row)?,
        description: row.text("description")?,
        created_by: row.text("created_by")?,
        created_at: row.int("created_at")?,
    })
}

/// An email address that receives notifications.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Recipient {
    /// Its id.
    pub id: RecipientId,
    /// The address.
    pub address: String,
    /// What it receives.
    #[serde(flatten)]
    pub scope: ChannelScope,
    /// When, ms.
    pub created_at: i64,
}

pub(crate) const RECIPIENT_COLUMNS: &str = "id, address, events, org_id, project_id, created_at";

pub(crate) fn recipient(row: &impl Columns) -> StoreResult<Recipient> {
    Ok(Recipient {
        id: RecipientId::from_trusted(row.text("id")?),
        address: row.text("address")?,
        scope: scope(row)?,
        created_at: row.int("created_at")?,
    })
}

/// How a notification travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// An HTTP POST to a webhook.
    Webhook,
    /// An email to a recipient.
    Email,
}

impl Channel {
    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Not yet accepted by the receiver; retried at `next_attempt_at`.
    Pending,
    /// Accepted (2xx, or the SMTP server took the message).
    Delivered,
    /// Given up after the last attempt.
    Failed,
}

impl DeliveryStatus {
    /// Name used in storage and APIs.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => DeliveryStatus::Pending,
            "delivered" => DeliveryStatus::Delivered,
            "failed" => DeliveryStatus::Failed,
            _ => return None,
        })
    }
}

/// One notification to send: an event for one channel target.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// Its id.
    pub id: DeliveryId,
    /// Webhook or email.
    pub channel: Channel,
    /// The webhook id or recipient id.
    pub target_id: String,
    /// The event (one event id is delivered at most once per target).
    pub event_id: EventId,
    /// e.g. `key.leaked`.
    pub event_type: String,
    /// The JSON body sent.
    pub payload: serde_json::Value,
    /// When, ms (also the first attempt time).
    pub created_at: i64,
}

/// A delivery and its attempts so far: the delivery log.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Delivery {
    /// Its id.
    pub id: DeliveryId,
    /// Webhook or email.
    pub channel: Channel,
    /// The webhook id or recipient id.
    pub target_id: String,
    /// The event.
    pub event_id: EventId,
    /// The event's type.
    pub event_type: String,
    /// The JSON body sent.
    pub payload: serde_json::Value,
    /// Where it stands.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due, ms (pending only).
    pub next_attempt_at: i64,
    /// HTTP status of the last attempt, if one was received.
    pub last_status: Option<i64>,
    /// Why the last attempt failed (never holds secrets).
    pub last_error: Option<String>,
    /// When, ms.
    pub created_at: i64,
    /// When it was accepted, ms.
    pub delivered_at: Option<i64>,
}

pub(crate) const DELIVERY_COLUMNS: &str =
    "id, channel, target_id, event_id, event_type, payload, status, attempts, \
     next_attempt_at, last_status, last_error, created_at, delivered_at";

pub(crate) fn delivery(row: &impl Columns) -> StoreResult<Delivery> {
    let channel = row.text("channel")?;
    let status = row.text("status")?;
    let payload = row.text("payload")?;
    Ok(Delivery {
        id: DeliveryId::from_trusted(row.text("id")?),
        channel: match channel.as_str() {
            "webhook" => Channel::Webhook,
            "email" => Channel::Email,
            _ => return Err(StoreError::Backend(format!("unknown channel {channel:?}"))),
        },
        target_id: row.text("target_id")?,
        event_id: EventId::from_trusted(row.text("event_id")?),
        event_type: row.text("event_type")?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::Backend(format!("decoding stored payload: {e}")))?,
        status: DeliveryStatus::parse(&status)
            .ok_or_else(|| StoreError::Backend(format!("unknown delivery status {status:?}")))?,
        attempts: row.int("attempts")?,
        next_attempt_at: row.int("next_attempt_at")?,
        last_status: row.opt_int("last_status")?,
        last_error: row.opt_text("last_error")?,
        created_at: row.int("created_at")?,
        delivered_at: row.opt_int("delivered_at")?,
    })
}

/// The result of one delivery attempt.
#[derive(Clone, Debug)]
pub struct AttemptResult {
    /// The delivery.
    pub id: DeliveryId,
    /// The new status.
    pub status: DeliveryStatus,
    /// When to try again (for `Pending`), ms.
    pub next_attempt_at: i64,
    /// HTTP status received, if any.
    pub last_status: Option<i64>,
    /// Why it failed, if it did.
    pub last_error: Option<String>,
    /// When the attempt finished, ms.
    pub at: i64,
}

pub(crate) fn encode_payload(payload: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(payload)
        .map_err(|e| StoreError::Backend(format!("encoding payload: {e}")))
}
