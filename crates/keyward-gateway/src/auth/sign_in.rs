//! Signing in: a password, then a second factor when the user has one;
//! signing out; re-authenticating for a sensitive action.

use super::events;
use super::rules;
use super::session::{self, Origin, SignedIn};
use crate::accounts::web;
use crate::json_api::extract::ApiJson;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_auth::throttle::Decision;
use keyward_store::{NewOneTimeToken, OneTimeKind, User};
use serde::Deserialize;
use serde_json::json;
use std::net::SocketAddr;

/// `POST /auth/login`.
#[derive(Deserialize)]
pub struct Login {
    email: String,
    password: String,
}

/// `POST /auth/login/second-factor` and the second-factor half of
/// `POST /auth/reauthenticate`.
#[derive(Deserialize, Default)]
pub struct Factor {
    #[serde(default)]
    totp: Option<String>,
    #[serde(default)]
    recovery_code: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    passkey: Option<super::passkeys::PasskeyAnswer>,
}

/// `POST /auth/login`: 200 `signed_in` with the session cookie, or 200
/// `second_factor_required` with a short-lived pending cookie.
pub async fn login(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Login>,
) -> Result<Response, ApiError> {
    if web::declared_cross_site(&headers, state.accounts.origin.as_deref()) {
        return Err(ApiError::CrossSite);
    }
    if req.password.len() > rules::MAX_PASSWORD_BYTES {
        return Err(ApiError::Password(
            "password_too_long",
            format!("a password is at most {} bytes", rules::MAX_PASSWORD_BYTES),
        ));
    }
    let origin = Origin::of(&state, peer.ip(), &headers);
    let email = req.email.trim().to_lowercase();
    throttled(&state, &email, &origin).await?;
    let user = state.store.user_by_email(&email).await?;
    let (ok, needs_rehash) = rules::verify_password(
        &req.password,
        user.as_ref().and_then(|u| u.password_hash.as_deref()),
    )
    .await;
    let Some(user) = user.filter(|_| ok) else {
        failed(&state, &email, &origin, "password").await;
        return Err(ApiError::InvalidCredentials);
    };
    if let Some(why) = refused(&user) {
        // The right password on an account that may not sign in: the same
        // answer as a wrong one, so that it tells an attacker nothing.
        events::record(
            &state,
            Some(&user),
            user.id.as_str(),
            "user.sign_in_refused",
            &origin,
            json!({"reason": why}),
        )
        .await;
        return Err(ApiError::InvalidCredentials);
    }
    state
        .accounts
        .throttle
        .record_success(&email, origin.ip)
        .await;
    if needs_rehash {
        let hash = rules::hash_password(&req.password).await?;
        state.store.rehash_password(&user.id, &hash).await?;
    }
    after_first_factor(&state, &user, &origin, &headers, "password").await
}

/// After a first factor (a password, an OpenID Connect sign-in): a session at
/// once when the user has no second factor, else 200 `second_factor_required`
/// with a short-lived pending cookie.
pub(crate) async fn after_first_factor(
    state: &AppState,
    user: &User,
    origin: &Origin,
    headers: &HeaderMap,
    method: &str,
) -> Result<Response, ApiError> {
    let methods = super::factors::sign_in_methods(state, user).await?;
    if methods.is_empty() {
        return signed_in(state, user, origin, headers, method).await;
    }
    let secret = keyward_auth::token::generate();
    let now = state.clock.now_ms();
    let window = state.accounts.settings.second_factor_window.as_millis() as i64;
    state
        .store
        .create_one_time_token(&NewOneTimeToken {
            token_hash: keyward_auth::token::digest(&secret),
            kind: OneTimeKind::PendingSignIn,
            user_id: Some(user.id.clone()),
            org_id: None,
            data: json!({"first_factor": method}),
            created_at: now,
            expires_at: now + window,
        })
        .await?;
    let cookies = &state.accounts.cookies;
    let pending = cookies.set(cookies.pending, &secret, window / 1_000);
    Ok((
        [(header::SET_COOKIE, pending)],
        Json(json!({"status": "second_factor_required", "methods": methods})),
    )
        .into_response())
}

