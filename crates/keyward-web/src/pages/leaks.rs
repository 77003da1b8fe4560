//! Leaks: every report that one of the organization's keys was found
//! somewhere (which key, where, when, what was done) and a one-click rotate.

use super::refused;
use crate::layout;
use crate::session::Viewer;
use crate::SharedWeb;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keyward_api::keys::Key;
use keyward_api::leaks::LeakReport;
use keyward_api::List;
use keyward_core::Role;
use maud::html;

/// `GET /leaks`: the API's newest reports (it answers only the caller's
/// organization's).
pub async fn list(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let Viewer { me, visitor } = viewer;
    let reports = match web
        .api
        .get(&visitor, "/api/v1/leaks?limit=500")
        .await
        .parse::<List<LeakReport>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/"),
    };
    let keys = web
        .api
        .get(&visitor, "/api/v1/keys")
        .await
        .parse::<List<Key>>()
        .map(|l| l.data)
        .unwrap_or_default();
    let key_of = |id: &str| keys.iter().find(|k| k.record.id.as_str() == id);
    let body = html! {
        table {
            caption { (reports.len()) " leak reports, newest first" }
            thead { tr { th { "When" } th { "Key" } th { "Found by" } th { "Where" } th { "What was done" } th { "Action" } } }
            tbody {
                @for r in &reports {
                    @let key = key_of(r.key_id.as_str());
                    tr {
                        td { (layout::time(r.reported_at)) }
                        td {
                            @if let Some(k) = key {
                                a href={ "/keys/" (k.record.id.as_str()) } { (k.record.name) }
                                " " code { (k.record.hint) }
                            } @else { code { (r.key_id.as_str()) } }
                        }
                        td { (r.source) }
                        td {
                            @if !r.url.is_empty() { code { (r.url) } }
                            @if !r.location.is_empty() { " " (r.location) }
                        }
                        td { (r.outcome) }
                        td {
                            @if let Some(k) = key.filter(|k| me.can(Role::Member) && k.record.status != "revoked") {
                                form.inline method="post" action={ "/keys/" (k.record.id.as_str()) "/rotate" } {
                                    input type="hidden" name="grace_seconds" value="0";
                                    button type="submit" aria-label={ "Rotate " (k.record.name) } { "Rotate" }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    layout::page(&me, "Leaks", "/leaks", body).into_response()
}
