//! Keys: the list with filters, creating one with its restrictions and budget
//! (the secret shown exactly once), one key's page, rotating and revoking.

use super::{bad_form, local_path, refused};
use crate::layout::{self, Message};
use crate::session::{Me, Viewer};
use crate::SharedWeb;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use keyward_api::keys::{BudgetInput, CreateKey, CreatedKey, EphemeralRequest, Key, PolicyInput};
use keyward_api::orgs::Project;
use keyward_api::List;
use keyward_core::Role;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

/// Keys per page of the list.
const PAGE: usize = 50;

/// The list's filters.
#[derive(Deserialize, Default)]
pub struct Filters {
    #[serde(default)]
    status: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    q: String,
    #[serde(default)]
    page: usize,
}

/// `GET /keys`.
pub async fn list(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(f): Query<Filters>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let keys = match web
        .api
        .get(&visitor, "/api/v1/keys")
        .await
        .parse::<List<Key>>()
    {
        Ok(list) => list.data,
        Err(r) => return refused(&me, r, "/"),
    };
    let projects = projects(&web, &visitor).await;
    let needle = f.q.to_lowercase();
    let shown: Vec<&Key> = keys
        .iter()
        // Ephemeral tokens are listed on their key's page, not here.
        .filter(|k| k.record.parent_id.is_none())
        .filter(|k| f.status.is_empty() || k.record.status == f.status)
        .filter(|k| f.project.is_empty() || k.record.project_id.as_str() == f.project)
        .filter(|k| needle.is_empty() || k.record.name.to_lowercase().contains(&needle))
        .collect();
    let pages = shown.len().div_ceil(PAGE).max(1);
    let page = f.page.min(pages - 1);
    let project_name = |id: &str| {
        projects
            .iter()
            .find(|p| p.id.as_str() == id)
            .map_or(id.to_owned(), |p| p.name.clone())
    };
    let body = html! {
        @if me.can(Role::Member) {
            p { a.button href="/keys/new" { "Create a key" } }
        }
        form.filters method="get" action="/keys" {
            label for="q" { "Name" }
            input #q name="q" value=(f.q);
            label for="status" { "Status" }
            select #status name="status" {
                @for s in ["", "active", "leaked", "revoked", "expired"] {
                    option value=(s) selected[s == f.status] { (if s.is_empty() { "any" } else { s }) }
                }
            }
            label for="project" { "Project" }
            select #project name="project" {
                option value="" { "any" }
                @for p in &projects {
                    option value=(p.id.as_str()) selected[p.id.as_str() == f.project] { (p.name) }
                }
            }
            button type="submit" { "Filter" }
        }
        table {
            caption { (shown.len()) " keys" }
            thead { tr { th { "Name" } th { "Key" } th { "Project" } th { "Status" } th { "Created" } th { "Last used" } th { "Expires" } } }
            tbody {
                @for k in shown.iter().skip(page * PAGE).take(PAGE) {
                    tr {
                        td { a href={ "/keys/" (k.record.id.as_str()) } { (k.record.name) } }
                        td { code { (k.record.hint) } }
                        td { (project_name(k.record.project_id.as_str())) }
                        td { span class={ "status " (k.record.status) } { (k.record.status) }
                             @if k.rotation_due { " · rotation due" } }
                        td { (layout::time(k.record.created_at)) }
                        td { (k.record.last_used_at.map(layout::time).unwrap_or_else(|| "never".into())) }
                        td { (k.record.expires_at.map(layout::time).unwrap_or_else(|| "never".into())) }
                    }
                }
            }
        }
        @if pages > 1 {
            nav aria-label="Pages" {
                @for p in 0..pages {
                    @if p == page { span aria-current="page" { (p + 1) } " " }
                    @else { a href={ "/keys?page=" (p) "&status=" (f.status) "&project=" (f.project) "&q=" (f.q) } { (p + 1) } " " }
                }
            }
        }
    };
    layout::page(&me, "Keys", "/keys", body).into_response()
}

