//! Budgets: every budget the user may see with where its period stands (spent
//! and in flight against the amount), its alert thresholds with those crossed
//! this period, and who was alerted (the `budget.threshold_crossed` audit
//! events and their webhook deliveries). Admins set, raise and delete them;
//! the API decides, the page shows its refusals.

use super::overview::usd;
use super::security::segment;
use super::settings::{delivery_log, webhooks};
use super::{redirect_with, refused};
use crate::api::Visitor;
use crate::layout::{self, Message};
use crate::session::{Me, Viewer};
use crate::SharedWeb;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keyward_api::audit::AuditEvent;
use keyward_api::budgets::{BudgetStatus, ScopeRef, SetBudget};
use keyward_api::notify::Delivery;
use keyward_api::List;
use keyward_core::{BudgetScope, Period, Role};
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::{json, Value};

const BACK: &str = "/budgets";

/// The audit action (and notification event type) of a crossed threshold.
const CROSSED: &str = "budget.threshold_crossed";

/// The page's query: what was just done, and which budget the form is
/// filled in with (the "Change" links).
#[derive(Deserialize, Default)]
pub struct Shown {
    #[serde(default)]
    done: String,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    id: String,
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "set" => "Budget saved.",
        "deleted" => "Budget deleted.",
        _ => return None,
    })
}

/// The set form as posted (and as drawn: every field is text).
#[derive(Deserialize, Default)]
pub struct SetForm {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    usd: String,
    #[serde(default)]
    period: String,
    #[serde(default)]
    soft: String,
}

/// A delete button's form: which budget.
#[derive(Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    scope: String,
    #[serde(default)]
    id: String,
}

/// The scope a form names, as the API's `org`/`project`/`key` fields.
fn scope_ref(kind: &str, id: &str) -> Result<ScopeRef, String> {
    let id = id.trim();
    if id.is_empty() {
        return Err("Name the organization, project or key the budget is for.".into());
    }
    let id = Some(id.to_owned());
    Ok(match kind {
        "org" => ScopeRef {
            org: id,
            ..ScopeRef::default()
        },
        "project" => ScopeRef {
            project: id,
            ..ScopeRef::default()
        },
        "key" => ScopeRef {
            key: id,
            ..ScopeRef::default()
        },
        _ => return Err("The scope must be an organization, a project or a key.".into()),
    })
}

/// Percents from `50, 80, 100` (a `%` after each is allowed).
fn thresholds(text: &str) -> Result<Option<Vec<u32>>, String> {
    let parts: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if parts.is_empty() {
        return Ok(None);
    }
    parts
        .iter()
        .map(|p| p.trim_end_matches('%').trim().parse::<u32>())
        .collect::<Result<Vec<u32>, _>>()
        .map(Some)
        .map_err(|_| "Alert thresholds must be whole percents, e.g. 50, 80, 100.".into())
}

impl SetForm {
    /// The API request, or what to fix.
    fn request(&self) -> Result<SetBudget, String> {
        let scope = scope_ref(&self.scope, &self.id)?;
        let usd = self
            .usd
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|u| u.is_finite())
            .ok_or("The amount must be a number of US dollars, e.g. 25 or 12.50.")?;
        let period = match self.period.as_str() {
            p @ ("month" | "day" | "none") => p.to_owned(),
            _ => return Err("The period must be a month, a day or none.".into()),
        };
        Ok(SetBudget {
            org: scope.org,
            project: scope.project,
            key: scope.key,
            usd,
            period: Some(period),
            soft: thresholds(&self.soft)?,
        })
    }

    /// The form filled in with a budget, to change it.
    fn from_budget(b: &BudgetStatus) -> Self {
        let t = &b.budget.soft_thresholds;
        Self {
            scope: b.budget.scope.kind().to_owned(),
            id: b.budget.scope.id().to_owned(),
            usd: dollars(b.budget.amount_micros.0),
            period: b.budget.period.as_str().to_owned(),
            soft: t.iter().map(u32::to_string).collect::<Vec<_>>().join(", "),
        }
    }
}

/// Micro-dollars as a plain decimal for an input (`12.5`, `0.000001`).
fn dollars(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let m = micros.unsigned_abs();
    let cents = format!("{:06}", m % 1_000_000);
    let cents = cents.trim_end_matches('0');
    if cents.is_empty() {
        format!("{sign}{}", m / 1_000_000)
    } else {
        format!("{sign}{}.{cents}", m / 1_000_000)
    }
}

