//! Server-side sessions: the cookie, the extractor that finds a request's
//! session, and starting and ending sessions.
//!
//! The cookie holds 256 random bits; storage holds only their SHA-256. A
//! request's session is found in a short-lived cache by that digest, then in
//! storage; ending a session marks it in storage and removes it from the cache
//! in the same call, so the ended session's next request is refused.

use crate::accounts::{web, ActiveSession};
use crate::cluster::Invalidation;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use keyward_core::{SessionId, UserId};
use keyward_store::{NewSession, Session, User};
use std::net::IpAddr;
use std::sync::Arc;

/// How often `last_seen_at` is written for a busy session.
const TOUCH_EVERY_MS: i64 = 60_000;

/// A cookie's value from the request's `Cookie` headers.
pub fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

/// A request authenticated by a session cookie.
#[derive(Clone, Debug)]
pub struct SignedIn {
    /// The session and its user.
    pub active: Arc<ActiveSession>,
    /// The digest the session was found by (to drop it from the cache).
    pub token_hash: String,
}

impl SignedIn {
    /// The user.
    pub fn user(&self) -> &User {
        &self.active.user
    }

    /// The session's id.
    pub fn session_id(&self) -> &SessionId {
        &self.active.session.id
    }

    /// Refuses a sensitive action unless the session signed in or
    /// re-authenticated within the configured window.
    pub fn require_recent(&self, state: &AppState) -> Result<(), ApiError> {
        let window = state.accounts.settings.reauthentication_window.as_millis() as i64;
        if state.clock.now_ms() - self.active.session.authenticated_at > window {
            return Err(ApiError::ReauthenticationRequired);
        }
        Ok(())
    }
}

impl FromRequestParts<SharedState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let signed_in = find(state, &parts.headers)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        if !web::same_origin(
            &parts.method,
            &parts.headers,
            state.accounts.origin.as_deref(),
        ) {
            return Err(ApiError::CrossSite);
        }
        Ok(signed_in)
    }
}

/// The session the request's cookie names, if it is open: not ended, within
/// both timeouts, its user neither disabled, locked nor waiting for a reset.
pub async fn find(state: &AppState, headers: &HeaderMap) -> Result<Option<SignedIn>, ApiError> {
    let Some(secret) = cookie(headers, state.accounts.cookies.session) else {
        return Ok(None);
    };
    if secret.len() != keyward_auth::token::SECRET_HEX_LEN {
        return Ok(None);
    }
    let token_hash = keyward_auth::token::digest(secret);
    let now = state.clock.now_ms();
    let cache = &state.accounts.sessions;
    // Read first: what is stored below must not outlive an invalidation (an
    // ended session, a user changed on another node) applied meanwhile.
    let generation = cache.generation();
    let active = match cache.get(&token_hash, now) {
        Some(a) => a,
        None => {
            let Some(session) = state.store.session_by_token_hash(&token_hash).await? else {
                return Ok(None);
            };
            let Some(user) = state.store.get_user(&session.user_id).await? else {
                return Ok(None);
            };
            let active = Arc::new(ActiveSession { session, user });
            cache.insert_unless_removed(token_hash.clone(), active.clone(), now, generation);
            active
        }
    };
    let settings = &state.accounts.settings;
    let s = &active.session;
    let u = &active.user;
    let idle = settings.idle_timeout.as_millis() as i64;
    if s.ended_at.is_some()
        || now >= s.expires_at
        || now - s.last_seen_at > idle
        || u.disabled_at.is_some()
        || u.locked_at.is_some()
        || u.reset_required_at.is_some()
    {
        cache.remove(&token_hash);
        return Ok(None);
    }
    if now - s.last_seen_at > TOUCH_EVERY_MS {
        state.store.touch_session(&s.id, now).await?;
        let mut fresh = (*active).clone();
        fresh.session.last_seen_at = now;
        cache.insert_unless_removed(token_hash.clone(), Arc::new(fresh), now, generation);
    }
    Ok(Some(SignedIn { active, token_hash }))
}