async fn projects(web: &SharedWeb, visitor: &crate::api::Visitor) -> Vec<Project> {
    web.api
        .get(visitor, "/api/v1/projects")
        .await
        .parse::<List<Project>>()
        .map(|l| l.data)
        .unwrap_or_default()
}

/// `GET /keys/new`.
pub async fn new(State(web): State<SharedWeb>, viewer: Viewer) -> Markup {
    let projects = projects(&web, &viewer.visitor).await;
    layout::page(
        &viewer.me,
        "Create a key",
        "/keys",
        new_form(&projects, None),
    )
}

fn new_form(projects: &[Project], error: Option<&str>) -> Markup {
    html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/keys" {
            label for="name" { "Name" }
            input #name name="name" required maxlength="200";
            label for="project" { "Project (an existing one, or a new name)" }
            input #project name="project" list="projects" required;
            datalist #projects { @for p in projects { option value=(p.name) {} } }
            fieldset {
                legend { "Restrictions" }
                label for="endpoints" { "Endpoints" }
                select #endpoints name="endpoints" {
                    option value="all" { "all of /v1" }
                    @for preset in ["inference", "chat-only", "embeddings-only", "read-only"] {
                        option value=(preset) { (preset) }
                    }
                }
                label for="models" { "Models (comma-separated globs, e.g. gpt-4o-mini, gpt-4o*)" }
                input #models name="models";
                label for="networks" { "Client networks (comma-separated CIDRs)" }
                input #networks name="networks";
                label for="expires_in_days" { "Expires after (days)" }
                input #expires_in_days name="expires_in_days" type="number" min="1";
                label for="rpm" { "Requests per minute" }
                input #rpm name="rpm" type="number" min="1";
                label for="tpm" { "Tokens per minute" }
                input #tpm name="tpm" type="number" min="1";
            }
            fieldset {
                legend { "Ephemeral tokens and browsers" }
                label {
                    input #mint name="mint" type="checkbox" value="yes";
                    " Its holder may mint short-lived tokens (" code { (MINT) } ") to hand to browsers and apps"
                }
                label for="origins" { "Web origins whose pages may use it or its tokens (comma-separated, e.g. https://app.example.com)" }
                input #origins name="origins" inputmode="url";
            }
            fieldset {
                legend { "Budget" }
                label for="budget_usd" { "Hard limit (USD)" }
                input #budget_usd name="budget_usd" type="number" min="0" step="0.01";
                label for="budget_period" { "Per" }
                select #budget_period name="budget_period" {
                    option value="month" { "month" }
                    option value="day" { "day" }
                    option value="none" { "ever" }
                }
            }
            label for="tags" { "Tags (comma-separated)" }
            input #tags name="tags";
            button type="submit" { "Create" }
        }
    }
}

/// The create form as posted.
#[derive(Deserialize)]
pub struct NewKey {
    name: String,
    project: String,
    #[serde(default)]
    endpoints: String,
    #[serde(default)]
    models: String,
    #[serde(default)]
    networks: String,
    #[serde(default)]
    expires_in_days: String,
    #[serde(default)]
    rpm: String,
    #[serde(default)]
    tpm: String,
    #[serde(default)]
    budget_usd: String,
    #[serde(default)]
    budget_period: String,
    #[serde(default)]
    tags: String,
    #[serde(default)]
    mint: String,
    #[serde(default)]
    origins: String,
}

/// The endpoint a key must allow for its holder to mint ephemeral tokens; no
/// preset includes it, so a key made here mints only when asked to.
const MINT: &str = "POST /keyward/v1/tokens";

fn list_of(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn number<T: std::str::FromStr>(text: &str, what: &str) -> Result<Option<T>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("{what} must be a number"))
}