/// `POST /auth/login/second-factor`: `{"totp"}` or `{"recovery_code"}` after
/// a right password.
pub async fn second_factor(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<Factor>,
) -> Result<Response, ApiError> {
    if web::declared_cross_site(&headers, state.accounts.origin.as_deref()) {
        return Err(ApiError::CrossSite);
    }
    let origin = Origin::of(&state, peer.ip(), &headers);
    let (hash, user) = pending_user(&state, &headers).await?;
    throttled(&state, &user.email, &origin).await?;
    let method = match second_factor_ok(&state, &user, &req).await? {
        Some(m) => m,
        None => {
            failed(&state, &user.email, &origin, "second_factor").await;
            return Err(ApiError::InvalidCredentials);
        }
    };
    let now = state.clock.now_ms();
    if state
        .store
        .take_one_time_token(&hash, OneTimeKind::PendingSignIn, now)
        .await?
        .is_none()
    {
        // Used by a racing request a moment ago.
        return Err(ApiError::Unauthorized);
    }
    if refused(&user).is_some() {
        return Err(ApiError::InvalidCredentials);
    }
    state
        .accounts
        .throttle
        .record_success(&user.email, origin.ip)
        .await;
    let mut response = signed_in(&state, &user, &origin, &headers, method).await?;
    let cookies = &state.accounts.cookies;
    response
        .headers_mut()
        .append(header::SET_COOKIE, cookies.set(cookies.pending, "", 0));
    Ok(response)
}

/// The user a pending sign-in (right password, second factor to come) is
/// for, and the digest of its cookie.
async fn pending_user(state: &AppState, headers: &HeaderMap) -> Result<(String, User), ApiError> {
    let secret =
        session::cookie(headers, state.accounts.cookies.pending).ok_or(ApiError::Unauthorized)?;
    let hash = keyward_auth::token::digest(secret);
    let now = state.clock.now_ms();
    let pending = state
        .store
        .peek_one_time_token(&hash, OneTimeKind::PendingSignIn, now)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let user_id = pending.user_id.ok_or(ApiError::Unauthorized)?;
    let user = state
        .store
        .get_user(&user_id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    Ok((hash, user))
}

/// `POST /auth/login/passkey`: after a right password, a challenge for one of
/// the user's passkeys; the answer goes to `POST /auth/login/second-factor`
/// as `{"passkey": {"ceremony", "credential"}}`.
pub async fn passkey_challenge(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    if web::declared_cross_site(&headers, state.accounts.origin.as_deref()) {
        return Err(ApiError::CrossSite);
    }
    let origin = Origin::of(&state, peer.ip(), &headers);
    let (_, user) = pending_user(&state, &headers).await?;
    throttled(&state, &user.email, &origin).await?;
    Ok(Json(super::passkeys::challenge(&state, &user).await?))
}

/// Checks a TOTP code, a recovery code or a passkey's answer; `Some(method)`
/// when one is right. Each is accepted once: a TOTP step is recorded, a
/// recovery code used up, a passkey challenge taken.
async fn second_factor_ok(
    state: &AppState,
    user: &User,
    req: &Factor,
) -> Result<Option<&'static str>, ApiError> {
    if let Some(code) = &req.totp {
        let Some(sealed) = &user.totp_secret else {
            return Ok(None);
        };
        let secret = super::profile::open_totp(state, user, sealed)?;
        let now = state.clock.now_ms();
        if let Some(step) = keyward_auth::totp::verify(secret.expose(), code, now, None) {
            if state.store.accept_totp_step(&user.id, step as i64).await? {
                return Ok(Some("totp"));
            }
        }
        return Ok(None);
    }
    if let Some(code) = &req.recovery_code {
        if !user.has_totp() {
            return Ok(None);
        }
        let hash = keyward_auth::recovery::digest(code);
        let now = state.clock.now_ms();
        if state.store.use_recovery_code(&user.id, &hash, now).await? {
            return Ok(Some("recovery_code"));
        }
        return Ok(None);
    }
    if let Some(answer) = &req.passkey {
        if super::passkeys::verify(state, user, answer).await? {
            return Ok(Some("passkey"));
        }
    }
    Ok(None)
}

/// Why an account whose credentials are right may not sign in, if it may not.
pub(crate) fn refused(user: &User) -> Option<&'static str> {
    if user.disabled_at.is_some() {
        Some("disabled")
    } else if user.locked_at.is_some() {
        Some("locked")
    } else if user.reset_required_at.is_some() {
        Some("password_reset_required")
    } else {
        None
    }
}