/// Where a request came from, for sessions and the audit log.
#[derive(Clone, Debug)]
pub struct Origin {
    /// The client's address (behind trusted proxies: the one they name).
    pub ip: IpAddr,
    /// The `User-Agent`, cut to 512 bytes.
    pub user_agent: Option<String>,
}

impl Origin {
    /// Reads the request's source.
    pub fn of(state: &AppState, peer: IpAddr, headers: &HeaderMap) -> Self {
        let ip = state.config.client_ip.client_ip(peer, headers);
        let user_agent = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|ua| truncate(ua, 512).to_owned());
        Self { ip, user_agent }
    }

    /// The address as text.
    pub fn ip_text(&self) -> String {
        crate::request::client_ip::text(self.ip)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Starts a session for `user`; returns the `Set-Cookie` value (the secret
/// goes nowhere else).
pub async fn start(
    state: &AppState,
    user: &User,
    origin: &Origin,
) -> Result<(Session, HeaderValue), ApiError> {
    let secret = keyward_auth::token::generate();
    let now = state.clock.now_ms();
    let absolute = state.accounts.settings.absolute_timeout.as_millis() as i64;
    let session = state
        .store
        .create_session(&NewSession {
            id: SessionId::generate(),
            token_hash: keyward_auth::token::digest(&secret),
            user_id: user.id.clone(),
            created_at: now,
            expires_at: now + absolute,
            ip: Some(origin.ip_text()),
            user_agent: origin.user_agent.clone(),
        })
        .await?;
    let cookies = &state.accounts.cookies;
    let cookie = cookies.set(cookies.session, &secret, absolute / 1_000);
    Ok((session, cookie))
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear(state: &AppState) -> HeaderValue {
    let cookies = &state.accounts.cookies;
    cookies.set(cookies.session, "", 0)
}

/// Ends every session of `user` but `keep`, in storage and in the cache.
pub async fn end_all(
    state: &AppState,
    user: &UserId,
    keep: Option<&SessionId>,
    reason: &str,
) -> Result<usize, ApiError> {
    let ended = state
        .store
        .end_sessions(user, keep, state.clock.now_ms(), reason)
        .await?;
    // One message for all of them. The kept session is dropped from caches
    // too, and re-read: its cached user predates the change that ended the
    // others (a new password or second factor).
    state.invalidate(Invalidation::User(user.clone())).await;
    Ok(ended.len())
}

/// After a change of credentials (a password, a second factor): ends every
/// other session of the user and records `action`, with how many ended.
pub async fn end_others_after(
    state: &AppState,
    signed_in: &SignedIn,
    user: &User,
    origin: &Origin,
    reason: &str,
    action: &str,
    mut detail: serde_json::Value,
) -> Result<usize, ApiError> {
    let ended = end_all(state, &user.id, Some(signed_in.session_id()), reason).await?;
    if let serde_json::Value::Object(map) = &mut detail {
        map.insert("sessions_ended".into(), ended.into());
    }
    super::events::record(state, Some(user), user.id.as_str(), action, origin, detail).await;
    Ok(ended)
}

/// Marks the request's session re-authenticated now, in storage and cache.
pub async fn refresh_authentication(
    state: &AppState,
    signed_in: &SignedIn,
) -> Result<(), ApiError> {
    let now = state.clock.now_ms();
    state
        .store
        .reauthenticate_session(signed_in.session_id(), now)
        .await?;
    let mut fresh = (*signed_in.active).clone();
    fresh.session.authenticated_at = now;
    fresh.session.last_seen_at = now;
    state
        .accounts
        .sessions
        .insert(signed_in.token_hash.clone(), Arc::new(fresh), now);
    Ok(())
}

/// Drops every cached session of `user`, whose cached copy is stale (a role,
/// lock or password change), on every node: the next request reads storage.
pub async fn forget_user(state: &AppState, user: &UserId) {
    state.invalidate(Invalidation::User(user.clone())).await;
}
