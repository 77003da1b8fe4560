//! The organization at a glance: spend this period against each budget, and
//! the keys that need attention (leaked, rotation due, expiring within a week,
//! unused for 90 days).

use super::{now_ms, refused};
use crate::layout;
use crate::session::Viewer;
use crate::SharedWeb;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use keyward_api::budgets::BudgetStatus;
use keyward_api::keys::Key;
use keyward_api::List;
use maud::html;

const DAY_MS: i64 = 86_400_000;

/// Why a key needs attention, if it does, at `now`.
fn attention(key: &Key, now: i64) -> Option<&'static str> {
    let r = &key.record;
    // Ephemeral tokens live minutes to hours, by design: never "expiring".
    if r.parent_id.is_some() {
        return None;
    }
    if r.status == "leaked" {
        return Some("leaked: rotate it");
    }
    if r.status != "active" {
        return None;
    }
    if key.rotation_due {
        return Some("rotation due");
    }
    if r.expires_at.is_some_and(|e| e - now < 7 * DAY_MS) {
        return Some("expires within a week");
    }
    let last = r.last_used_at.unwrap_or(r.created_at);
    if now - last > 90 * DAY_MS {
        return Some("unused for 90 days: revoke it?");
    }
    None
}

/// Dollars from micro-dollars, for people.
pub fn usd(micros: i64) -> String {
    format!("${:.2}", micros as f64 / 1e6)
}

/// `GET /`.
pub async fn show(State(web): State<SharedWeb>, viewer: Viewer) -> Response {
    let Viewer { me, visitor } = viewer;
    let budgets = match web
        .api
        .get(&visitor, "/api/v1/budgets")
        .await
        .parse::<List<BudgetStatus>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/keys"),
    };
    let keys = match web
        .api
        .get(&visitor, "/api/v1/keys")
        .await
        .parse::<List<Key>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/keys"),
    };
    let now = now_ms();
    let flagged: Vec<(&Key, &str)> = keys
        .iter()
        .filter_map(|k| attention(k, now).map(|why| (k, why)))
        .collect();
    let body = html! {
        section {
            h2 { "Budgets this period" }
            @if budgets.is_empty() { p { "No budgets yet." } }
            @for b in &budgets {
                @let amount = b.budget.amount_micros.0.max(1);
                @let percent = (b.spent_micros.saturating_mul(100) / amount).clamp(0, 100);
                div.budget {
                    label for={ "budget-" (b.budget.scope.id()) } {
                        (b.budget.scope.kind()) " " code { (b.budget.scope.id()) } ": "
                        (usd(b.spent_micros)) " of " (usd(b.budget.amount_micros.0))
                    }
                    progress id={ "budget-" (b.budget.scope.id()) } max="100" value=(percent) { (percent) "%" }
                }
            }
        }
        section {
            h2 { "Keys needing attention" }
            @if flagged.is_empty() { p { "None: every active key is in order." } }
            @else {
                ul {
                    @for (k, why) in &flagged {
                        li { a href={ "/keys/" (k.record.id.as_str()) } { (k.record.name) } " — " (why) }
                    }
                }
            }
        }
    };
    layout::page(&me, "Overview", "/", body).into_response()
}
