//! Webhooks and email: where the organization's notifications go. Webhooks
//! (add — the signing secret shown once —, delete, send a test, the delivery
//! log) and email recipients (add, delete). Admins change them; the API
//! decides, the page shows its refusals.

use super::security::segment;
use super::{redirect_with, refused};
use crate::api::{Refusal, Visitor};
use crate::layout::{self, Message};
use crate::session::{Me, Viewer};
use crate::SharedWeb;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keyward_api::notify::{CreatedWebhook, Delivery, Recipient, Webhook, DEFAULT_EVENT};
use keyward_api::List;
use keyward_core::Role;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

const BACK: &str = "/settings";

/// The event types a channel may hear, offered as checkboxes. The API holds
/// the authoritative list and refuses any other; this one only draws the form.
const EVENTS: [(&str, &str); 4] = [
    ("key.leaked", "A key was found leaked"),
    ("budget.threshold_crossed", "A budget crossed a threshold"),
    ("auth.new_device", "A sign-in from a new device"),
    ("webhook.test", "Test events"),
];

/// What was just done (fixed words; the notice text is ours).
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: String,
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "test" => "A test event was queued: it appears in the delivery log below once sent.",
        "webhook-deleted" => "Webhook deleted.",
        "recipient-added" => "Recipient added.",
        "recipient-deleted" => "Recipient deleted.",
        _ => return None,
    })
}

/// The webhooks the visitor may see (`GET /api/v1/webhooks`).
pub(super) async fn webhooks(web: &SharedWeb, visitor: &Visitor) -> Result<Vec<Webhook>, Refusal> {
    web.api
        .get(visitor, "/api/v1/webhooks")
        .await
        .parse::<List<Webhook>>()
        .map(|l| l.data)
}

/// A webhook's delivery log, newest first
/// (`GET /api/v1/webhooks/{id}/deliveries`); `id` is a path segment already.
pub(super) async fn delivery_log(
    web: &SharedWeb,
    visitor: &Visitor,
    id: &str,
) -> Result<Vec<Delivery<Value>>, Refusal> {
    web.api
        .get(visitor, &format!("/api/v1/webhooks/{id}/deliveries"))
        .await
        .parse::<List<Delivery<Value>>>()
        .map(|l| l.data)
}

