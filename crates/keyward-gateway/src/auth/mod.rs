//! `/auth`: signing in (a password or an OpenID provider, then a second
//! factor), sessions, password and second-factor changes, re-authentication.
//! The rules live in `keyward-auth`; the state they need in `crate::accounts`;
//! these handlers apply them to requests and record what happened.

pub(crate) mod devices;
pub(crate) mod events;
pub(crate) mod factors;
pub mod housekeeping;
pub(crate) mod links;
pub(crate) mod oidc;
pub(crate) mod passkeys;
pub(crate) mod profile;
pub(crate) mod rules;
pub mod session;
pub(crate) mod sign_in;

pub use session::SignedIn;

use crate::json_api::json_rejections;
use crate::state::SharedState;
use axum::routing::{delete, get, post};
use axum::Router;

/// The `/auth` routes.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/auth/login", post(sign_in::login))
        .route("/auth/login/second-factor", post(sign_in::second_factor))
        .route("/auth/login/passkey", post(sign_in::passkey_challenge))
        .route("/auth/logout", post(sign_in::logout))
        .route("/auth/reauthenticate", post(sign_in::reauthenticate))
        .route(
            "/auth/reauthenticate/passkey",
            post(passkeys::reauthentication_challenge),
        )
        .route("/auth/password-reset", post(links::request_reset))
        .route("/auth/password-reset/confirm", post(links::confirm_reset))
        .route("/auth/invitations/accept", post(links::accept_invitation))
        .route("/auth/not-me", post(links::not_me))
        .route("/auth/oidc/start", get(oidc::start))
        .route("/auth/oidc/callback", get(oidc::callback))
        .route("/auth/me", get(profile::me))
        .route("/auth/sessions", get(profile::sessions))
        .route("/auth/sessions/{id}", delete(profile::end_session))
        .route("/auth/sessions/end-others", post(profile::end_others))
        .route("/auth/sessions/end-all", post(profile::end_all))
        .route("/auth/password", post(profile::change_password))
        .route(
            "/auth/totp",
            post(profile::start_totp).delete(profile::remove_totp),
        )
        .route("/auth/totp/confirm", post(profile::confirm_totp))
        .route(
            "/auth/passkeys",
            get(passkeys::list).post(passkeys::finish_registration),
        )
        .route(
            "/auth/passkeys/registration",
            post(passkeys::start_registration),
        )
        .route("/auth/passkeys/{id}", delete(passkeys::remove))
        .layer(axum::middleware::map_response(json_rejections))
        .layer(axum::extract::DefaultBodyLimit::max(64 * 1024))
        .layer(axum::middleware::map_response(
            crate::accounts::web::security_headers,
        ))
}
