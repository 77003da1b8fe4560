//! Activity: the audit log as the API shows it to the viewer (their own
//! events; their organization's to admins), newest first, with filters and an
//! "older" link, and the chain's verification verdict when the API gives one.

use super::refused;
use crate::layout;
use crate::session::Viewer;
use crate::SharedWeb;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use keyward_api::audit::{AuditEvent, AuditVerification};
use keyward_api::List;
use maud::html;
use serde::Deserialize;
use serde_json::Value;

/// Events per page.
const PAGE: i64 = 50;

/// The filters, as the GET form sends them.
#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    action: String,
    #[serde(default)]
    actor: String,
    /// Older than this event, by id (the "older" link: the last event of
    /// the page before).
    #[serde(default)]
    before: String,
}

/// `GET /activity`.
pub async fn list(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(f): Query<Filters>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let mut query = vec![format!("limit={PAGE}")];
    for (name, value) in [("action", &f.action), ("actor", &f.actor)] {
        if !value.is_empty() {
            query.push(format!("{name}={}", encode(value)));
        }
    }
    if !f.before.is_empty() {
        query.push(format!("before={}", encode(&f.before)));
    }
    let path = format!("/api/v1/audit?{}", query.join("&"));
    let events = match web
        .api
        .get(&visitor, &path)
        .await
        .parse::<List<AuditEvent<Value>>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/"),
    };
    // Deployment-wide callers only; anyone else is told who runs it.
    let verdict = web
        .api
        .get(&visitor, "/api/v1/audit/verify")
        .await
        .parse::<AuditVerification>()
        .ok();
    let older = (events.len() as i64 == PAGE)
        .then(|| events.last().map(|e| e.id.as_str()))
        .flatten();
    let body = html! {
        p {
            @match &verdict {
                Some(v) if v.ok => { "The audit chain is intact (" (v.events.unwrap_or(0)) " events checked)." }
                Some(v) => { "The audit chain is broken: " (v.reason.clone().unwrap_or_default()) }
                None => { "The audit chain is verified by the deployment's operator (" code { "keyward audit verify" } ")." }
            }
        }
        form.filters method="get" action="/activity" {
            label for="action" { "Action starts with" }
            input #action name="action" value=(f.action);
            label for="actor" { "Actor" }
            input #actor name="actor" value=(f.actor);
            button type="submit" { "Filter" }
        }
        table {
            caption { (events.len()) " events, newest first" }
            thead { tr { th { "Time" } th { "Actor" } th { "Action" } th { "Target" } th { "Address" } th { "Device" } } }
            tbody {
                @for e in &events {
                    tr {
                        td { (layout::time(e.at)) }
                        td { code { (e.actor) } }
                        td { (e.action) }
                        td { code { (e.target) } }
                        td { (e.ip.as_deref().unwrap_or("")) }
                        td { (e.user_agent.as_deref().unwrap_or("")) }
                    }
                }
            }
        }
        @if let Some(last) = older {
            // A cursor, not a time: events sharing the last one's millisecond
            // are on the next page, not skipped.
            p { a href={ "/activity?action=" (encode(&f.action)) "&actor=" (encode(&f.actor)) "&before=" (encode(last)) } { "Older" } }
        }
    };
    layout::page(&me, "Activity", "/activity", body).into_response()
}

/// Percent-encodes a query value (everything but unreserved characters).
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
