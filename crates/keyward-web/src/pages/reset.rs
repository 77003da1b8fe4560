//! The pages for people who are not signed in: asking for a password reset,
//! and the three pages that single-use links in emails open — choosing a new
//! password (`/reset-password`), accepting an invitation
//! (`/accept-invitation`) and "this wasn't me" (`/not-me`).
//!
//! Where the link's secret travels, and why: the gateway writes these links
//! with the secret in the URL's **fragment** (`…/reset-password#token=…`,
//! see `keyward-gateway`'s `auth/links.rs`). Browsers never send a fragment
//! to any server, so the secret stays out of our access logs, out of proxies'
//! logs and out of `Referer` headers (which `no-referrer` drops as well);
//! nothing needed changing there. The page's script (`app.js`,
//! `data-link-token`) copies it into the form's `token` field and removes it
//! from the address bar and history; the form then POSTs it in the body, and
//! this page passes it to the `/auth` route. Without JavaScript the field is
//! visible, so the secret can be pasted by hand: the page still works.

use super::redirect_with;
use crate::api::Visitor;
use crate::layout::{self, Message};
use crate::SharedWeb;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

/// The email form.
#[derive(Deserialize)]
pub struct ResetRequest {
    email: String,
}

fn request_page(notice: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(n) = notice { (layout::message(Message::Notice, n)) }
        p { "Enter the email address of your account. If it has one, a link to choose a new password is sent to it; it works once, for 30 minutes." }
        form.stack method="post" action="/reset" {
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="username" required;
            button type="submit" { "Send the link" }
        }
        p { a href="/sign-in" { "Back to sign-in" } }
    };
    layout::bare("Reset your password", body)
}

/// `GET /reset`.
pub async fn request_form() -> Markup {
    request_page(None)
}

/// `POST /reset`: `POST /auth/password-reset`. The same answer whether or
/// not the address has an account, as the API's.
pub async fn request_submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<ResetRequest>,
) -> Response {
    let body = json!({"email": form.email.trim()});
    let answer = web
        .api
        .send(&visitor, Method::POST, "/auth/password-reset", Some(&body))
        .await;
    if !answer.ok() && answer.status != StatusCode::TOO_MANY_REQUESTS {
        let r = answer.refusal();
        return (r.status, request_page_error(&r.message)).into_response();
    }
    request_page(Some(
        "If an account uses this address, a link to reset its password is on its way. Check your inbox (and spam folder).",
    ))
    .into_response()
}

fn request_page_error(message: &str) -> Markup {
    let body = html! {
        (layout::message(Message::Error, message))
        p { a href="/reset" { "Try again" } }
    };
    layout::bare("Reset your password", body)
}

/// The link's secret field: filled from the URL's fragment by the script,
/// typed or pasted by hand without it.
fn token_field(token: &str) -> Markup {
    html! {
        div.stack data-link-token {
            label for="token" { "Code from the link (the part after #token=)" }
            input #token name="token" autocomplete="off" required value=(token);
        }
    }
}

/// A form posted from a link's page: the token and the other fields.
#[derive(Deserialize)]
pub struct LinkForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    new_password: String,
    #[serde(default)]
    password: String,
}

fn reset_page(token: &str, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/reset-password" {
            (token_field(token))
            label for="new_password" { "New password" }
            input #new_password type="password" name="new_password" autocomplete="new-password" required;
            button type="submit" { "Set the new password" }
        }
        p { "Every session of your account ends. If you use an authenticator app or a passkey, sign-in still asks for it." }
    };
    layout::bare("Choose a new password", body)
}

/// `GET /reset-password` (the emailed link, `#token=` in its fragment).
pub async fn reset_form() -> Markup {
    reset_page("", None)
}

