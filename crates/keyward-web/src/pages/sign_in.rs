//! Signing in (password, then TOTP, a recovery code or a passkey), signing
//! out, and confirming it is still you before a sensitive action. Each form
//! posts here and is passed on to the same `/auth` route the API serves.

use super::{local_path, redirect_with};
use crate::api::Visitor;
use crate::layout::{self, Message};
use crate::session::Viewer;
use crate::SharedWeb;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::{html, Markup};
use serde::Deserialize;
use serde_json::json;

/// The sign-in form.
#[derive(Deserialize)]
pub struct Credentials {
    email: String,
    password: String,
}

fn sign_in_page(web: &SharedWeb, email: &str, error: Option<&str>) -> Markup {
    let body = html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/sign-in" {
            label for="email" { "Email" }
            input #email type="email" name="email" autocomplete="username" required value=(email);
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Sign in" }
        }
        p { a href="/reset" { "Forgot your password?" } }
        @if web.options.oidc {
            p { a.button href="/auth/oidc/start" { "Sign in with Google" } }
        }
    };
    layout::bare("Sign in", body)
}

/// `GET /sign-in`.
pub async fn form(State(web): State<SharedWeb>) -> Markup {
    sign_in_page(&web, "", None)
}

/// `POST /sign-in`: `POST /auth/login`.
pub async fn submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<Credentials>,
) -> Response {
    let body = json!({"email": form.email, "password": form.password});
    let answer = web
        .api
        .send(&visitor, Method::POST, "/auth/login", Some(&body))
        .await;
    if answer.ok() {
        let to = match answer.body["status"].as_str() {
            Some("second_factor_required") => {
                let methods: Vec<&str> = answer.body["methods"]
                    .as_array()
                    .map(|m| m.iter().filter_map(|v| v.as_str()).collect())
                    .unwrap_or_default();
                format!("/sign-in/second-factor?methods={}", methods.join(","))
            }
            _ => "/".to_owned(),
        };
        return redirect_with(&to, answer.cookies);
    }
    let refusal = answer.refusal();
    let page = sign_in_page(&web, &form.email, Some(&refusal.message));
    (refusal.status, page).into_response()
}

/// Which second factors the sign-in offered (not secret: the names only).
#[derive(Deserialize, Default)]
pub struct Methods {
    #[serde(default)]
    methods: String,
}

fn second_factor_page(methods: &str, error: Option<&str>) -> Markup {
    let has = |m: &str| methods.is_empty() || methods.split(',').any(|x| x == m);
    let body = html! {
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        @if has("passkey") {
            section {
                h2 { "Passkey or security key" }
                p.error #passkey-error role="alert" hidden {}
                button type="button" data-passkey-sign-in { "Use a passkey" }
            }
        }
        @if has("totp") {
            section {
                h2 { "Authenticator app" }
                form.stack method="post" action="/sign-in/second-factor" {
                    label for="totp" { "Six-digit code" }
                    input #totp name="totp" autocomplete="one-time-code" inputmode="numeric" required;
                    button type="submit" { "Continue" }
                }
            }
            section {
                h2 { "Recovery code" }
                form.stack method="post" action="/sign-in/second-factor" {
                    label for="recovery_code" { "One of your recovery codes" }
                    input #recovery_code name="recovery_code" autocomplete="off" required;
                    button type="submit" { "Continue" }
                }
            }
        }
        p { a href="/sign-in" { "Start again" } }
    };
    layout::bare("Second step", body)
}

/// `GET /sign-in/second-factor`.
pub async fn second_factor_form(Query(q): Query<Methods>) -> Markup {
    second_factor_page(&q.methods, None)
}

/// The second-factor form: one of the two fields.
#[derive(Deserialize)]
pub struct Factor {
    totp: Option<String>,
    recovery_code: Option<String>,
}