/// Spent plus in flight, in percent of the amount (rounded down; may pass
/// 100 while requests in flight are reserved).
fn used_percent(b: &BudgetStatus) -> i64 {
    let used = i128::from(b.spent_micros) + i128::from(b.reserved_micros.max(0));
    let amount = i128::from(b.budget.amount_micros.0.max(1));
    (used * 100 / amount).clamp(0, i128::from(i64::MAX)) as i64
}

/// Whether the spend of this period has reached `threshold` percent (as the
/// gateway decides a crossing: on spend, not on what is in flight).
fn reached(b: &BudgetStatus, threshold: u32) -> bool {
    let line = i128::from(b.budget.amount_micros.0.max(1)) * i128::from(threshold) / 100;
    i128::from(b.spent_micros) >= line
}

/// The crossing events of this budget in its current period.
fn alerts_of<'a>(b: &BudgetStatus, events: &'a [AuditEvent<Value>]) -> Vec<&'a AuditEvent<Value>> {
    events
        .iter()
        .filter(|e| e.action == CROSSED)
        .filter(|e| e.target == b.budget.scope.id() && e.at >= b.period_start)
        .collect()
}

/// The threshold an alert reports.
fn alert_threshold(e: &AuditEvent<Value>) -> Option<u64> {
    e.detail["threshold_percent"].as_u64()
}

/// A webhook delivery of a crossing: its webhook's URL and the delivery.
type Sent = (String, Delivery<Value>);

/// The deliveries of the notification an audit event recorded: the alert
/// publishes the event's detail as its data, at the event's time.
fn deliveries_of<'a>(e: &AuditEvent<Value>, sent: &'a [Sent]) -> Vec<&'a Sent> {
    sent.iter()
        .filter(|(_, d)| {
            d.event_type == CROSSED
                && d.payload["created_at"].as_i64() == Some(e.at)
                && d.payload["data"] == e.detail
        })
        .collect()
}

/// The crossing events since the oldest current period, or none when the
/// API shows the user none (members and viewers see only their own activity).
async fn crossings(web: &SharedWeb, visitor: &Visitor, since: i64) -> Vec<AuditEvent<Value>> {
    let path = format!("/api/v1/audit?action={CROSSED}&since={since}&limit=1000");
    match web
        .api
        .get(visitor, &path)
        .await
        .parse::<List<AuditEvent<Value>>>()
    {
        Ok(l) => l.data,
        Err(_) => Vec::new(),
    }
}

/// The webhook deliveries of crossings, from the webhooks subscribed to
/// them; none when the user may not read webhooks.
async fn sent_alerts(web: &SharedWeb, visitor: &Visitor) -> Vec<Sent> {
    let Ok(hooks) = webhooks(web, visitor).await else {
        return Vec::new();
    };
    let mut sent = Vec::new();
    for w in hooks
        .iter()
        .filter(|w| w.scope.events.iter().any(|e| e == CROSSED || e == "*"))
    {
        if let Ok(log) = delivery_log(web, visitor, segment(w.id.as_str())).await {
            sent.extend(
                log.into_iter()
                    .filter(|d| d.event_type == CROSSED)
                    .map(|d| (w.url.clone(), d)),
            );
        }
    }
    sent
}

fn scope_name(scope: &BudgetScope) -> &'static str {
    match scope {
        BudgetScope::Org(_) => "Organization",
        BudgetScope::Project(_) => "Project",
        BudgetScope::Key(_) => "Key",
    }
}

fn period_text(b: &BudgetStatus) -> String {
    match b.budget.period {
        Period::Month => format!("per month (since {})", layout::time(b.period_start)),
        Period::Day => format!("per day (since {})", layout::time(b.period_start)),
        Period::None => "in total (never starts over)".into(),
    }
}

