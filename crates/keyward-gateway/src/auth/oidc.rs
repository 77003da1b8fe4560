//! `/auth/oidc`: "Sign in with Google" (any OpenID provider) as a first factor.
//!
//! `GET /auth/oidc/start` sends the browser to the provider; the provider sends
//! it back to `GET /auth/oidc/callback`. Both are top-level navigations, so both
//! answer with redirects (303), and failures in the `/auth` JSON error shape.
//!
//! What keeps a callback honest:
//! - The pending sign-in (PKCE verifier, nonce) is stored server-side, sealed,
//!   under the digest of its `state`, and taken once: a replayed callback finds
//!   nothing.
//! - A fresh random secret, set as an `HttpOnly` cookie by `start` and stored as
//!   its digest with the pending sign-in, must come back with the callback. A
//!   callback opened in another browser (an attacker's own callback URL pushed
//!   to a victim: login CSRF, session fixation) lacks it and is refused. A second
//!   `start` in the same browser replaces the cookie, so only the latest sign-in
//!   of a browser can complete.
//! - An identity is found by `(issuer, subject)`, which never changes. Without a
//!   link, it is linked to the user with the same email only when the provider
//!   verified that email, and a user is created only for an allowed domain
//!   (`keyward_auth::oidc::link_decision`).
//! - A user with a second factor still gives it: the callback ends in the same
//!   `second_factor_required` state as a right password.
//! - Neither the password throttle's counters nor its delays apply: a callback
//!   cannot be guessed (it needs a code the provider issued for our PKCE
//!   challenge), and counting a success would let anyone who controls some
//!   provider account clear the failures their address piled up guessing
//!   passwords.
//!
//! Where the browser lands afterwards: `/` when signed in, or
//! `/sign-in/second-factor` when a second factor is due (the dashboard serves
//! both; the pending cookie is set as after a password).

use super::events;
use super::session::{self, Origin};
use super::sign_in;
use crate::accounts::oidc::OidcRelyingParty;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_auth::oidc::{link_decision, Link, PendingOidcLogin, VerifiedIdentity};
use keyward_core::{OrgId, Role, Secret};
use keyward_store::{NewOneTimeToken, NewUser, OneTimeKind, OneTimeToken, User};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;
use subtle::ConstantTimeEq;

/// Where a browser signed in through the provider lands.
pub const SIGNED_IN_PAGE: &str = "/";
/// Where a browser lands when a second factor is due.
pub const SECOND_FACTOR_PAGE: &str = "/sign-in/second-factor";

/// The sealing purpose of a stored pending sign-in.
const PENDING_PURPOSE: &str = "oidc-pending-sign-in";

/// `GET /auth/oidc/start`: 303 to the provider, with the browser-binding cookie.
pub async fn start(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rp = relying_party(&state)?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    if !state
        .accounts
        .admit_oidc_start(origin.ip, state.clock.now_ms())
    {
        return Err(ApiError::Throttled(60));
    }
    let client = rp.client().await?;
    let (url, pending) = client.begin();
    let state_hash = keyward_auth::token::digest(&pending.state);
    let browser_secret = keyward_auth::token::generate();
    let plain = serde_json::to_string(&pending).map_err(|_| ApiError::Internal)?;
    let sealed = state
        .accounts
        .sealing
        .seal(PENDING_PURPOSE, &state_hash, &plain);
    let now = state.clock.now_ms();
    let lifetime_ms = keyward_auth::oidc::PENDING_LOGIN_LIFETIME.as_millis() as i64;
    state
        .store
        .create_one_time_token(&NewOneTimeToken {
            token_hash: state_hash,
            kind: OneTimeKind::OidcSignIn,
            user_id: None,
            org_id: None,
            data: json!({
                "pending": sealed.expose(),
                "browser": keyward_auth::token::digest(&browser_secret),
            }),
            created_at: now,
            expires_at: now + lifetime_ms,
        })
        .await?;
    let location = HeaderValue::from_str(&url).map_err(|_| ApiError::Internal)?;
    let cookies = &state.accounts.cookies;
    let binding = cookies.set(cookies.oidc, &browser_secret, lifetime_ms / 1_000);
    Ok((
        StatusCode::SEE_OTHER,
        [(header::LOCATION, location), (header::SET_COOKIE, binding)],
    )
        .into_response())
}

/// The provider's redirect back: `?state&code`, or `?state&error` when the
/// person or the provider said no. Other parameters (`iss`, `scope`, Google's
/// `authuser`) are ignored.
#[derive(Deserialize)]
pub struct Callback {
    state: Option<String>,
    code: Option<String>,
    error: Option<String>,
}

