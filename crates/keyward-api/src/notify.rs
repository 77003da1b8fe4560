//! `/api/v1/webhooks` and `/api/v1/email-recipients`: where notifications go.

use keyward_core::{DeliveryId, EventId, OrgId, ProjectId, RecipientId, WebhookId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The event type a channel receives when its request names none.
pub const DEFAULT_EVENT: &str = "key.leaked";

/// Deliveries answered when a query names no limit.
pub const DEFAULT_DELIVERY_LIMIT: i64 = 50;

/// Which events a channel receives, and about whose keys.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelScopeInput {
    /// Event types, or `*`; `[DEFAULT_EVENT]` when absent.
    pub events: Option<Vec<String>>,
    /// Only this organization's keys (id or name).
    pub org: Option<String>,
    /// Only this project's keys (id or name; with `org` for a name).
    pub project: Option<String>,
}

impl ChannelScopeInput {
    /// The event types asked for, or the default.
    pub fn events_or_default(self) -> Vec<String> {
        self.events.unwrap_or_else(|| vec![DEFAULT_EVENT.into()])
    }
}

/// `POST /api/v1/webhooks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhook {
    /// Where events are POSTed (https, or http to a loopback address).
    pub url: String,
    /// Free text.
    #[serde(default)]
    pub description: String,
    /// Which events, about whose keys.
    #[serde(flatten)]
    pub scope: ChannelScopeInput,
}

/// `POST /api/v1/email-recipients`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateRecipient {
    /// The e-mail address.
    pub address: String,
    /// Which events, about whose keys.
    #[serde(flatten)]
    pub scope: ChannelScopeInput,
}

/// Filters of `GET /api/v1/webhooks/{id}/deliveries`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryQuery {
    /// At most this many deliveries ([`DEFAULT_DELIVERY_LIMIT`], 1 to 1,000).
    pub limit: Option<i64>,
}

impl DeliveryQuery {
    /// The limit asked for, or the default, within 1 to 1,000.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(DEFAULT_DELIVERY_LIMIT).clamp(1, 1_000)
    }
}

/// The answer to `POST /api/v1/webhooks/{id}/test` (202).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TestQueued {
    /// The test event, whose deliveries the log shows.
    #[schema(value_type = String)]
    pub event_id: EventId,
}

/// Which events a channel receives, as stored: a channel with no org and no
/// project hears about every key.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ChannelScope {
    /// Event types, or `*`.
    pub events: Vec<String>,
    /// Only keys of this organization.
    #[schema(value_type = Option<String>)]
    pub org_id: Option<OrgId>,
    /// Only keys of this project.
    #[schema(value_type = Option<String>)]
    pub project_id: Option<ProjectId>,
}

/// A webhook as the API shows it (never its signing secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Webhook {
    /// Its id.
    #[schema(value_type = String)]
    pub id: WebhookId,
    /// Where deliveries are POSTed.
    pub url: String,
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

/// A new webhook with its signing secret, shown only here.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedWebhook {
    /// The webhook.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The signing secret.
    pub secret: String,
}

/// An e-mail recipient as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Recipient {
    /// Its id.
    #[schema(value_type = String)]
    pub id: RecipientId,
    /// The address.
    pub address: String,
    /// What it receives.
    #[serde(flatten)]
    pub scope: ChannelScope,
    /// When, ms.
    pub created_at: i64,
}

/// One notification to one webhook or recipient, with its attempts so far: an
/// entry of the delivery log. `P` is how the free-form `payload` is held,
/// `serde_json::Value` for any event: this crate depends on no JSON library
/// (see keyward's tidy test), so each side names its own.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Delivery<P> {
    /// Its id.
    #[schema(value_type = String)]
    pub id: DeliveryId,
    /// `webhook` or `email`.
    pub channel: String,
    /// The webhook's or recipient's id.
    pub target_id: String,
    /// The event (delivered at most once per target).
    #[schema(value_type = String)]
    pub event_id: EventId,
    /// The event's type, e.g. `key.leaked`.
    pub event_type: String,
    /// The JSON body sent.
    pub payload: P,
    /// `pending`, `delivered` or `failed`.
    pub status: String,
    /// Attempts made.
    pub attempts: i64,
    /// When the next attempt is due, ms (pending only).
    pub next_attempt_at: i64,
    /// HTTP status of the last attempt, if one was received.
    pub last_status: Option<i64>,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When, ms.
    pub created_at: i64,
    /// When it was accepted, ms.
    pub delivered_at: Option<i64>,
}