/// One budget: its scope, period, amount, bar, thresholds and alerts.
fn budget_section(
    b: &BudgetStatus,
    events: &[AuditEvent<Value>],
    sent: &[Sent],
    admin: bool,
) -> Markup {
    let scope = &b.budget.scope;
    let id = segment(scope.id());
    let bar = format!("budget-{}-{id}", scope.kind());
    let percent = used_percent(b);
    let alerts = alerts_of(b, events);
    html! {
        section.budget-status aria-labelledby={ (bar) "-name" } {
            h2 id={ (bar) "-name" } {
                (scope_name(scope)) " "
                @if matches!(scope, BudgetScope::Key(_)) {
                    a href={ "/keys/" (id) } { code { (scope.id()) } }
                } @else {
                    code { (scope.id()) }
                }
            }
            label for=(bar) {
                (usd(b.spent_micros)) " spent and " (usd(b.reserved_micros)) " in flight of "
                (usd(b.budget.amount_micros.0)) " " (period_text(b)) ": " (percent) "%"
            }
            progress id=(bar) max="100" value=(percent.min(100)) { (percent) "%" }
            dl {
                dt { "Amount" } dd { (usd(b.budget.amount_micros.0)) " " (period_text(b)) }
                dt { "Spent" } dd { (usd(b.spent_micros)) }
                dt { "In flight" } dd { (usd(b.reserved_micros)) " reserved by requests not finished yet" }
                dt { "Alert thresholds" }
                dd {
                    @if b.budget.soft_thresholds.is_empty() { "none" }
                    ul.thresholds {
                        @for &t in &b.budget.soft_thresholds {
                            @let alerted = alerts.iter().any(|e| alert_threshold(e) == Some(u64::from(t)));
                            @if reached(b, t) || alerted {
                                li.crossed { strong { (t) "%" } " — crossed this period" }
                            } @else {
                                li { (t) "%" }
                            }
                        }
                    }
                }
                dt { "Who was alerted" }
                dd {
                    @if alerts.is_empty() { "—" }
                    ul.alerts {
                        @for e in &alerts {
                            li {
                                (alert_threshold(e).map_or("?".into(), |t| t.to_string())) "% crossed "
                                (layout::time(e.at)) ": "
                                @let out = deliveries_of(e, sent);
                                @if out.is_empty() {
                                    "recorded in the audit log; no webhook delivery to show"
                                } @else {
                                    @for (i, (url, d)) in out.iter().enumerate() {
                                        @if i > 0 { "; " }
                                        "webhook " code { (url) } " "
                                        span class={ "status " (d.status) } { (d.status) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            @if admin {
                p {
                    a href={ "/budgets?scope=" (scope.kind()) "&id=" (id) "#set-budget" }
                        aria-label={ "Change the budget of " (scope.kind()) " " (scope.id()) } { "Change" }
                }
                form.inline method="post" action="/budgets/delete" {
                    input type="hidden" name="scope" value=(scope.kind());
                    input type="hidden" name="id" value=(scope.id());
                    button.danger type="submit"
                        aria-label={ "Delete the budget of " (scope.kind()) " " (scope.id()) }
                        data-confirm="Delete this budget? Spending under this scope is no longer limited by it." { "Delete" }
                }
            }
        }
    }
}

fn set_form(form: &SetForm, error: Option<&str>) -> Markup {
    let period = if form.period.is_empty() {
        "month"
    } else {
        form.period.as_str()
    };
    html! {
        section {
            h2 id="set-budget" { "Set or raise a budget" }
            @if let Some(e) = error { (layout::message(Message::Error, e)) }
            p { "A new budget for a scope replaces the one it has." }
            form.stack method="post" action="/budgets" {
                label for="budget_scope" { "Scope" }
                select #budget_scope name="scope" {
                    @for (value, name) in [("org", "Organization"), ("project", "Project"), ("key", "Key")] {
                        option value=(value) selected[form.scope == value] { (name) }
                    }
                }
                label for="budget_id" { "Organization or project (name or id), or key (id)" }
                input #budget_id name="id" required autocomplete="off" value=(form.id);
                label for="budget_usd" { "Amount (USD per period)" }
                input #budget_usd name="usd" type="number" min="0" step="any" required value=(form.usd);
                label for="budget_period" { "Period" }
                select #budget_period name="period" {
                    @for (value, name) in [("month", "month"), ("day", "day"), ("none", "none (never starts over)")] {
                        option value=(value) selected[period == value] { (name) }
                    }
                }
                label for="budget_soft" { "Alert thresholds (percents, comma-separated; empty: 50, 80, 100)" }
                input #budget_soft name="soft" autocomplete="off" placeholder="50, 80, 100" value=(form.soft);
                button type="submit" { "Save budget" }
            }
        }
    }
}

/// What the page shows besides the budgets: a notice of what was just done,
/// or the set form as posted with what to fix, or the budget to change.
struct Around<'a> {
    done: &'a str,
    form: Option<SetForm>,
    error: Option<&'a str>,
    change: (&'a str, &'a str),
}

/// The whole page, or the answer to the API's refusal to list budgets.
async fn render(
    web: &SharedWeb,
    me: &Me,
    visitor: &Visitor,
    around: Around<'_>,
) -> Result<Markup, Response> {
    let budgets = web
        .api
        .get(visitor, "/api/v1/budgets")
        .await
        .parse::<List<BudgetStatus>>()
        .map_err(|r| refused(me, r, "/"))?
        .data;
    let admin = me.can(Role::Admin);
    let (events, sent) = match budgets.iter().map(|b| b.period_start).min() {
        Some(since) => (
            crossings(web, visitor, since).await,
            sent_alerts(web, visitor).await,
        ),
        None => (Vec::new(), Vec::new()),
    };
    let (kind, id) = around.change;
    let form = around.form.unwrap_or_else(|| {
        budgets
            .iter()
            .find(|b| b.budget.scope.kind() == kind && b.budget.scope.id() == id)
            .map_or_else(SetForm::default, SetForm::from_budget)
    });
    let body = html! {
        @if let Some(n) = notice(around.done) { (layout::message(Message::Notice, n)) }
        p { "Hard budgets are never exceeded: a request that could pass one is refused. Thresholds raise an alert once per period." }
        @if budgets.is_empty() { p { "No budgets yet." } }
        @for b in &budgets { (budget_section(b, &events, &sent, admin)) }
        @if admin { (set_form(&form, around.error)) }
    };
    Ok(layout::page(me, "Budgets", BACK, body))
}

/// `GET /budgets`.
pub async fn show(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(q): Query<Shown>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let around = Around {
        done: &q.done,
        form: None,
        error: None,
        change: (&q.scope, &q.id),
    };
    match render(&web, &me, &visitor, around).await {
        Ok(page) => page.into_response(),
        Err(refusal) => refusal,
    }
}

/// The page again with the set form as posted and what to fix, with `status`.
async fn form_again(
    web: &SharedWeb,
    me: &Me,
    visitor: &Visitor,
    form: SetForm,
    error: &str,
    status: StatusCode,
) -> Response {
    let around = Around {
        done: "",
        form: Some(form),
        error: Some(error),
        change: ("", ""),
    };
    match render(web, me, visitor, around).await {
        Ok(page) => (status, page).into_response(),
        Err(refusal) => refusal,
    }
}

/// A refusal that is about the form (a bad amount, an unknown project) is
/// shown with the form; the rest (re-authentication, roles, a gone session)
/// as refusals.
fn about_the_form(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_REQUEST
            | StatusCode::NOT_FOUND
            | StatusCode::CONFLICT
            | StatusCode::UNPROCESSABLE_ENTITY
    )
}

/// `POST /budgets`: `PUT /api/v1/budgets`.
pub async fn set(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<SetForm>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let request = match form.request() {
        Ok(r) => r,
        Err(e) => return form_again(&web, &me, &visitor, form, &e, StatusCode::BAD_REQUEST).await,
    };
    let body = json!(request);
    let answer = web
        .api
        .send(&visitor, Method::PUT, "/api/v1/budgets", Some(&body))
        .await;
    if answer.ok() {
        return redirect_with("/budgets?done=set", answer.cookies);
    }
    let r = answer.refusal();
    if about_the_form(r.status) {
        return form_again(&web, &me, &visitor, form, &r.message, r.status).await;
    }
    refused(&me, r, BACK)
}

/// `POST /budgets/delete`: `DELETE /api/v1/budgets`.
pub async fn delete(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<DeleteForm>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let scope = match scope_ref(&form.scope, &form.id) {
        Ok(s) => s,
        Err(e) => return super::bad_form(&me, &e, BACK),
    };
    let body = json!(scope);
    let answer = web
        .api
        .send(&visitor, Method::DELETE, "/api/v1/budgets", Some(&body))
        .await;
    if answer.ok() {
        return redirect_with("/budgets?done=deleted", answer.cookies);
    }
    refused(&me, answer.refusal(), BACK)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{Budget, Micros};

    fn status(spent: i64, reserved: i64, soft: Vec<u32>) -> BudgetStatus {
        BudgetStatus {
            budget: Budget {
                scope: BudgetScope::Key("key_abc".into()),
                amount_micros: Micros(10_000_000),
                period: Period::Month,
                soft_thresholds: soft,
            },
            period_start: 1_000,
            spent_micros: spent,
            reserved_micros: reserved,
        }
    }

    fn form(scope: &str, usd: &str, period: &str, soft: &str) -> SetForm {
        SetForm {
            scope: scope.into(),
            id: " web ".into(),
            usd: usd.into(),
            period: period.into(),
            soft: soft.into(),
        }
    }

    #[test]
    fn the_set_form_becomes_the_apis_request() {
        let r = form("project", "12.5", "day", "50, 90%,100")
            .request()
            .unwrap();
        assert_eq!(r.project.as_deref(), Some("web"));
        assert_eq!((r.org, r.key), (None, None));
        assert_eq!(r.usd, 12.5);
        assert_eq!(r.period.as_deref(), Some("day"));
        assert_eq!(r.soft, Some(vec![50, 90, 100]));
        assert_eq!(form("org", "1", "none", " ").request().unwrap().soft, None);
    }

    #[test]
    fn bad_set_forms_say_what_to_fix() {
        for (f, says) in [
            (form("team", "1", "month", ""), "scope"),
            (form("key", "ten", "month", ""), "amount"),
            (form("key", "inf", "month", ""), "amount"),
            (form("key", "1", "week", ""), "period"),
            (form("key", "1", "month", "50, half"), "thresholds"),
            (form("key", "1", "month", "-5"), "thresholds"),
        ] {
            let e = f.request().unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert!(scope_ref("key", "  ").unwrap_err().contains("Name"));
    }

    #[test]
    fn the_bar_counts_what_is_in_flight_and_thresholds_only_what_is_spent() {
        let b = status(4_000_000, 2_000_000, vec![50, 80]);
        assert_eq!(used_percent(&b), 60);
        assert!(!reached(&b, 50), "in flight is not spent yet");
        let b = status(5_000_000, 0, vec![50, 80]);
        assert!(reached(&b, 50) && !reached(&b, 80));
        assert_eq!(used_percent(&status(9_000_000, 3_000_000, vec![])), 120);
    }

    #[test]
    fn a_budget_fills_the_form_to_change_it() {
        let f = SetForm::from_budget(&status(0, 0, vec![50, 80, 100]));
        assert_eq!((f.scope.as_str(), f.id.as_str()), ("key", "key_abc"));
        assert_eq!((f.usd.as_str(), f.period.as_str()), ("10", "month"));
        assert_eq!(f.soft, "50, 80, 100");
        assert_eq!(dollars(12_500_000), "12.5");
        assert_eq!(dollars(1), "0.000001");
    }

    fn crossing(at: i64, target: &str, threshold: u32) -> AuditEvent<Value> {
        AuditEvent {
            id: keyward_core::AuditId::generate(),
            at,
            actor: "system".into(),
            action: CROSSED.into(),
            target: target.into(),
            detail: json!({"scope": "key", "threshold_percent": threshold, "period_start": 1_000}),
            org_id: None,
            ip: None,
            user_agent: None,
            prev_hash: None,
            hash: None,
        }
    }

    #[test]
    fn alerts_are_this_budgets_in_this_period_with_their_deliveries() {
        let b = status(9_000_000, 0, vec![50, 80]);
        let events = [
            crossing(2_000, "key_abc", 50),
            crossing(500, "key_abc", 80),
            crossing(2_000, "key_other", 80),
        ];
        let alerts = alerts_of(&b, &events);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alert_threshold(alerts[0]), Some(50));
        let delivery = |at: i64, detail: &Value| Delivery {
            id: keyward_core::DeliveryId::generate(),
            channel: "webhook".into(),
            target_id: "whk_x".into(),
            event_id: keyward_core::EventId::generate(),
            event_type: CROSSED.into(),
            payload: json!({"created_at": at, "data": detail}),
            status: "delivered".into(),
            attempts: 1,
            next_attempt_at: 0,
            last_status: Some(200),
            last_error: None,
            created_at: at,
            delivered_at: Some(at),
        };
        let sent = vec![
            (
                "https://a.example".to_owned(),
                delivery(2_000, &events[0].detail),
            ),
            (
                "https://b.example".to_owned(),
                delivery(2_000, &events[2].detail),
            ),
        ];
        let out = deliveries_of(alerts[0], &sent);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, "https://a.example");
    }
}