/// `POST /sign-in/second-factor`: `POST /auth/login/second-factor`.
pub async fn second_factor_submit(
    State(web): State<SharedWeb>,
    visitor: Visitor,
    Form(form): Form<Factor>,
) -> Response {
    let body = match (form.totp, form.recovery_code) {
        (Some(code), _) => json!({"totp": code.trim()}),
        (None, Some(code)) => json!({"recovery_code": code.trim()}),
        (None, None) => json!({}),
    };
    let answer = web
        .api
        .send(
            &visitor,
            Method::POST,
            "/auth/login/second-factor",
            Some(&body),
        )
        .await;
    if answer.ok() {
        return redirect_with("/", answer.cookies);
    }
    let refusal = answer.refusal();
    if refusal.status == StatusCode::UNAUTHORIZED && refusal.code == "unauthorized" {
        // The pending sign-in expired or was used: start again.
        return Redirect::to("/sign-in").into_response();
    }
    (
        refusal.status,
        second_factor_page("", Some(&refusal.message)),
    )
        .into_response()
}

/// `POST /sign-out`: `POST /auth/logout`.
pub async fn sign_out(State(web): State<SharedWeb>, visitor: Visitor) -> Response {
    let answer = web
        .api
        .send(&visitor, Method::POST, "/auth/logout", None)
        .await;
    redirect_with("/sign-in", answer.cookies)
}

/// Where to go back to after confirming.
#[derive(Deserialize, Default)]
pub struct Back {
    #[serde(default)]
    back: String,
}

fn reauthenticate_page(
    web: &SharedWeb,
    viewer: &Viewer,
    back: &str,
    error: Option<&str>,
) -> Markup {
    let me = &viewer.me;
    let totp = me.second_factors.iter().any(|f| f == "totp");
    let passkey = me.second_factors.iter().any(|f| f == "passkey");
    let body = html! {
        p { "This action needs a recent sign-in. Confirm it is you, then do it again." }
        @if let Some(e) = error { (layout::message(Message::Error, e)) }
        form.stack method="post" action="/reauthenticate" {
            input type="hidden" name="back" value=(local_path(back));
            label for="password" { "Password" }
            input #password type="password" name="password" autocomplete="current-password" required;
            button type="submit" { "Confirm" }
        }
        @if totp {
            form.stack method="post" action="/reauthenticate" {
                input type="hidden" name="back" value=(local_path(back));
                label for="totp" { "Or a code from your authenticator app" }
                input #totp name="totp" autocomplete="one-time-code" inputmode="numeric" required;
                button type="submit" { "Confirm" }
            }
        }
        @if passkey {
            p.error #passkey-error role="alert" hidden {}
            button type="button" data-passkey-reauthenticate data-back=(local_path(back)) { "Use a passkey" }
        }
        @if web.options.oidc {
            // An account made through the provider may have no password: a
            // fresh sign-in there counts as recent.
            p { a.button href="/auth/oidc/start" { "Sign in with Google again" } }
        }
    };
    layout::page(me, "Confirm it is you", "", body)
}

/// `GET /reauthenticate?back=…`.
pub async fn reauthenticate_form(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Query(q): Query<Back>,
) -> Markup {
    reauthenticate_page(&web, &viewer, &q.back, None)
}

/// The re-authentication form: a password or a TOTP code.
#[derive(Deserialize)]
pub struct Confirm {
    #[serde(default)]
    back: String,
    password: Option<String>,
    totp: Option<String>,
}

/// `POST /reauthenticate`: `POST /auth/reauthenticate`, then back.
pub async fn reauthenticate_submit(
    State(web): State<SharedWeb>,
    viewer: Viewer,
    Form(form): Form<Confirm>,
) -> Response {
    let body = match (form.password, form.totp) {
        (Some(p), _) => json!({"password": p}),
        (None, Some(code)) => json!({"totp": code.trim()}),
        (None, None) => json!({}),
    };
    let answer = web
        .api
        .send(
            &viewer.visitor,
            Method::POST,
            "/auth/reauthenticate",
            Some(&body),
        )
        .await;
    if answer.ok() {
        return Redirect::to(local_path(&form.back)).into_response();
    }
    let refusal = answer.refusal();
    let page = reauthenticate_page(&web, &viewer, &form.back, Some(&refusal.message));
    (refusal.status, page).into_response()
}