impl NewKey {
    /// The API request, or what to fix.
    fn request(self) -> Result<CreateKey, String> {
        let models = list_of(&self.models);
        let networks = list_of(&self.networks);
        let preset = match self.endpoints.trim() {
            "" => "all",
            other => other,
        };
        let endpoints = if self.mint == "yes" {
            format!("{preset}, {MINT}")
        } else {
            preset.to_owned()
        };
        let origins = list_of(&self.origins);
        let policy = PolicyInput {
            endpoints: Some(endpoints),
            models: Some(models).filter(|m| !m.is_empty()),
            networks: Some(networks).filter(|n| !n.is_empty()),
            rpm: number(&self.rpm, "requests per minute")?,
            tpm: number(&self.tpm, "tokens per minute")?,
            origins: Some(origins).filter(|o| !o.is_empty()),
            ..PolicyInput::default()
        };
        let days: Option<i64> = number(&self.expires_in_days, "expiry")?;
        let budget = number::<f64>(&self.budget_usd, "the budget")?.map(|usd| BudgetInput {
            usd,
            period: Some(self.budget_period).filter(|p| !p.is_empty()),
            soft: None,
        });
        Ok(CreateKey {
            project: self.project.trim().to_owned(),
            org: None,
            name: self.name.trim().to_owned(),
            tags: list_of(&self.tags),
            expires_in_seconds: days.map(|d| d * 86_400),
            create_project: true,
            policy: Some(policy).filter(|p| !p.is_empty()),
            budget,
        })
    }
}

/// `POST /keys`: `POST /api/v1/keys`; the secret is shown once.
pub async fn create(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<NewKey>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let request = match form.request() {
        Ok(r) => r,
        Err(e) => return bad_form(&me, &e, "/keys/new"),
    };
    let body = json!(request);
    let answer = web
        .api
        .send(&visitor, Method::POST, "/api/v1/keys", Some(&body))
        .await;
    match answer.parse::<CreatedKey>() {
        Ok(created) => (
            StatusCode::CREATED,
            secret_once(&me, "Key created", &created),
        )
            .into_response(),
        Err(r) if r.code == "reauthentication_required" || r.code == "unauthorized" => {
            refused(&me, r, "/keys/new")
        }
        Err(r) => {
            let projects = projects(&web, &visitor).await;
            let page = layout::page(
                &me,
                "Create a key",
                "/keys",
                new_form(&projects, Some(&r.message)),
            );
            (r.status, page).into_response()
        }
    }
}

/// The one page that ever shows a secret: never cached (the layout's
/// `no-store`), not reachable again by any URL.
fn secret_once(me: &Me, title: &str, created: &CreatedKey) -> Markup {
    let id = created.record.record.id.as_str();
    let body = html! {
        (layout::message(Message::Notice, "Copy the key now: you will not see it again. keyward stores only its hash."))
        p {
            label for="secret" { "Key for " (created.record.record.name) }
        }
        p.secret {
            input #secret readonly value=(created.key) size="60" autocomplete="off";
            button type="button" data-copy="#secret" { "Copy" }
            span.copied role="status" aria-live="polite" {}
        }
        // A token's page is its parent's.
        p { a href={ "/keys/" (created.record.record.parent_id.as_ref().map_or(id, |p| p.as_str())) } { "Done" } }
    };
    layout::page(me, title, "/keys", body)
}

