//! Members: the people of the organization. Admins read the list; owners
//! invite (the link shown once, for when email is not configured), change
//! roles, disable, enable and unlock. Viewers and members are not offered the
//! section, and the API refuses them anyway: the page shows its refusal.

use super::security::segment;
use super::{redirect_with, refused};
use crate::layout::{self, Message};
use crate::session::{Me, Viewer};
use crate::SharedWeb;
use axum::extract::{Path, Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use keyward_api::users::{Invitation, User};
use keyward_api::List;
use keyward_core::Role;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

const BACK: &str = "/members";

/// What was just done (fixed words; the notice text is ours).
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: String,
}

fn notice(done: &str) -> Option<&'static str> {
    Some(match done {
        "role" => "Role changed: it applies from the user's next request.",
        "disable" => "User disabled: every session of theirs has ended.",
        "enable" => "User enabled: they can sign in again.",
        "unlock" => "User unlocked: they can sign in again.",
        _ => return None,
    })
}

/// `GET /members`.
pub async fn list(State(web): State<SharedWeb>, viewer: Viewer, Query(q): Query<Done>) -> Response {
    let Viewer { me, visitor } = viewer;
    let users = match web
        .api
        .get(&visitor, "/api/v1/users")
        .await
        .parse::<List<User>>()
    {
        Ok(l) => l.data,
        Err(r) => return refused(&me, r, "/"),
    };
    let owner = me.can(Role::Owner);
    let body = html! {
        @if let Some(n) = notice(&q.done) { (layout::message(Message::Notice, n)) }
        @if owner { (invite_form(None)) }
        table {
            caption { (users.len()) " members" }
            thead { tr {
                th { "Email" } th { "Role" } th { "Status" } th { "Authenticator app" } th { "Joined" }
                @if owner { th { "Actions" } }
            } }
            tbody {
                @for u in &users {
                    tr {
                        td { (u.email) @if u.id.as_str() == me.id { " " strong { "(you)" } } }
                        td { (u.role.as_str()) }
                        td { (status(u)) }
                        td { @if u.totp { "on" } @else { "off" } }
                        td { (layout::time(u.created_at)) }
                        @if owner {
                            td { @if u.id.as_str() != me.id { (actions(u)) } }
                        }
                    }
                }
            }
        }
        @if !owner {
            p { "Only owners invite people and change roles." }
        }
    };
    layout::page(&me, "Members", "/members", body).into_response()
}

fn status(u: &User) -> &'static str {
    if u.disabled_at.is_some() {
        "disabled"
    } else if u.locked_at.is_some() {
        "locked"
    } else {
        "active"
    }
}

fn actions(u: &User) -> Markup {
    let id = segment(u.id.as_str());
    let action = format!("/members/{id}");
    let select = format!("role-{id}");
    html! {
        form.inline method="post" action=(action) {
            input type="hidden" name="action" value="role";
            label for=(select) { "Role of " (u.email) }
            select id=(select) name="role" {
                @for r in Role::ALL {
                    option value=(r.as_str()) selected[r == u.role] { (r.as_str()) }
                }
            }
            button type="submit" { "Change role" }
        }
        @if u.disabled_at.is_some() {
            form.inline method="post" action=(action) {
                input type="hidden" name="action" value="enable";
                button type="submit" { "Enable " (u.email) }
            }
        } @else {
            form.inline method="post" action=(action) {
                input type="hidden" name="action" value="disable";
                button.danger type="submit" data-confirm="Disable this user? Every session of theirs ends at once." { "Disable " (u.email) }
            }
        }
        @if u.locked_at.is_some() {
            form.inline method="post" action=(action) {
                input type="hidden" name="action" value="unlock";
                button type="submit" { "Unlock " (u.email) }
            }
        }
    }
}

fn invite_form(error: Option<&str>) -> Markup {
    html! {
        section {
            h2 { "Invite someone" }
            @if let Some(e) = error { (layout::message(Message::Error, e)) }
            form.stack method="post" action="/members/invite" {
                label for="invite_email" { "Email" }
                input #invite_email type="email" name="email" autocomplete="off" required;
                label for="invite_role" { "Role" }
                select #invite_role name="role" {
                    @for r in Role::ALL {
                        option value=(r.as_str()) selected[r == Role::Member] { (r.as_str()) }
                    }
                }
                button type="submit" { "Send invitation" }
            }
        }
    }
}

/// The invitation form.
#[derive(Deserialize)]
pub struct Invite {
    email: String,
    role: String,
}

/// `POST /members/invite`: `POST /api/v1/invitations`; the link is shown
/// once (it is also emailed when email is configured).
pub async fn invite(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<Invite>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let body = json!({"email": form.email.trim(), "role": form.role});
    let answer = web
        .api
        .send(&visitor, Method::POST, "/api/v1/invitations", Some(&body))
        .await;
    match answer.parse::<Invitation>() {
        Ok(inv) => (StatusCode::CREATED, invited(&me, &inv)).into_response(),
        Err(r) if r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::CONFLICT => {
            let page = layout::page(&me, "Members", "/members", invite_form(Some(&r.message)));
            (r.status, page).into_response()
        }
        Err(r) => refused(&me, r, BACK),
    }
}

/// The one page that shows an invitation's link: never cached, not reachable
/// again; the link's secret is in its fragment, which browsers do not send.
fn invited(me: &Me, inv: &Invitation) -> Markup {
    let body = html! {
        (layout::message(Message::Notice, "Invitation sent by email when email is configured. You can also hand over this link yourself: it works once, for 7 days, and you will not see it again."))
        p {
            label for="invitation_url" { "Invitation link for " (inv.email) " (" (inv.role.as_str()) ")" }
        }
        p.secret {
            input #invitation_url readonly value=(inv.invitation_url) size="70" autocomplete="off";
            " "
            button type="button" data-copy="#invitation_url" { "Copy" }
            span.copied role="status" aria-live="polite" {}
        }
        p { "Expires " (layout::time(inv.expires_at)) " UTC." }
        p { a href="/members" { "Done" } }
    };
    layout::page(me, "Invitation created", "/members", body)
}

/// The per-user forms: `action` is `role` (with `role`), `disable`,
/// `enable` or `unlock`.
#[derive(Deserialize)]
pub struct Change {
    action: String,
    #[serde(default)]
    role: String,
}

/// `POST /members/{id}`: `PATCH /api/v1/users/{id}`.
pub async fn change(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Path(id): Path<String>,
    Form(form): Form<Change>,
) -> Response {
    let Viewer { me, visitor } = viewer;
    let (body, done) = match form.action.as_str() {
        "role" => (json!({"role": form.role}), "role"),
        "disable" => (json!({"disabled": true}), "disable"),
        "enable" => (json!({"disabled": false}), "enable"),
        "unlock" => (json!({"unlock": true}), "unlock"),
        _ => return super::bad_form(&me, "unknown action", BACK),
    };
    let path = format!("/api/v1/users/{}", segment(&id));
    let answer = web
        .api
        .send(&visitor, Method::PATCH, &path, Some(&body))
        .await;
    if answer.ok() {
        return redirect_with(&format!("/members?done={done}"), answer.cookies);
    }
    refused(&me, answer.refusal(), BACK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_come_from_a_fixed_list() {
        assert!(notice("role").is_some());
        assert!(notice("<b>").is_none());
    }
}
