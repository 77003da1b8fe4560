//! Notification channels: webhooks (signed deliveries; the secret is shown once,
//! at creation), their delivery log and test deliveries, and email recipients.

use super::extract::ApiJson;
use super::orgs::resolve_project;
use super::{ApiError, Caller};
use crate::notify::Event;
use crate::state::{AppState, SharedState};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_api::notify::{
    self as api, ChannelScopeInput, CreateRecipient, CreateWebhook, CreatedWebhook, DeliveryQuery,
    TestQueued,
};
use keyward_api::List;
use keyward_core::{EventId, OrgId, ProjectId, RecipientId, WebhookId};
use keyward_store::{Channel, ChannelScope, Delivery, NewWebhook, Recipient, Webhook};
use serde_json::{json, Value};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The event types channels may subscribe to.
pub const EVENT_TYPES: &[&str] = &[
    "key.leaked",
    "budget.threshold_crossed",
    "auth.new_device",
    "webhook.test",
];

/// The routes of `/api/v1/webhooks` and `/api/v1/email-recipients`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(remove))
        .routes(routes!(test))
        .routes(routes!(deliveries))
        .routes(routes!(list_recipients, create_recipient))
        .routes(routes!(remove_recipient))
}

/// Whether a channel is the caller's: the bootstrap key sees all; an
/// organization's caller only channels scoped to that organization (a
/// deployment-wide channel hears every organization's events).
fn visible(caller: &Caller, scope: &ChannelScope) -> bool {
    caller.org.is_none() || scope.org_id == caller.org
}

/// The webhook `id`, if the caller may see it.
async fn find_webhook(state: &AppState, caller: &Caller, id: &str) -> Result<Webhook, ApiError> {
    let id = webhook_id(id)?;
    state
        .store
        .list_webhooks()
        .await?
        .into_iter()
        .find(|w| w.id == id && visible(caller, &w.scope))
        .ok_or(ApiError::NotFound("webhook"))
}

async fn scope(
    state: &AppState,
    caller: &Caller,
    input: ChannelScopeInput,
) -> Result<ChannelScope, ApiError> {
    let org = caller.org_or_own(input.org.as_deref());
    let project = input.project.clone();
    let events = input.events_or_default();
    if events.is_empty() {
        return Err(ApiError::BadRequest("events must not be empty".into()));
    }
    for e in &events {
        if e != "*" && !EVENT_TYPES.contains(&e.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "unknown event type {e:?}; known: {} or *",
                EVENT_TYPES.join(", ")
            )));
        }
    }
    let (org_id, project_id): (Option<OrgId>, Option<ProjectId>) = match (&project, &org) {
        (Some(p), org) => {
            let project = resolve_project(state, org.as_deref(), p, false).await?;
            (Some(project.org_id), Some(project.id))
        }
        (None, Some(o)) => {
            let org = match OrgId::parse(o) {
                Some(id) => state.store.get_org(&id).await?,
                None => state.store.org_by_name(o).await?,
            };
            (Some(org.ok_or(ApiError::NotFound("org"))?.id), None)
        }
        (None, None) => (None, None),
    };
    if let Some(o) = &org_id {
        caller.check_org(o, "org")?;
    }
    Ok(ChannelScope {
        events,
        org_id,
        project_id,
    })
}