/// `GET /auth/oidc/callback`: finishes the sign-in (see the module's notes).
/// Whatever the outcome, the pending sign-in is used up and the binding cookie
/// removed.
pub async fn callback(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<Callback>,
) -> Response {
    let mut response = match finish(&state, peer, &headers, query).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    let cookies = &state.accounts.cookies;
    response
        .headers_mut()
        .append(header::SET_COOKIE, cookies.set(cookies.oidc, "", 0));
    response
}

async fn finish(
    state: &AppState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Callback,
) -> Result<Response, ApiError> {
    let rp = relying_party(state)?;
    let origin = Origin::of(state, peer.ip(), headers);
    let returned_state = query.state.filter(|s| !s.is_empty()).ok_or_else(|| {
        ApiError::OidcCallback(
            "oidc_callback_invalid",
            "the provider's answer names no sign-in (no state): start again".into(),
        )
    })?;
    let state_hash = keyward_auth::token::digest(&returned_state);
    let now = state.clock.now_ms();
    let taken = state
        .store
        .take_one_time_token(&state_hash, OneTimeKind::OidcSignIn, now)
        .await?
        .ok_or_else(|| {
            ApiError::OidcCallback(
                "oidc_sign_in_unknown",
                "this sign-in is unknown, already used or expired: start again".into(),
            )
        })?;
    if !same_browser(state, headers, &taken) {
        refused(state, None, "oidc", &origin, "oidc_browser_mismatch").await;
        return Err(ApiError::OidcCallback(
            "oidc_browser_mismatch",
            "this sign-in was begun in another browser (or its cookie is gone): start again here"
                .into(),
        ));
    }
    if let Some(error) = query.error {
        let error = provider_error_code(&error);
        refused(state, None, "oidc", &origin, "oidc_provider_error").await;
        return Err(ApiError::OidcCallback(
            "oidc_provider_error",
            format!("the OpenID provider did not sign you in ({error}): start again"),
        ));
    }
    let code = query.code.filter(|c| !c.is_empty()).ok_or_else(|| {
        ApiError::OidcCallback(
            "oidc_callback_invalid",
            "the provider's answer has neither a code nor an error: start again".into(),
        )
    })?;
    let pending = open_pending(state, &state_hash, &taken)?;
    let client = rp.client().await?;
    let identity = match client.finish(&pending, &returned_state, &code).await {
        Ok(identity) => identity,
        Err(e) => {
            refused(state, None, "oidc", &origin, e.code()).await;
            return Err(e.into());
        }
    };
    let user = match state
        .store
        .oidc_user(&identity.issuer, &identity.subject)
        .await?
    {
        Some(id) => state.store.get_user(&id).await?.ok_or(ApiError::Internal)?,
        None => link_or_create(state, rp, client.allowed_domains(), &identity, &origin).await?,
    };
    if let Some(why) = sign_in::refused(&user) {
        refused(state, Some(&user), user.id.as_str(), &origin, why).await;
        return Err(account_refused(why));
    }
    let answer = sign_in::after_first_factor(state, &user, &origin, headers, "oidc").await?;
    as_redirect(answer).await
}

/// The relying party, or 404 when OpenID Connect is not configured.
fn relying_party(state: &AppState) -> Result<&OidcRelyingParty, ApiError> {
    state
        .accounts
        .oidc
        .as_ref()
        .ok_or(ApiError::OidcNotConfigured)
}