/// `GET /settings`.
pub async fn show(State(web): State<SharedWeb>, viewer: Viewer, Query(q): Query<Done>) -> Response {
    let Viewer { me, visitor } = viewer;
    let webhooks = match webhooks(&web, &visitor).await {
        Ok(w) => w,
        Err(r) => return refused(&me, r, "/"),
    };
    let recipients = match web
        .api
        .get(&visitor, "/api/v1/email-recipients")
        .await
        .parse::<List<Recipient>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/"),
    };
    let admin = me.can(Role::Admin);
    let body = html! {
        @if let Some(n) = notice(&q.done) { (layout::message(Message::Notice, n)) }
        section {
            h2 { "Webhooks" }
            p { "Each delivery is signed with the webhook's secret so the receiver can check it came from keyward." }
            table {
                thead { tr { th { "URL" } th { "Events" } th { "Description" } th { "Added" } th { "Actions" } } }
                tbody {
                    @for w in &webhooks {
                        @let id = segment(w.id.as_str());
                        tr {
                            td { code { (w.url) } }
                            td { (w.scope.events.join(", ")) }
                            td { (w.description) }
                            td { (layout::time(w.created_at)) }
                            td {
                                a href={ "/settings/webhooks/" (id) } { "Delivery log" }
                                @if admin {
                                    form.inline method="post" action={ "/settings/webhooks/" (id) "/test" } {
                                        button type="submit" { "Send a test" }
                                    }
                                    form.inline method="post" action={ "/settings/webhooks/" (id) "/delete" } {
                                        button.danger type="submit" data-confirm="Delete this webhook?" { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin { (webhook_form(None)) }
        }
        section {
            h2 { "Email recipients" }
            table {
                thead { tr { th { "Address" } th { "Events" } th { "Added" } th { "Actions" } } }
                tbody {
                    @for r in &recipients {
                        tr {
                            td { (r.address) }
                            td { (r.scope.events.join(", ")) }
                            td { (layout::time(r.created_at)) }
                            td {
                                @if admin {
                                    form.inline method="post" action={ "/settings/recipients/" (segment(r.id.as_str())) "/delete" } {
                                        button.danger type="submit" aria-label={ "Delete recipient " (r.address) } { "Delete" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin { (recipient_form(None)) }
        }
    };
    layout::page(&me, "Webhooks & email", "/settings", body).into_response()
}

fn events_fieldset(prefix: &str) -> Markup {
    html! {
        fieldset {
            legend { "Events" }
            @for (event, label) in EVENTS {
                @let id = format!("{prefix}-{}", event.replace('.', "-"));
                label for=(id) {
                    input id=(id) type="checkbox" name="events" value=(event) checked[event == DEFAULT_EVENT];
                    " " (label) " (" code { (event) } ")"
                }
            }
        }
    }
}

fn webhook_form(error: Option<&str>) -> Markup {
    html! {
        h3 { "Add a webhook" }
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/settings/webhooks" {
            label for="webhook_url" { "URL (https)" }
            input #webhook_url type="url" name="url" required autocomplete="off";
            label for="webhook_description" { "Description" }
            input #webhook_description name="description" maxlength="200" autocomplete="off";
            (events_fieldset("webhook"))
            button type="submit" { "Add webhook" }
        }
    }
}

fn recipient_form(error: Option<&str>) -> Markup {
    html! {
        h3 { "Add a recipient" }
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/settings/recipients" {
            label for="recipient_address" { "Email address" }
            input #recipient_address type="email" name="address" required autocomplete="email";
            (events_fieldset("recipient"))
            button type="submit" { "Add recipient" }
        }
    }
}

/// A form with repeated `events` checkboxes, as name–value pairs (the form
/// decoder has no lists of its own).
type Pairs = Vec<(String, String)>;

fn field<'a>(pairs: &'a Pairs, name: &str) -> &'a str {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

fn events(pairs: &Pairs) -> Vec<&str> {
    pairs
        .iter()
        .filter(|(k, _)| k == "events")
        .map(|(_, v)| v.as_str())
        .collect()
}

/// A refusal that is about the form (400, 409, 422) is shown with the form;
/// the rest (re-authentication, roles, a gone session) as refusals.
fn about_the_form(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST | StatusCode::CONFLICT | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// `POST /settings/webhooks`: `POST /api/v1/webhooks`; the secret is shown
/// this once.
pub async fn create_webhook(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(pairs): Form<Pairs>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let body = json!({
        "url": field(&pairs, "url").trim(),
        "description": field(&pairs, "description").trim(),
        "events": events(&pairs),
    });
    let answer = web
        .api
        .send(&visitor, Method::POST, "/api/v1/webhooks", Some(&body))
        .await;
    match answer.parse::<CreatedWebhook>() {
        Ok(created) => (StatusCode::CREATED, secret_once(&me, &created)).into_response(),
        Err(r) if about_the_form(r.status) => {
            let page = layout::page(
                &me,
                "Webhooks & email",
                "/settings",
                webhook_form(Some(&r.message)),
            );
            (r.status, page).into_response()
        }
        Err(r) => refused(&me, r, BACK),
    }
}

/// The one page that shows a webhook's signing secret.
fn secret_once(me: &Me, created: &CreatedWebhook) -> Markup {
    let body = html! {
        (layout::message(Message::Notice, "Copy the signing secret now: you will not see it again."))
        p { label for="webhook_secret" { "Signing secret for " code { (created.webhook.url) } } }
        p.secret {
            input #webhook_secret readonly value=(created.secret) size="60" autocomplete="off";
            " "
            button type="button" data-copy="#webhook_secret" { "Copy" }
            span.copied role="status" aria-live="polite" {}
        }
        p { a href={ "/settings/webhooks/" (segment(created.webhook.id.as_str())) } { "Done" } }
    };
    layout::page(me, "Webhook added", "/settings", body)
}

/// `GET /settings/webhooks/{id}`: the webhook's delivery log.
pub async fn deliveries(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
    Query(q): Query<Done>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let id = segment(&id);
    let log = match delivery_log(&web, &visitor, id).await {
        Ok(l) => l,
        Err(r) => return refused(&me, r, BACK),
    };
    let body = html! {
        @if let Some(n) = notice(&q.done) { (layout::message(Message::Notice, n)) }
        @if me.can(Role::Admin) {
            form.inline method="post" action={ "/settings/webhooks/" (id) "/test" } {
                button type="submit" { "Send a test" }
            }
        }
        table {
            caption { "The last " (log.len()) " deliveries, newest first" }
            thead { tr {
                th { "Event" } th { "Status" } th.num { "Attempts" } th { "Last answer" } th { "Queued" } th { "Delivered" }
            } }
            tbody {
                @for d in &log {
                    tr {
                        td { code { (d.event_type) } }
                        td { span class={ "status " (d.status) } { (d.status) } }
                        td.num { (d.attempts) }
                        td {
                            @if let Some(s) = d.last_status { "HTTP " (s) }
                            @if let Some(e) = &d.last_error { " " (e) }
                        }
                        td { (layout::time(d.created_at)) }
                        td { (d.delivered_at.map(layout::time).unwrap_or_else(|| "-".into())) }
                    }
                }
            }
        }
        p { a href="/settings" { "Back to webhooks & email" } }
    };
    layout::page(&me, "Delivery log", "/settings", body).into_response()
}

/// `POST /settings/webhooks/{id}/test`: `POST /api/v1/webhooks/{id}/test`.
pub async fn test_webhook(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let id = segment(&id);
    let answer = web
        .api
        .send(
            &viewer.visitor,
            Method::POST,
            &format!("/api/v1/webhooks/{id}/test"),
            None,
        )
        .await;
    if answer.ok() {
        return redirect_with(
            &format!("/settings/webhooks/{id}?done=test"),
            answer.cookies,
        );
    }
    refused(
        &viewer.me,
        answer.refusal(),
        &format!("/settings/webhooks/{id}"),
    )
}

/// `POST /settings/webhooks/{id}/delete`: `DELETE /api/v1/webhooks/{id}`.
pub async fn delete_webhook(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/api/v1/webhooks/{}", segment(&id));
    let answer = web
        .api
        .send(&viewer.visitor, Method::DELETE, &path, None)
        .await;
    if answer.ok() {
        return redirect_with("/settings?done=webhook-deleted", answer.cookies);
    }
    refused(&viewer.me, answer.refusal(), BACK)
}

/// `POST /settings/recipients`: `POST /api/v1/email-recipients`.
pub async fn create_recipient(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(pairs): Form<Pairs>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let body = json!({
        "address": field(&pairs, "address").trim(),
        "events": events(&pairs),
    });
    let answer = web
        .api
        .send(
            &visitor,
            Method::POST,
            "/api/v1/email-recipients",
            Some(&body),
        )
        .await;
    if answer.ok() {
        return redirect_with("/settings?done=recipient-added", answer.cookies);
    }
    let r = answer.refusal();
    if about_the_form(r.status) {
        let page = layout::page(
            &me,
            "Webhooks & email",
            "/settings",
            recipient_form(Some(&r.message)),
        );
        return (r.status, page).into_response();
    }
    refused(&me, r, BACK)
}

/// `POST /settings/recipients/{id}/delete`: `DELETE /api/v1/email-recipients/{id}`.
pub async fn delete_recipient(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let path = format!("/api/v1/email-recipients/{}", segment(&id));
    let answer = web
        .api
        .send(&viewer.visitor, Method::DELETE, &path, None)
        .await;
    if answer.ok() {
        return redirect_with("/settings?done=recipient-deleted", answer.cookies);
    }
    refused(&viewer.me, answer.refusal(), BACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_checkboxes_become_the_list_of_events() {
        let pairs: Pairs = vec![
            ("url".into(), "https://hooks.example/k".into()),
            ("events".into(), "key.leaked".into()),
            ("events".into(), "webhook.test".into()),
        ];
        assert_eq!(field(&pairs, "url"), "https://hooks.example/k");
        assert_eq!(field(&pairs, "description"), "");
        assert_eq!(events(&pairs), ["key.leaked", "webhook.test"]);
    }

    #[test]
    fn the_default_event_is_offered() {
        assert!(EVENTS.iter().any(|(e, _)| *e == DEFAULT_EVENT));
    }
}
