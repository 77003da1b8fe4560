//! What a signed-in user does to their own account: who am I, my sessions,
//! my password, my TOTP.

use super::events;
use super::rules;
use super::session::{self, Origin, SignedIn};
use crate::cluster::Invalidation;
use crate::json_api::extract::ApiJson;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_core::{Secret, SessionId};
use keyward_store::User;
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// What TOTP secrets are sealed for (the row is the user id).
const TOTP_PURPOSE: &str = "totp";

/// Opens a user's sealed TOTP secret.
pub fn open_totp(state: &AppState, user: &User, sealed: &str) -> Result<Secret, ApiError> {
    state
        .accounts
        .sealing
        .open(
            TOTP_PURPOSE,
            user.id.as_str(),
            &Secret::new(sealed.to_owned()),
        )
        .map_err(|e| {
            tracing::error!(error = %e, user = %user.id, "a stored TOTP secret does not open");
            ApiError::Internal
        })
}

/// `GET /auth/me`.
pub async fn me(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    let user = signed_in.user();
    let org = state.store.get_org(&user.org_id).await?;
    Ok(Json(json!({
        "id": user.id,
        "email": user.email,
        "org": org.map(|o| o.name),
        "org_id": user.org_id,
        "role": user.role,
        "second_factors": super::factors::second_factors(&state, user).await?,
        "session": signed_in.session_id(),
    })))
}

