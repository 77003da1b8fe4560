//! What single-use links sent by email do: reset a password, accept an
//! invitation, answer "this wasn't me" to a new-device alert. Each link's
//! secret is 256 random bits, stored as its digest, usable once, and carried
//! in the URL's fragment (`#token=`), which browsers never send to a server,
//! so it stays out of access logs and `Referer` headers; the page posts it.

use super::events;
use super::rules;
use super::session::{self, Origin};
use crate::json_api::extract::ApiJson;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_core::{OrgId, Role, UserId};
use keyward_store::{NewOneTimeToken, NewUser, OneTimeKind, User};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// A reset link works this long (minutes).
pub const RESET_MINUTES: i64 = 30;
/// An invitation works this long (days).
pub const INVITATION_DAYS: i64 = 7;
/// A "this wasn't me" link works this long (days).
pub const NOT_ME_DAYS: i64 = 7;

/// The base of links in emails: the public URL's origin, else the origin the
/// request was sent to.
pub fn link_base(state: &AppState, headers: &HeaderMap) -> String {
    if let Some(origin) = &state.accounts.origin {
        return origin.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// Stores a single-use token; returns its secret, for the link.
pub async fn issue(
    state: &AppState,
    kind: OneTimeKind,
    user: Option<&UserId>,
    org: Option<&OrgId>,
    data: Value,
    valid_ms: i64,
) -> Result<String, ApiError> {
    let secret = keyward_auth::token::generate();
    let now = state.clock.now_ms();
    state
        .store
        .create_one_time_token(&NewOneTimeToken {
            token_hash: keyward_auth::token::digest(&secret),
            kind,
            user_id: user.cloned(),
            org_id: org.cloned(),
            data,
            created_at: now,
            expires_at: now + valid_ms,
        })
        .await?;
    Ok(secret)
}

/// `POST /auth/password-reset`.
#[derive(Deserialize)]
pub struct ResetRequest {
    email: String,
}

/// `POST /auth/password-reset`: always 202, whether or not the address has an
/// account; when it has, a link valid 30 minutes goes to it.
pub async fn request_reset(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ResetRequest>,
) -> Result<Response, ApiError> {
    let email = req.email.trim().to_lowercase();
    let origin = Origin::of(&state, peer.ip(), &headers);
    // Throttled like sign-ins, so the endpoint cannot be used to flood an
    // inbox; the answer stays 202 either way.
    let allowed = matches!(
        state
            .accounts
            .throttle
            .check(&format!("reset:{email}"), origin.ip)
            .await,
        keyward_auth::throttle::Decision::Allow
    );
    if allowed {
        state
            .accounts
            .throttle
            .record_failure(&format!("reset:{email}"), origin.ip)
            .await;
        if let Some(user) = state.store.user_by_email(&email).await? {
            if user.disabled_at.is_none() {
                let secret = issue(
                    &state,
                    OneTimeKind::PasswordReset,
                    Some(&user.id),
                    None,
                    json!({}),
                    RESET_MINUTES * 60_000,
                )
                .await?;
                let link = format!(
                    "{}/reset-password#token={secret}",
                    link_base(&state, &headers)
                );
                let text = format!(
                    "Someone asked to reset the password of your keyward account ({email}).\n\n\
                     To choose a new password, open this link within {RESET_MINUTES} minutes:\n\n{link}\n\n\
                     Every session of your account will end. If you did not ask for this, \
                     ignore this email: your password stays as it is.\n"
                );
                state.leaks.notifier.send_secret_mail(
                    user.email.clone(),
                    "Reset your password".into(),
                    text,
                );
                events::record(
                    &state,
                    Some(&user),
                    user.id.as_str(),
                    "user.password_reset_requested",
                    &origin,
                    json!({}),
                )
                .await;
            }
        }
    }
    Ok((StatusCode::ACCEPTED, Json(json!({"status": "accepted"}))).into_response())
}

/// `POST /auth/password-reset/confirm`.
#[derive(Deserialize)]
pub struct ResetConfirm {
    token: String,
    new_password: String,
}

/// `POST /auth/password-reset/confirm`: sets the password and ends every
/// session; a second factor is still asked at the next sign-in.
pub async fn confirm_reset(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<ResetConfirm>,
) -> Result<Json<Value>, ApiError> {
    let origin = Origin::of(&state, peer.ip(), &headers);
    let hash = keyward_auth::token::digest(req.token.trim());
    let now = state.clock.now_ms();
    let user = match state
        .store
        .peek_one_time_token(&hash, OneTimeKind::PasswordReset, now)
        .await?
        .and_then(|t| t.user_id)
    {
        Some(id) => state.store.get_user(&id).await?,
        None => None,
    }
    .ok_or_else(|| {
        ApiError::BadRequest("this reset link is used, expired or wrong: ask for a new one".into())
    })?;
    let org = state
        .store
        .get_org(&user.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    let has_second_factor = !super::factors::second_factors(&state, &user)
        .await?
        .is_empty();
    rules::check_new_password(
        &state,
        &req.new_password,
        has_second_factor,
        &[&user.email, &org],
    )
    .await?;
    if state
        .store
        .take_one_time_token(&hash, OneTimeKind::PasswordReset, now)
        .await?
        .is_none()
    {
        return Err(ApiError::BadRequest(
            "this reset link is used, expired or wrong: ask for a new one".into(),
        ));
    }
    let new_hash = rules::hash_password(&req.new_password).await?;
    state.store.set_password(&user.id, &new_hash, now).await?;
    let ended = session::end_all(&state, &user.id, None, "password reset").await?;
    state
        .accounts
        .throttle
        .record_success(&user.email, origin.ip)
        .await;
    events::record(
        &state,
        Some(&user),
        user.id.as_str(),
        "user.password_reset",
        &origin,
        json!({"sessions_ended": ended}),
    )
    .await;
    Ok(Json(json!({"status": "reset", "sessions_ended": ended})))
}

/// `POST /auth/invitations/accept`.
#[derive(Deserialize)]
pub struct AcceptInvitation {
    token: String,
    password: String,
}

/// `POST /auth/invitations/accept`: creates the invited account with its
/// password and signs it in.
pub async fn accept_invitation(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<AcceptInvitation>,
) -> Result<Response, ApiError> {
    let origin = Origin::of(&state, peer.ip(), &headers);
    let hash = keyward_auth::token::digest(req.token.trim());
    let now = state.clock.now_ms();
    let wrong = || {
        ApiError::BadRequest("this invitation is used, expired or wrong: ask for a new one".into())
    };
    let invitation = state
        .store
        .peek_one_time_token(&hash, OneTimeKind::Invitation, now)
        .await?
        .ok_or_else(wrong)?;
    let org_id = invitation.org_id.clone().ok_or_else(wrong)?;
    let email = invitation.data["email"]
        .as_str()
        .ok_or_else(wrong)?
        .to_owned();
    let role = invitation.data["role"]
        .as_str()
        .and_then(Role::parse)
        .ok_or_else(wrong)?;
    let org = state
        .store
        .get_org(&org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    rules::check_new_password(&state, &req.password, false, &[&email, &org]).await?;
    state
        .store
        .take_one_time_token(&hash, OneTimeKind::Invitation, now)
        .await?
        .ok_or_else(wrong)?;
    let password_hash = rules::hash_password(&req.password).await?;
    let user = state
        .store
        .create_user(&NewUser {
            org_id,
            email,
            password_hash: Some(password_hash),
            role,
            created_at: now,
        })
        .await?;
    events::record(
        &state,
        Some(&user),
        user.id.as_str(),
        "user.invitation_accepted",
        &origin,
        json!({"role": user.role}),
    )
    .await;
    let (_, cookie) = session::start(&state, &user, &origin).await?;
    Ok((
        [(header::SET_COOKIE, cookie)],
        Json(json!({"status": "signed_in", "id": user.id})),
    )
        .into_response())
}

/// Emails a "this wasn't me" link after a new-device sign-in.
pub async fn send_not_me(
    state: &AppState,
    user: &User,
    headers: &HeaderMap,
    what: &str,
) -> Result<(), ApiError> {
    let secret = issue(
        state,
        OneTimeKind::NotMe,
        Some(&user.id),
        None,
        json!({}),
        NOT_ME_DAYS * 86_400_000,
    )
    .await?;
    let link = format!("{}/not-me#token={secret}", link_base(state, headers));
    let text = format!(
        "Your keyward account ({}) was signed in to from a new device: {what}.\n\n\
         If this was you, there is nothing to do.\n\n\
         If it was not, open this link: it ends every session of your account at once and \
         asks for a new password before the next sign-in.\n\n{link}\n",
        user.email
    );
    state.leaks.notifier.send_secret_mail(
        user.email.clone(),
        "New sign-in to your account".into(),
        text,
    );
    Ok(())
}

/// `POST /auth/not-me`.
#[derive(Deserialize)]
pub struct NotMe {
    token: String,
}

/// `POST /auth/not-me`: "this wasn't me" — ends every session of the account
/// and requires a password reset before the next sign-in.
pub async fn not_me(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<NotMe>,
) -> Result<Json<Value>, ApiError> {
    let origin = Origin::of(&state, peer.ip(), &headers);
    let hash = keyward_auth::token::digest(req.token.trim());
    let now = state.clock.now_ms();
    let token = state
        .store
        .take_one_time_token(&hash, OneTimeKind::NotMe, now)
        .await?
        .ok_or_else(|| ApiError::BadRequest("this link is used, expired or wrong".into()))?;
    let user_id = token.user_id.ok_or(ApiError::NotFound("user"))?;
    let user = state
        .store
        .get_user(&user_id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    state.store.require_reset(&user.id, now).await?;
    let ended = session::end_all(&state, &user.id, None, "reported as not the user").await?;
    events::record(
        &state,
        Some(&user),
        user.id.as_str(),
        "user.reported_not_me",
        &origin,
        json!({"sessions_ended": ended}),
    )
    .await;
    Ok(Json(
        json!({"status": "secured", "sessions_ended": ended, "next": "reset your password: POST /auth/password-reset"}),
    ))
}