/// 429 with `Retry-After` while the account or the source is throttled.
async fn throttled(state: &AppState, email: &str, origin: &Origin) -> Result<(), ApiError> {
    match state.accounts.throttle.check(email, origin.ip).await {
        Decision::Allow => Ok(()),
        Decision::Throttled { retry_after_secs } => Err(ApiError::Throttled(retry_after_secs)),
    }
}

/// Counts a failure, locks the account at the threshold, records the event.
async fn failed(state: &AppState, email: &str, origin: &Origin, what: &str) {
    let lockout = state
        .accounts
        .throttle
        .record_failure(email, origin.ip)
        .await;
    let user = state.store.user_by_email(email).await.ok().flatten();
    let actor = user.as_ref().map_or(email.to_owned(), |u| u.id.to_string());
    events::record(
        state,
        user.as_ref(),
        &actor,
        "user.sign_in_failed",
        origin,
        json!({"email": email, "step": what}),
    )
    .await;
    if let (true, Some(user)) = (lockout, &user) {
        if state
            .store
            .lock_user(&user.id, state.clock.now_ms())
            .await
            .is_ok()
        {
            let ended = session::end_all(state, &user.id, None, "account locked").await;
            events::record(
                state,
                Some(user),
                "system",
                "user.locked",
                origin,
                json!({"sessions_ended": ended.unwrap_or(0)}),
            )
            .await;
        }
    }
}

/// Starts the session and answers `signed_in` with its cookie.
pub(crate) async fn signed_in(
    state: &AppState,
    user: &User,
    origin: &Origin,
    headers: &HeaderMap,
    method: &str,
) -> Result<Response, ApiError> {
    let (session, cookie) = session::start(state, user, origin).await?;
    events::record(
        state,
        Some(user),
        user.id.as_str(),
        "user.signed_in",
        origin,
        json!({"method": method, "session": session.id}),
    )
    .await;
    let mut response = (
        [(header::SET_COOKIE, cookie)],
        Json(json!({"status": "signed_in"})),
    )
        .into_response();
    if let Some(device) = super::devices::seen(state, user, origin, headers).await? {
        response.headers_mut().append(header::SET_COOKIE, device);
    }
    Ok(response)
}

/// `POST /auth/logout`: ends this session.
pub async fn logout(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
) -> Result<Response, ApiError> {
    let origin = Origin::of(&state, peer.ip(), &headers);
    let user = signed_in.user();
    state
        .store
        .end_session(
            &user.id,
            signed_in.session_id(),
            state.clock.now_ms(),
            "signed out",
        )
        .await?;
    state
        .invalidate(crate::cluster::Invalidation::Session(
            signed_in.session_id().clone(),
        ))
        .await;
    events::record(
        &state,
        Some(user),
        user.id.as_str(),
        "session.ended",
        &origin,
        json!({"session": signed_in.session_id(), "reason": "signed out"}),
    )
    .await;
    Ok((
        StatusCode::OK,
        [(header::SET_COOKIE, session::clear(&state))],
        Json(json!({"status": "signed_out"})),
    )
        .into_response())
}

/// `POST /auth/reauthenticate`: `{"password"}`, `{"totp"}` or `{"passkey"}`
/// (the answer to `POST /auth/reauthenticate/passkey`); opens the window for
/// sensitive actions.
pub async fn reauthenticate(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    ApiJson(req): ApiJson<Factor>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let origin = Origin::of(&state, peer.ip(), &headers);
    let user = signed_in.user();
    throttled(&state, &user.email, &origin).await?;
    let ok = match &req.password {
        Some(p) if p.len() <= rules::MAX_PASSWORD_BYTES => {
            let (ok, _) = rules::verify_password(p, user.password_hash.as_deref()).await;
            ok.then_some("password")
        }
        Some(_) => None,
        None if req.recovery_code.is_some() => None,
        None => second_factor_ok(&state, user, &req).await?,
    };
    let Some(method) = ok else {
        failed(&state, &user.email, &origin, "reauthentication").await;
        return Err(ApiError::InvalidCredentials);
    };
    state
        .accounts
        .throttle
        .record_success(&user.email, origin.ip)
        .await;
    session::refresh_authentication(&state, &signed_in).await?;
    events::record(
        &state,
        Some(user),
        user.id.as_str(),
        "user.reauthenticated",
        &origin,
        json!({"method": method}),
    )
    .await;
    Ok(Json(json!({"status": "reauthenticated"})))
}