#[utoipa::path(post, path = "/api/v1/webhooks", tag = "webhooks", request_body = keyward_api::notify::CreateWebhook, responses((status = 201, description = "The webhook and its signing secret, shown once", body = keyward_api::notify::CreatedWebhook)))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateWebhook>,
) -> Result<(StatusCode, Json<CreatedWebhook>), ApiError> {
    let url: reqwest::Url = req
        .url
        .parse()
        .map_err(|_| ApiError::BadRequest("url must be an absolute http(s) URL".into()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(ApiError::BadRequest(
            "url must be an absolute http(s) URL".into(),
        ));
    }
    if req.description.len() > 500 {
        return Err(ApiError::BadRequest(
            "description is at most 500 characters".into(),
        ));
    }
    caller.require_recent(&state)?;
    let scope = scope(&state, &caller, req.scope).await?;
    let secret = format!("whsec_{}", keyward_core::base62::random(32));
    let id = WebhookId::generate();
    let sealed = state.leaks.notifier.seal_webhook_secret(&id, &secret);
    let webhook = state
        .store
        .create_webhook(&NewWebhook {
            id,
            url: req.url,
            secret: sealed,
            scope,
            description: req.description,
            created_by: caller.actor.clone(),
            created_at: state.clock.now_ms(),
        })
        .await?;
    caller
        .audit(
            &state,
            webhook.scope.org_id.as_ref(),
            "webhook.created",
            webhook.id.as_str(),
            json!({"events": webhook.scope.events}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            webhook: answer_webhook(webhook),
            secret,
        }),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhooks", tag = "webhooks",  responses((status = 200, description = "Webhooks, without secrets", body = keyward_api::List<keyward_api::notify::Webhook>)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<List<api::Webhook>>, ApiError> {
    let hooks = state.store.list_webhooks().await?;
    Ok(Json(List::new(
        hooks
            .into_iter()
            .filter(|w| visible(&caller, &w.scope))
            .map(answer_webhook)
            .collect(),
    )))
}

fn webhook_id(id: &str) -> Result<WebhookId, ApiError> {
    WebhookId::parse(id).ok_or(ApiError::NotFound("webhook"))
}

#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", tag = "webhooks",  params(("id" = String, Path, description = "The object's id")), responses((status = 204, description = "Deleted")))]
pub async fn remove(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let hook = find_webhook(&state, &caller, &id).await?;
    state.store.delete_webhook(&hook.id).await?;
    caller
        .audit(
            &state,
            hook.scope.org_id.as_ref(),
            "webhook.deleted",
            hook.id.as_str(),
            json!({}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Queues a `webhook.test` event for this webhook only; its delivery shows up in
/// the delivery log like any other.
#[utoipa::path(post, path = "/api/v1/webhooks/{id}/test", tag = "webhooks",  params(("id" = String, Path, description = "The object's id")), responses((status = 202, description = "A test event was queued", body = keyward_api::notify::TestQueued)))]
pub async fn test(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<TestQueued>), ApiError> {
    let id = find_webhook(&state, &caller, &id).await?.id;
    let event = Event {
        id: EventId::generate(),
        event_type: "webhook.test".into(),
        created_at: state.clock.now_ms(),
        org_id: None,
        project_id: None,
        data: json!({"webhook_id": id}),
        summary: "Test delivery from keyward".into(),
    };
    state
        .leaks
        .notifier
        .publish_to(&event, Channel::Webhook, id.as_str())
        .await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(TestQueued { event_id: event.id }),
    ))
}

#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", tag = "webhooks",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The webhook's delivery log", body = keyward_api::List<keyward_api::notify::Delivery<serde_json::Value>>)))]
pub async fn deliveries(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    Query(q): Query<DeliveryQuery>,
) -> Result<Json<List<api::Delivery<Value>>>, ApiError> {
    let id = find_webhook(&state, &caller, &id).await?.id;
    let log = state
        .store
        .list_deliveries(Some(id.as_str()), q.limit())
        .await?;
    Ok(Json(List::new(
        log.into_iter().map(answer_delivery).collect(),
    )))
}

#[utoipa::path(post, path = "/api/v1/email-recipients", tag = "webhooks", request_body = keyward_api::notify::CreateRecipient, responses((status = 201, description = "The recipient", body = keyward_api::notify::Recipient)))]
pub async fn create_recipient(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateRecipient>,
) -> Result<(StatusCode, Json<api::Recipient>), ApiError> {
    let address = req.address.trim();
    let plausible = address.len() <= 254
        && address
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !address.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',');
    if !plausible {
        return Err(ApiError::BadRequest(
            "address must be an email address".into(),
        ));
    }
    let recipient = Recipient {
        id: RecipientId::generate(),
        address: address.to_owned(),
        scope: scope(&state, &caller, req.scope).await?,
        created_at: state.clock.now_ms(),
    };
    let r = state.store.create_recipient(&recipient).await?;
    caller
        .audit(
            &state,
            r.scope.org_id.as_ref(),
            "email_recipient.created",
            r.id.as_str(),
            json!({"events": r.scope.events}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(answer_recipient(r))))
}

#[utoipa::path(get, path = "/api/v1/email-recipients", tag = "webhooks",  responses((status = 200, description = "E-mail recipients", body = keyward_api::List<keyward_api::notify::Recipient>)))]
pub async fn list_recipients(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<List<api::Recipient>>, ApiError> {
    let recipients = state.store.list_recipients().await?;
    Ok(Json(List::new(
        recipients
            .into_iter()
            .filter(|r| visible(&caller, &r.scope))
            .map(answer_recipient)
            .collect(),
    )))
}

#[utoipa::path(delete, path = "/api/v1/email-recipients/{id}", tag = "webhooks",  params(("id" = String, Path, description = "The object's id")), responses((status = 204, description = "Deleted")))]
pub async fn remove_recipient(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = RecipientId::parse(&id).ok_or(ApiError::NotFound("recipient"))?;
    let recipient = state
        .store
        .list_recipients()
        .await?
        .into_iter()
        .find(|r| r.id == id && visible(&caller, &r.scope))
        .ok_or(ApiError::NotFound("recipient"))?;
    state.store.delete_recipient(&id).await?;
    caller
        .audit(
            &state,
            recipient.scope.org_id.as_ref(),
            "email_recipient.deleted",
            id.as_str(),
            json!({}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A webhook as the API shows it: never its signing secret.
fn answer_webhook(w: Webhook) -> api::Webhook {
    api::Webhook {
        id: w.id,
        url: w.url,
        scope: answer_scope(w.scope),
        description: w.description,
        created_by: w.created_by,
        created_at: w.created_at,
    }
}

/// An e-mail recipient as the API shows it.
fn answer_recipient(r: Recipient) -> api::Recipient {
    api::Recipient {
        id: r.id,
        address: r.address,
        scope: answer_scope(r.scope),
        created_at: r.created_at,
    }
}

fn answer_scope(s: ChannelScope) -> api::ChannelScope {
    api::ChannelScope {
        events: s.events,
        org_id: s.org_id,
        project_id: s.project_id,
    }
}

/// An entry of the delivery log as the API shows it.
fn answer_delivery(d: Delivery) -> api::Delivery<Value> {
    api::Delivery {
        id: d.id,
        channel: d.channel.as_str().into(),
        target_id: d.target_id,
        event_id: d.event_id,
        event_type: d.event_type,
        payload: d.payload,
        status: d.status.as_str().into(),
        attempts: d.attempts,
        next_attempt_at: d.next_attempt_at,
        last_status: d.last_status,
        last_error: d.last_error,
        created_at: d.created_at,
        delivered_at: d.delivered_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::DeliveryId;
    use keyward_store::DeliveryStatus;
    use serde::Serialize;

    fn scopes() -> [ChannelScope; 2] {
        [
            ChannelScope {
                events: vec!["key.leaked".into()],
                org_id: Some(OrgId::generate()),
                project_id: Some(ProjectId::generate()),
            },
            ChannelScope {
                events: vec!["*".into()],
                org_id: None,
                project_id: None,
            },
        ]
    }

    /// Webhooks used to be answered as their storage record (its scope
    /// flattened, its secret skipped), a new one with the secret beside it: the
    /// API types must put the same bytes on the wire, and read back without
    /// loss.
    #[test]
    fn webhook_answers_are_the_bytes_the_storage_record_gave() {
        #[derive(Serialize)]
        struct Before<'a> {
            #[serde(flatten)]
            webhook: &'a Webhook,
            secret: &'a str,
        }
        for scope in scopes() {
            let webhook = Webhook {
                id: WebhookId::generate(),
                url: "https://example.test/hook".into(),
                secret: keyward_core::Secret::new("sealed"),
                scope,
                description: "ops".into(),
                created_by: "kwa".into(),
                created_at: 1,
            };
            let sent = serde_json::to_string(&answer_webhook(webhook.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&webhook).unwrap());
            assert!(!sent.contains("sealed"), "{sent}");
            let created = CreatedWebhook {
                webhook: answer_webhook(webhook.clone()),
                secret: "whsec".into(),
            };
            let sent = serde_json::to_string(&created).unwrap();
            let before = Before {
                webhook: &webhook,
                secret: "whsec",
            };
            assert_eq!(sent, serde_json::to_string(&before).unwrap());
            let read: CreatedWebhook = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, created);
        }
    }

    /// Recipients likewise (their scope flattened).
    #[test]
    fn recipient_answers_are_the_bytes_the_storage_record_gave() {
        for scope in scopes() {
            let recipient = Recipient {
                id: RecipientId::generate(),
                address: "ops@example.test".into(),
                scope,
                created_at: 1,
            };
            let sent = serde_json::to_string(&answer_recipient(recipient.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&recipient).unwrap());
            let read: api::Recipient = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, answer_recipient(recipient));
        }
    }

    /// Deliveries likewise (channel and status spelled as their storage enums
    /// were).
    #[test]
    fn delivery_answers_are_the_bytes_the_storage_record_gave() {
        let statuses = [
            DeliveryStatus::Pending,
            DeliveryStatus::Delivered,
            DeliveryStatus::Failed,
        ];
        for (channel, status) in [Channel::Webhook, Channel::Email].into_iter().zip(statuses) {
            let done = status == DeliveryStatus::Delivered;
            let delivery = Delivery {
                id: DeliveryId::generate(),
                channel,
                target_id: "whk_x".into(),
                event_id: EventId::generate(),
                event_type: "key.leaked".into(),
                payload: json!({"type": "key.leaked", "data": {"n": 1}}),
                status,
                attempts: 2,
                next_attempt_at: 3,
                last_status: done.then_some(200),
                last_error: (!done).then(|| "timed out".into()),
                created_at: 4,
                delivered_at: done.then_some(5),
            };
            let sent = serde_json::to_string(&answer_delivery(delivery.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&delivery).unwrap());
            let read: api::Delivery<Value> = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, answer_delivery(delivery));
        }
    }
}