/// `GET /auth/sessions`: every open session of the user.
pub async fn sessions(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    let now = state.clock.now_ms();
    let idle = state.accounts.settings.idle_timeout.as_millis() as i64;
    let list = state.store.list_sessions(&signed_in.user().id, now).await?;
    let data: Vec<Value> = list
        .into_iter()
        .filter(|s| now - s.last_seen_at <= idle || &s.id == signed_in.session_id())
        .map(|s| {
            json!({
                "id": s.id,
                "current": &s.id == signed_in.session_id(),
                "created_at": s.created_at,
                "last_seen_at": s.last_seen_at,
                "expires_at": s.expires_at,
                "ip": s.ip,
                "user_agent": s.user_agent,
                "device": s.user_agent.as_deref().map(device_name),
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

/// A short name for a user agent ("Firefox on Linux"), for the session list.
pub fn device_name(ua: &str) -> String {
    let browser = [
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("python", "Python"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map_or("Unknown browser", |(_, name)| name);
    let os = [
        ("Android", "Android"),
        ("iPhone", "iOS"),
        ("iPad", "iPadOS"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    ]
    .iter()
    .find(|(needle, _)| ua.contains(needle))
    .map(|(_, name)| *name);
    match os {
        Some(os) => format!("{browser} on {os}"),
        None => browser.to_owned(),
    }
}

/// `DELETE /auth/sessions/{id}`: ends one of the user's sessions (this one
/// too); another user's session is "not found".
pub async fn end_session(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = SessionId::parse(&id).ok_or(ApiError::NotFound("session"))?;
    let user = signed_in.user();
    let ended = state
        .store
        .end_session(&user.id, &id, state.clock.now_ms(), "ended by the user")
        .await?
        .ok_or(ApiError::NotFound("session"))?;
    state
        .invalidate(Invalidation::Session(ended.id.clone()))
        .await;
    let origin = Origin::of(&state, peer.ip(), &headers);
    events::record(
        &state,
        Some(user),
        user.id.as_str(),
        "session.ended",
        &origin,
        json!({"session": id}),
    )
    .await;
    let body = Json(json!({"status": "ended", "id": id}));
    if &id == signed_in.session_id() {
        return Ok(([(header::SET_COOKIE, session::clear(&state))], body).into_response());
    }
    Ok(body.into_response())
}

/// `POST /auth/sessions/end-others`: "log out of all other devices".
pub async fn end_others(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    let user = signed_in.user();
    let n = session::end_all(
        &state,
        &user.id,
        Some(signed_in.session_id()),
        "ended all others",
    )
    .await?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    events::record(
        &state,
        Some(user),
        user.id.as_str(),
        "session.ended_others",
        &origin,
        json!({"ended": n}),
    )
    .await;
    Ok(Json(json!({"ended": n})))
}

/// `POST /auth/sessions/end-all`: "log out everywhere", this session too.
pub async fn end_all(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
) -> Result<Response, ApiError> {
    let user = signed_in.user();
    let n = session::end_all(&state, &user.id, None, "logged out everywhere").await?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    events::record(
        &state,
        Some(user),
        user.id.as_str(),
        "session.ended_all",
        &origin,
        json!({"ended": n}),
    )
    .await;
    Ok((
        [(header::SET_COOKIE, session::clear(&state))],
        Json(json!({"ended": n})),
    )
        .into_response())
}

/// `POST /auth/password`.
#[derive(Deserialize)]
pub struct ChangePassword {
    current_password: String,
    new_password: String,
}

/// `POST /auth/password`: the current password proves it is the user; every
/// other session ends.
pub async fn change_password(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    ApiJson(req): ApiJson<ChangePassword>,
) -> Result<Json<Value>, ApiError> {
    let user = signed_in.user();
    let origin = Origin::of(&state, peer.ip(), &headers);
    let org = state
        .store
        .get_org(&user.org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    let context = [user.email.as_str(), org.as_str()];
    let has_second_factor = !super::factors::second_factors(&state, user)
        .await?
        .is_empty();
    rules::check_new_password(&state, &req.new_password, has_second_factor, &context).await?;
    let current_ok = req.current_password.len() <= rules::MAX_PASSWORD_BYTES
        && rules::verify_password(&req.current_password, user.password_hash.as_deref())
            .await
            .0;
    if !current_ok {
        events::record(
            &state,
            Some(user),
            user.id.as_str(),
            "user.password_change_failed",
            &origin,
            json!({}),
        )
        .await;
        return Err(ApiError::InvalidCredentials);
    }
    let hash = rules::hash_password(&req.new_password).await?;
    state
        .store
        .set_password(&user.id, &hash, state.clock.now_ms())
        .await?;
    let ended = session::end_others_after(
        &state,
        &signed_in,
        user,
        &origin,
        "password changed",
        "user.password_changed",
        json!({}),
    )
    .await?;
    session::refresh_authentication(&state, &signed_in).await?;
    Ok(Json(json!({"status": "changed", "sessions_ended": ended})))
}

/// `POST /auth/totp`: a new TOTP secret, pending until its first code.
pub async fn start_totp(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    signed_in.require_recent(&state)?;
    let user = signed_in.user();
    let secret = keyward_auth::totp::generate_secret();
    let sealed = state
        .accounts
        .sealing
        .seal(TOTP_PURPOSE, user.id.as_str(), secret.expose());
    state
        .store
        .set_totp_pending(&user.id, sealed.expose())
        .await?;
    let uri = keyward_auth::totp::otpauth_uri(secret.expose(), &user.email, "keyward");
    Ok(Json(json!({"secret": secret.expose(), "otpauth_uri": uri})))
}

/// `POST /auth/totp/confirm`.
#[derive(Deserialize)]
pub struct ConfirmTotp {
    code: String,
}

/// `POST /auth/totp/confirm`: the first code proves the app has the secret;
/// ten recovery codes are shown once; every other session ends.
pub async fn confirm_totp(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    ApiJson(req): ApiJson<ConfirmTotp>,
) -> Result<Json<Value>, ApiError> {
    signed_in.require_recent(&state)?;
    // The cached copy predates `POST /auth/totp`: read the pending secret fresh.
    let user = state
        .store
        .get_user(&signed_in.user().id)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    let sealed = user.totp_pending.clone().ok_or_else(|| {
        ApiError::Conflict("no TOTP enrolment is pending: POST /auth/totp first".into())
    })?;
    let secret = open_totp(&state, &user, &sealed)?;
    let now = state.clock.now_ms();
    let step = keyward_auth::totp::verify(secret.expose(), &req.code, now, None)
        .ok_or(ApiError::InvalidCredentials)?;
    let (codes, hashes) = keyward_auth::recovery::generate();
    state
        .store
        .confirm_totp(&user.id, &sealed, step as i64, &hashes, now)
        .await?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    session::end_others_after(
        &state,
        &signed_in,
        &user,
        &origin,
        "second factor added",
        "user.totp_enabled",
        json!({}),
    )
    .await?;
    Ok(Json(json!({"recovery_codes": codes})))
}

/// `DELETE /auth/totp`: removes TOTP and the recovery codes; every other
/// session ends.
pub async fn remove_totp(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    signed_in.require_recent(&state)?;
    let user = signed_in.user();
    state.store.remove_totp(&user.id).await?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    let ended = session::end_others_after(
        &state,
        &signed_in,
        user,
        &origin,
        "second factor removed",
        "user.totp_removed",
        json!({}),
    )
    .await?;
    Ok(Json(json!({"status": "removed", "sessions_ended": ended})))
}