/// `POST /reset-password`: `POST /auth/password-reset/confirm`.
pub async fn reset_submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<LinkForm>,
) -> Response {
    let body = json!({"token": form.token.trim(), "new_password": form.new_password});
    let answer = web
        .api
        .send(
            &visitor,
            Method::POST,
            "/auth/password-reset/confirm",
            Some(&body),
        )
        .await;
    if answer.ok() {
        let body = html! {
            (layout::message(Message::Notice, "Your password is changed and every session of your account has ended."))
            p { a.button href="/sign-in" { "Sign in" } }
        };
        return layout::bare("Password changed", body).into_response();
    }
    let r = answer.refusal();
    (r.status, reset_page(&form.token, Some(&r.message))).into_response()
}

fn invitation_page(token: &str, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        p { "Choose the password of your new account: at least 15 characters; a password manager is welcome." }
        form.stack method="post" action="/accept-invitation" {
            (token_field(token))
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="new-password" required;
            button type="submit" { "Accept the invitation" }
        }
    };
    layout::bare("Accept the invitation", body)
}

/// `GET /accept-invitation` (the emailed link, `#token=` in its fragment).
pub async fn invitation_form() -> Markup {
    invitation_page("", None)
}

/// `POST /accept-invitation`: `POST /auth/invitations/accept`, which signs
/// the new account in.
pub async fn invitation_submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<LinkForm>,
) -> Response {
    let body = json!({"token": form.token.trim(), "password": form.password});
    let answer = web
        .api
        .send(
            &visitor,
            Method::POST,
            "/auth/invitations/accept",
            Some(&body),
        )
        .await;
    if answer.ok() {
        return redirect_with("/", answer.cookies);
    }
    let r = answer.refusal();
    (r.status, invitation_page(&form.token, Some(&r.message))).into_response()
}

fn not_me_page(token: &str, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        p { "If you did not sign in from the device in the email, secure your account: every session ends at once, and a new password is needed before the next sign-in." }
        form.stack method="post" action="/not-me" {
            (token_field(token))
            button.danger type="submit" { "It wasn't me: secure my account" }
        }
    };
    layout::bare("This wasn't me", body)
}

/// `GET /not-me` (the emailed link, `#token=` in its fragment).
pub async fn not_me_form() -> Markup {
    not_me_page("", None)
}

/// `POST /not-me`: `POST /auth/not-me`.
pub async fn not_me_submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<LinkForm>,
) -> Response {
    let body = json!({"token": form.token.trim()});
    let answer = web
        .api
        .send(&visitor, Method::POST, "/auth/not-me", Some(&body))
        .await;
    if answer.ok() {
        let body = html! {
            (layout::message(Message::Notice, "Every session of your account has ended. Choose a new password to sign in again."))
            p { a.button href="/reset" { "Reset your password" } }
        };
        return layout::bare("Account secured", body).into_response();
    }
    let r = answer.refusal();
    (r.status, not_me_page(&form.token, Some(&r.message))).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pages_never_put_the_token_in_a_url() {
        // The token comes back only as a field's value (a POST body), never
        // in a form's action, a link or a redirect.
        for page in [
            reset_page("SECRETTOKEN", Some("x")),
            invitation_page("SECRETTOKEN", None),
            not_me_page("SECRETTOKEN", None),
        ] {
            let html = page.into_string();
            assert_eq!(html.matches("SECRETTOKEN").count(), 1, "{html}");
            assert!(html.contains(r#"value="SECRETTOKEN""#));
            assert!(!html.contains("?token") && !html.contains("href=\"/reset-password"));
            assert!(html.contains(r#"method="post""#));
        }
    }

    #[test]
    fn the_password_fields_name_themselves_for_password_managers() {
        assert!(reset_page("", None)
            .into_string()
            .contains(r#"autocomplete="new-password""#));
        assert!(invitation_page("", None)
            .into_string()
            .contains(r#"autocomplete="new-password""#));
        assert!(request_page(None)
            .into_string()
            .contains(r#"autocomplete="username""#));
    }
}