/// `GET /keys/{id}`: one key, its restrictions, and what can be done to it.
pub async fn show(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let path = format!(
        "/api/v1/keys/{}",
        local_path(&format!("/{id}")).trim_start_matches('/')
    );
    let key = match web.api.get(&visitor, &path).await.parse::<Key>() {
        Ok(k) => k,
        Err(r) => return refused(&me, r, "/keys"),
    };
    let r = &key.record;
    let id = r.id.as_str();
    let p = &r.policy;
    // Its tokens (ephemeral keys minted from it), from the organization's list.
    let tokens: Vec<Key> = match web
        .api
        .get(&visitor, "/api/v1/keys")
        .await
        .parse::<List<Key>>()
    {
        Ok(list) => list
            .data
            .into_iter()
            .filter(|t| t.record.parent_id.as_ref() == Some(&r.id))
            .collect(),
        Err(r) => return refused(&me, r, "/keys"),
    };
    let mints = p.endpoints.is_empty()
        || p.endpoints
            .iter()
            .any(|e| format!("{} {}", e.method, e.path) == MINT);
    let body = html! {
        dl {
            dt { "Key" } dd { code { (r.hint) } }
            dt { "Status" } dd { (r.status) @if key.rotation_due { " · rotation due" } }
            dt { "Created" } dd { (layout::time(r.created_at)) }
            dt { "Last used" } dd { (r.last_used_at.map(layout::time).unwrap_or_else(|| "never".into())) }
            dt { "Expires" } dd { (r.expires_at.map(layout::time).unwrap_or_else(|| "never".into())) }
            dt { "Endpoints" } dd { @if p.endpoints.is_empty() { "all of /v1" } @else { @for e in &p.endpoints { code { (e.method) " " (e.path) } " " } } }
            dt { "Models" } dd { @if p.models.is_empty() { "any" } @else { (p.models.join(", ")) } }
            dt { "Networks" } dd { @if p.networks.is_empty() { "any" } @else { @for n in &p.networks { (n.to_string()) " " } } }
            dt { "Rate limits" } dd { (p.rpm.map_or("-".into(), |v| format!("{v} requests/min"))) ", " (p.tpm.map_or("-".into(), |v| format!("{v} tokens/min"))) }
            dt { "Tags" } dd { (r.tags.join(", ")) }
        }
        @if me.can(Role::Member) && r.status != "revoked" {
            form.inline method="post" action={ "/keys/" (id) "/rotate" } {
                label for="grace" { "Old secret keeps working for (seconds)" }
                input #grace name="grace_seconds" type="number" min="0" value="0";
                button type="submit" { "Rotate" }
            }
            form.inline method="post" action={ "/keys/" (id) "/revoke" } {
                button.danger type="submit" data-confirm="Revoke this key? Calls with it are refused at once." { "Revoke" }
            }
        }
        @if r.parent_id.is_none() {
            (ephemeral_section(&me, &key, &tokens, mints))
        }
    };
    layout::page(&me, &r.name, "/keys", body).into_response()
}

/// A key's ephemeral-token settings: whether its holder may mint tokens, the
/// web origins allowed, its live tokens, and minting one here.
fn ephemeral_section(me: &Me, key: &Key, tokens: &[Key], mints: bool) -> Markup {
    let r = &key.record;
    let id = r.id.as_str();
    let live: Vec<&Key> = tokens
        .iter()
        .filter(|t| t.record.status == "active")
        .collect();
    html! {
        section {
            h2 { "Ephemeral tokens" }
            dl {
                dt { "Its holder mints tokens" } dd { @if mints { "yes (" code { (MINT) } ")" } @else { "no" } }
                dt { "Web origins" } dd { @if r.policy.origins.is_empty() { "none (no browser use)" } @else { (r.policy.origins.join(", ")) } }
            }
            p { "A token lives at most 24 hours, has at most this key's permissions, and ends when this key's secret is revoked, rotated out or reported leaked." }
            table {
                caption { "Live tokens: " (live.len()) }
                thead { tr { th { "Token" } th { "Created" } th { "Expires" } th { "Last used" } } }
                tbody {
                    @for t in &live {
                        tr {
                            td { code { (t.record.hint) } }
                            td { (layout::time(t.record.created_at)) }
                            td { (t.record.expires_at.map(layout::time).unwrap_or_else(|| "never".into())) }
                            td { (t.record.last_used_at.map(layout::time).unwrap_or_else(|| "never".into())) }
                        }
                    }
                }
            }
            @if me.can(Role::Member) && r.status == "active" {
                form.inline method="post" action={ "/keys/" (id) "/ephemeral" } {
                    label for="ttl_minutes" { "Mint a token for (minutes)" }
                    input #ttl_minutes name="ttl_minutes" type="number" min="1" max="1440" value="10";
                    label for="token_budget" { "Its own budget (USD, optional)" }
                    input #token_budget name="budget_usd" type="number" min="0" step="0.01";
                    button type="submit" { "Mint" }
                }
            }
        }
    }
}

