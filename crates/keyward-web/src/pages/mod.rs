//! The pages, one module per section, and what they share: answering an API
//! refusal, and redirects that carry the API's cookies.

mod activity;
mod budgets;
mod keys;
mod leaks;
mod members;
mod overview;
mod reset;
mod security;
mod settings;
mod sign_in;
mod usage;

use crate::api::Refusal;
use crate::layout::{self, Message};
use crate::session::Me;
use crate::SharedWeb;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::html;

/// Every page route.
pub fn router() -> Router<SharedWeb> {
    Router::new()
        .route("/", get(overview::show))
        .route("/sign-in", get(sign_in::form).post(sign_in::submit))
        .route(
            "/sign-in/second-factor",
            get(sign_in::second_factor_form).post(sign_in::second_factor_submit),
        )
        .route("/sign-out", post(sign_in::sign_out))
        .route(
            "/reauthenticate",
            get(sign_in::reauthenticate_form).post(sign_in::reauthenticate_submit),
        )
        .route("/keys", get(keys::list).post(keys::create))
        .route("/keys/new", get(keys::new))
        .route("/keys/{id}", get(keys::show))
        .route("/keys/{id}/revoke", post(keys::revoke))
        .route("/keys/{id}/rotate", post(keys::rotate))
        .route("/keys/{id}/ephemeral", post(keys::mint))
        .route("/usage", get(usage::show))
        .route("/usage.csv", get(usage::csv))
        .route("/budgets", get(budgets::show).post(budgets::set))
        .route("/budgets/delete", post(budgets::delete))
        .route("/security", get(security::show))
        .route("/security/password", post(security::change_password))
        .route("/security/totp", post(security::start_totp))
        .route("/security/totp/confirm", post(security::confirm_totp))
        .route("/security/totp/remove", post(security::remove_totp))
        .route(
            "/security/passkeys/{id}/remove",
            post(security::remove_passkey),
        )
        .route("/security/sessions/{id}/end", post(security::end_session))
        .route("/security/sessions/end-others", post(security::end_others))
        .route("/security/sessions/end-all", post(security::end_all))
        .route("/members", get(members::list))
        .route("/members/invite", post(members::invite))
        .route("/members/{id}", post(members::change))
        .route("/settings", get(settings::show))
        .route("/settings/webhooks", post(settings::create_webhook))
        .route("/settings/webhooks/{id}", get(settings::deliveries))
        .route("/settings/webhooks/{id}/test", post(settings::test_webhook))
        .route(
            "/settings/webhooks/{id}/delete",
            post(settings::delete_webhook),
        )
        .route("/settings/recipients", post(settings::create_recipient))
        .route(
            "/settings/recipients/{id}/delete",
            post(settings::delete_recipient),
        )
        .route(
            "/reset",
            get(reset::request_form).post(reset::request_submit),
        )
        .route(
            "/reset-password",
            get(reset::reset_form).post(reset::reset_submit),
        )
        .route(
            "/accept-invitation",
            get(reset::invitation_form).post(reset::invitation_submit),
        )
        .route(
            "/not-me",
            get(reset::not_me_form).post(reset::not_me_submit),
        )
        .route("/leaks", get(leaks::list))
        .route("/activity", get(activity::list))
}

/// A 303 to `to` that passes on the API's `Set-Cookie` headers.
fn redirect_with(to: &str, cookies: Vec<HeaderValue>) -> Response {
    let mut response = Redirect::to(to).into_response();
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// The answer to an API refusal on a page of a signed-in user: the sign-in
/// page when the session is gone, the re-authentication page (coming back
/// to `back`) when the action needs a recent sign-in, else the API's message
/// with its status.
fn refused(me: &Me, refusal: Refusal, back: &str) -> Response {
    match refusal.code.as_str() {
        "unauthorized" => Redirect::to("/sign-in").into_response(),
        "reauthentication_required" => {
            Redirect::to(&format!("/reauthenticate?back={}", local_path(back))).into_response()
        }
        _ => {
            let body = html! {
                (layout::message(Message::Error, &refusal.message))
                p { a href=(local_path(back)) { "Back" } }
            };
            let status = refusal.status;
            (status, layout::page(me, "Refused", "", body)).into_response()
        }
    }
}

/// Now, in ms since the epoch (0 if the clock is before 1970).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// `path` if it is a path on this site, else `/` (never an open redirect).
fn local_path(path: &str) -> &str {
    // Letters, digits, `/`, `-`, `_`: every page path, and nothing that could
    // leave the site or the query string.
    let ok = path.starts_with('/')
        && !path.starts_with("//")
        && path
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/-_".contains(&b));
    if ok {
        path
    } else {
        "/"
    }
}

/// A bad form (a number that is not one): 400 with what to fix.
fn bad_form(me: &Me, message: &str, back: &str) -> Response {
    let refusal = Refusal {
        status: StatusCode::BAD_REQUEST,
        code: "bad_request".into(),
        message: message.to_owned(),
    };
    refused(me, refusal, back)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_redirect_targets() {
        for bad in [
            "//evil.example/x",
            "https://evil.example",
            "/\\evil",
            "keys",
            "/a b",
            "/x?y=1",
        ] {
            assert_eq!(local_path(bad), "/", "{bad}");
        }
        assert_eq!(local_path("/keys/new"), "/keys/new");
    }
}