/// Whether the request carries the binding cookie this sign-in began with
/// (digests compared in constant time).
fn same_browser(state: &AppState, headers: &HeaderMap, taken: &OneTimeToken) -> bool {
    let Some(presented) = session::cookie(headers, state.accounts.cookies.oidc) else {
        return false;
    };
    let Some(expected) = taken.data["browser"].as_str() else {
        return false;
    };
    let presented = keyward_auth::token::digest(presented);
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The provider's `error` parameter, kept only when it looks like an OAuth
/// error code (`access_denied`): anything else in the URL is not repeated.
fn provider_error_code(error: &str) -> &str {
    let plain = !error.is_empty()
        && error.len() <= 64
        && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain {
        error
    } else {
        "unrecognised error"
    }
}

fn open_pending(
    state: &AppState,
    state_hash: &str,
    taken: &OneTimeToken,
) -> Result<PendingOidcLogin, ApiError> {
    let sealed = taken.data["pending"].as_str().ok_or(ApiError::Internal)?;
    let plain = state
        .accounts
        .sealing
        .open(PENDING_PURPOSE, state_hash, &Secret::new(sealed))
        .map_err(|e| {
            tracing::error!(error = %e, "a stored OpenID Connect sign-in cannot be opened");
            ApiError::Internal
        })?;
    serde_json::from_str(plain.expose()).map_err(|_| ApiError::Internal)
}

/// A verified identity with no link yet: link it to the user with its email,
/// create a user in an allowed domain, or refuse.
async fn link_or_create(
    state: &AppState,
    rp: &OidcRelyingParty,
    allowed_domains: &[String],
    identity: &VerifiedIdentity,
    origin: &Origin,
) -> Result<User, ApiError> {
    let existing = state.store.user_by_email(&identity.email).await?;
    let now = state.clock.now_ms();
    let user = match (
        link_decision(identity, existing.is_some(), allowed_domains),
        existing,
    ) {
        (Link::ExistingUser, Some(user)) => {
            // An account that may not sign in is not changed either.
            if let Some(why) = sign_in::refused(&user) {
                refused(state, Some(&user), user.id.as_str(), origin, why).await;
                return Err(account_refused(why));
            }
            // An email address can pass to someone else (a reassigned work
            // address): an account already linked to one subject at this
            // provider is never linked to a second one by email.
            if state
                .store
                .has_oidc_identity(&user.id, &identity.issuer)
                .await?
            {
                let why = "linked_to_another_identity";
                refused(state, Some(&user), user.id.as_str(), origin, why).await;
                return Err(account_refused(why));
            }
            user
        }
        (Link::CreateUser, None) => {
            let org = jit_org(state, rp).await?;
            let user = state
                .store
                .create_user(&NewUser {
                    org_id: org,
                    email: identity.email.clone(),
                    password_hash: None,
                    role: Role::Member,
                    created_at: now,
                })
                .await?;
            events::record(
                state,
                Some(&user),
                user.id.as_str(),
                "user.created",
                origin,
                json!({"email": user.email, "role": user.role, "via": "oidc"}),
            )
            .await;
            user
        }
        (Link::Refuse(e), _) => {
            refused(state, None, &identity.email, origin, e.code()).await;
            return Err(e.into());
        }
        // link_decision answers from `existing.is_some()`: no other pair occurs.
        _ => return Err(ApiError::Internal),
    };
    state
        .store
        .link_oidc(&identity.issuer, &identity.subject, &user.id, now)
        .await?;
    events::record(
        state,
        Some(&user),
        user.id.as_str(),
        "user.oidc_linked",
        origin,
        json!({"issuer": identity.issuer, "subject": identity.subject}),
    )
    .await;
    Ok(user)
}

/// The organization just-in-time users join, by id or name.
async fn jit_org(state: &AppState, rp: &OidcRelyingParty) -> Result<OrgId, ApiError> {
    let name = rp.org().ok_or(ApiError::Internal)?;
    let found = match OrgId::parse(name) {
        Some(id) => state.store.get_org(&id).await?,
        None => state.store.org_by_name(name).await?,
    };
    match found {
        Some(org) => Ok(org.id),
        None => {
            tracing::error!(
                org = name,
                "the organization for OpenID Connect sign-ups does not exist"
            );
            Err(ApiError::Internal)
        }
    }
}

/// Records `user.sign_in_refused` with its reason.
async fn refused(state: &AppState, user: Option<&User>, actor: &str, origin: &Origin, why: &str) {
    events::record(
        state,
        user,
        actor,
        "user.sign_in_refused",
        origin,
        json!({"reason": why, "method": "oidc"}),
    )
    .await;
}

/// The answer for an account that may not sign in. The person proved to the
/// provider that they own the account's email, so, unlike after a password,
/// saying why tells no one anything they may not know.
fn account_refused(why: &str) -> ApiError {
    let message = match why {
        "disabled" => "this account is disabled: ask an owner of your organization",
        "locked" => {
            "this account is locked after too many failed sign-ins: reset its password or ask \
             an owner to unlock it"
        }
        "linked_to_another_identity" => {
            "this account signs in with another identity at this provider; the email alone \
             does not hand it over: sign in with a password and ask an owner"
        }
        _ => "this account needs a new password before it signs in: reset its password",
    };
    ApiError::OidcCallback("oidc_account_refused", message.into())
}

/// Turns the JSON answer of the shared sign-in path (`signed_in` or
/// `second_factor_required`, the `/auth/login` contract) into the redirect a
/// browser coming back from the provider needs, keeping its cookies.
async fn as_redirect(answer: Response) -> Result<Response, ApiError> {
    let (parts, body) = answer.into_parts();
    let body = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| ApiError::Internal)?;
    let status: serde_json::Value =
        serde_json::from_slice(&body).map_err(|_| ApiError::Internal)?;
    let location = match status["status"].as_str() {
        Some("signed_in") => SIGNED_IN_PAGE,
        Some("second_factor_required") => SECOND_FACTOR_PAGE,
        _ => return Err(ApiError::Internal),
    };
    let mut response = (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response();
    for cookie in parts.headers.get_all(header::SET_COOKIE) {
        response
            .headers_mut()
            .append(header::SET_COOKIE, cookie.clone());
    }
    Ok(response)
}