/// The mint form.
#[derive(Deserialize)]
pub struct Mint {
    #[serde(default)]
    ttl_minutes: String,
    #[serde(default)]
    budget_usd: String,
}

/// `POST /keys/{id}/ephemeral`: a token minted from the key, shown once.
pub async fn mint(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Mint>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let back = format!("/keys/{id}");
    let request = number::<i64>(&form.ttl_minutes, "the lifetime").and_then(|ttl| {
        Ok(EphemeralRequest {
            ttl_seconds: ttl.map(|m| m.saturating_mul(60)),
            policy: None,
            budget_usd: number(&form.budget_usd, "the budget")?,
        })
    });
    let request = match request {
        Ok(r) => r,
        Err(e) => return bad_form(&me, &e, &back),
    };
    let path = format!("/api/v1/keys{}/ephemeral", local_path(&format!("/{id}")));
    let body = json!(request);
    let answer = web
        .api
        .send(&visitor, Method::POST, &path, Some(&body))
        .await;
    match answer.parse::<CreatedKey>() {
        Ok(created) => (
            StatusCode::CREATED,
            secret_once(&me, "Token minted", &created),
        )
            .into_response(),
        Err(r) => refused(&me, r, &back),
    }
}

/// `POST /keys/{id}/revoke`.
pub async fn revoke(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let back = format!("/keys/{id}");
    let path = format!("/api/v1/keys{}/revoke", local_path(&format!("/{id}")));
    let answer = web.api.send(&visitor, Method::POST, &path, None).await;
    if answer.ok() {
        return Redirect::to(local_path(&back)).into_response();
    }
    refused(&me, answer.refusal(), &back)
}

/// The rotate form.
#[derive(Deserialize)]
pub struct Rotate {
    #[serde(default)]
    grace_seconds: String,
}

/// `POST /keys/{id}/rotate`: a new secret, shown once.
pub async fn rotate(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Rotate>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let back = format!("/keys/{id}");
    let grace: Option<i64> = match number(&form.grace_seconds, "the grace period") {
        Ok(g) => g,
        Err(e) => return bad_form(&me, &e, &back),
    };
    let path = format!("/api/v1/keys{}/rotate", local_path(&format!("/{id}")));
    let body = json!({"grace_seconds": grace});
    let answer = web
        .api
        .send(&visitor, Method::POST, &path, Some(&body))
        .await;
    match answer.parse::<CreatedKey>() {
        Ok(created) => secret_once(&me, "Key rotated", &created).into_response(),
        Err(r) => refused(&me, r, &back),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(endpoints: &str, mint: &str, origins: &str) -> NewKey {
        NewKey {
            name: "k".into(),
            project: "web".into(),
            endpoints: endpoints.into(),
            models: String::new(),
            networks: String::new(),
            expires_in_days: String::new(),
            rpm: String::new(),
            tpm: String::new(),
            budget_usd: String::new(),
            budget_period: String::new(),
            tags: String::new(),
            mint: mint.into(),
            origins: origins.into(),
        }
    }

    fn endpoints(f: NewKey) -> Option<String> {
        f.request().unwrap().policy.and_then(|p| p.endpoints)
    }

    #[test]
    fn a_key_made_here_mints_tokens_only_when_asked() {
        // An empty endpoint list would let its holder mint: the form never sends one.
        assert_eq!(endpoints(form("", "", "")).as_deref(), Some("all"));
        assert_eq!(
            endpoints(form("chat-only", "", "")).as_deref(),
            Some("chat-only")
        );
        assert_eq!(
            endpoints(form("chat-only", "yes", "")).as_deref(),
            Some("chat-only, POST /keyward/v1/tokens")
        );
    }

    #[test]
    fn origins_are_a_trimmed_list() {
        let request = form("", "", " https://a.example , https://b.example,, ")
            .request()
            .unwrap();
        assert_eq!(
            request.policy.unwrap().origins,
            Some(vec![
                "https://a.example".to_owned(),
                "https://b.example".to_owned()
            ])
        );
    }
}
