//! Passkeys and security keys (WebAuthn) as a second factor: registering,
//! listing and removing them, and the challenges for signing in and
//! re-authenticating with one. The ceremonies themselves are
//! `keyward_auth::passkeys`; here their state waits server-side, in a
//! single-use token bound to the user and the purpose it was started for,
//! between the challenge and the browser's answer. The token is taken before
//! the answer is checked, so a challenge is answered at most once, right or
//! wrong.
//!
//! Like TOTP, adding or removing a passkey needs a recent re-authentication
//! and ends every other session of the user.

use super::session::{self, Origin, SignedIn};
use crate::json_api::extract::ApiJson;
use crate::json_api::ApiError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_auth::passkeys::{PasskeyError, Passkeys, StoredPasskey};
use keyward_store::{NewOneTimeToken, OneTimeKind, StoredPasskeyRow, User};
use serde::Deserialize;
use serde_json::{json, Value};
use std::net::SocketAddr;

/// How long a challenge waits for its answer (the ceremony's own limit).
const CEREMONY_MS: i64 = 5 * 60_000;

/// What a ceremony was started for; an answer to one is never accepted as
/// the other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    Register,
    Authenticate,
}

impl Purpose {
    fn name(self) -> &'static str {
        match self {
            Purpose::Register => "register",
            Purpose::Authenticate => "authenticate",
        }
    }
}

/// A browser's answer to a challenge: the ceremony it answers and
/// `PublicKeyCredential.toJSON()`.
#[derive(Deserialize, Debug)]
pub struct PasskeyAnswer {
    ceremony: String,
    credential: Value,
}

/// `POST /auth/passkeys`: the answer to a registration challenge, and the
/// name the user gives the passkey.
#[derive(Deserialize)]
pub struct Register {
    ceremony: String,
    name: String,
    credential: Value,
}

/// The relying party, or 404 `passkeys_unavailable` with what to configure.
fn relying_party(state: &AppState) -> Result<&Passkeys, ApiError> {
    state.accounts.passkeys.as_ref().ok_or_else(|| {
        ApiError::Coded(
            StatusCode::NOT_FOUND,
            "passkeys_unavailable",
            "passkeys need a public URL on a domain name (--public-url https://…, or http://localhost:PORT for a trial)".into(),
        )
    })
}

/// A ceremony error as an API answer; none carries challenge or key material.
fn refusal(e: PasskeyError) -> ApiError {
    match e {
        PasskeyError::AlreadyRegistered => {
            ApiError::Coded(StatusCode::CONFLICT, e.code(), e.to_string())
        }
        PasskeyError::Storage(what) => {
            tracing::error!(what, "stored passkey data does not decode");
            ApiError::Internal
        }
        _ => ApiError::Coded(StatusCode::BAD_REQUEST, e.code(), e.to_string()),
    }
}

fn from_row(row: StoredPasskeyRow) -> StoredPasskey {
    StoredPasskey {
        id: row.id,
        name: row.name,
        created_at: row.created_at,
        last_used_at: row.last_used_at,
        data: row.data,
    }
}

/// The user's passkeys as the ceremonies take them.
async fn passkeys_of(state: &AppState, user: &User) -> Result<Vec<StoredPasskey>, ApiError> {
    let rows = state.store.list_passkeys(&user.id).await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Keeps a ceremony's state for its answer; returns the ceremony's id (a
/// random secret: only its digest is stored).
async fn keep(
    state: &AppState,
    user: &User,
    purpose: Purpose,
    ceremony: impl serde::Serialize,
) -> Result<String, ApiError> {
    let id = keyward_auth::token::generate();
    let now = state.clock.now_ms();
    state
        .store
        .create_one_time_token(&NewOneTimeToken {
            token_hash: keyward_auth::token::digest(&id),
            kind: OneTimeKind::PasskeyCeremony,
            user_id: Some(user.id.clone()),
            org_id: None,
            data: json!({"purpose": purpose.name(), "state": ceremony}),
            created_at: now,
            expires_at: now + CEREMONY_MS,
        })
        .await?;
    Ok(id)
}

/// Takes a ceremony's state back, once; `None` when it is unknown, used,
/// expired, or was started for another user or purpose.
async fn take<T: serde::de::DeserializeOwned>(
    state: &AppState,
    user: &User,
    purpose: Purpose,
    ceremony: &str,
) -> Result<Option<T>, ApiError> {
    if ceremony.len() != keyward_auth::token::SECRET_HEX_LEN {
        return Ok(None);
    }
    let hash = keyward_auth::token::digest(ceremony);
    let now = state.clock.now_ms();
    let Some(token) = state
        .store
        .take_one_time_token(&hash, OneTimeKind::PasskeyCeremony, now)
        .await?
    else {
        return Ok(None);
    };
    if token.user_id.as_ref() != Some(&user.id) || token.data["purpose"] != purpose.name() {
        return Ok(None);
    }
    Ok(serde_json::from_value(token.data["state"].clone()).ok())
}

/// `POST /auth/passkeys/registration`: the options for
/// `navigator.credentials.create`; the user's passkeys are excluded.
pub async fn start_registration(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    signed_in.require_recent(&state)?;
    let rp = relying_party(&state)?;
    let user = signed_in.user();
    let existing = passkeys_of(&state, user).await?;
    let (options, ceremony) = rp
        .start_registration(user.id.as_str().as_bytes(), &user.email, "", &existing)
        .map_err(refusal)?;
    let id = keep(&state, user, Purpose::Register, ceremony).await?;
    Ok(Json(json!({"ceremony": id, "options": options})))
}

/// `POST /auth/passkeys`: verifies the answer, stores the passkey under its
/// name and ends every other session.
pub async fn finish_registration(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    ApiJson(req): ApiJson<Register>,
) -> Result<Response, ApiError> {
    signed_in.require_recent(&state)?;
    let rp = relying_party(&state)?;
    let user = signed_in.user();
    let ceremony = take(&state, user, Purpose::Register, &req.ceremony)
        .await?
        .ok_or_else(|| {
            ApiError::Coded(
                StatusCode::BAD_REQUEST,
                "passkey_ceremony_unknown",
                "no registration is waiting for this answer: POST /auth/passkeys/registration again".into(),
            )
        })?;
    let now = state.clock.now_ms();
    let passkey = rp
        .finish_registration(ceremony, &req.credential, req.name, now)
        .map_err(refusal)?;
    let row = StoredPasskeyRow {
        id: passkey.id,
        user_id: user.id.clone(),
        name: passkey.name,
        data: passkey.data,
        created_at: passkey.created_at,
        last_used_at: None,
    };
    state.store.add_passkey(&row).await.map_err(|e| match e {
        keyward_store::StoreError::Duplicate(_) => refusal(PasskeyError::AlreadyRegistered),
        e => e.into(),
    })?;
    let origin = Origin::of(&state, peer.ip(), &headers);
    let ended = session::end_others_after(
        &state,
        &signed_in,
        user,
        &origin,
        "second factor added",
        "user.passkey_added",
        json!({"passkey": row.id, "name": row.name}),
    )
    .await?;
    let body = json!({
        "id": row.id,
        "name": row.name,
        "created_at": row.created_at,
        "sessions_ended": ended,
    });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `GET /auth/passkeys`: the user's passkeys (never their key material).
pub async fn list(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    let rows = state.store.list_passkeys(&signed_in.user().id).await?;
    Ok(Json(json!({ "data": rows })))
}

/// `DELETE /auth/passkeys/{id}`: removes one of the user's passkeys and ends
/// every other session; another user's passkey is "not found".
pub async fn remove(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    signed_in: SignedIn,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    signed_in.require_recent(&state)?;
    let user = signed_in.user();
    if !state.store.remove_passkey(&user.id, &id).await? {
        return Err(ApiError::NotFound("passkey"));
    }
    let origin = Origin::of(&state, peer.ip(), &headers);
    let ended = session::end_others_after(
        &state,
        &signed_in,
        user,
        &origin,
        "second factor removed",
        "user.passkey_removed",
        json!({"passkey": id}),
    )
    .await?;
    Ok(Json(
        json!({"status": "removed", "id": id, "sessions_ended": ended}),
    ))
}

/// A challenge for `navigator.credentials.get` over the user's passkeys.
pub async fn challenge(state: &AppState, user: &User) -> Result<Value, ApiError> {
    let rp = relying_party(state)?;
    let passkeys = passkeys_of(state, user).await?;
    let (options, ceremony) = rp.start_authentication(&passkeys).map_err(refusal)?;
    let id = keep(state, user, Purpose::Authenticate, ceremony).await?;
    Ok(json!({"ceremony": id, "options": options}))
}

/// `POST /auth/reauthenticate/passkey`: a challenge to re-authenticate with.
pub async fn reauthentication_challenge(
    State(state): State<SharedState>,
    signed_in: SignedIn,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(challenge(&state, signed_in.user()).await?))
}

/// Whether `answer` is a right answer, by one of `user`'s passkeys, to a
/// challenge started for them; records the passkey's use (its new signature
/// counter) when it is. A wrong answer is `false`, for the caller to count as
/// a failed attempt.
pub async fn verify(
    state: &AppState,
    user: &User,
    answer: &PasskeyAnswer,
) -> Result<bool, ApiError> {
    let Some(rp) = state.accounts.passkeys.as_ref() else {
        return Ok(false);
    };
    let Some(ceremony) = take(state, user, Purpose::Authenticate, &answer.ceremony).await? else {
        return Ok(false);
    };
    let mut passkeys = passkeys_of(state, user).await?;
    let now = state.clock.now_ms();
    let id = match rp.finish_authentication(ceremony, &answer.credential, &mut passkeys, now) {
        Ok(id) => id,
        Err(PasskeyError::Storage(what)) => {
            tracing::error!(what, user = %user.id, "stored passkey data does not decode");
            return Err(ApiError::Internal);
        }
        Err(e) => {
            tracing::info!(user = %user.id, reason = e.code(), "passkey answer refused");
            return Ok(false);
        }
    };
    if let Some(used) = passkeys.iter().find(|p| p.id == id) {
        state.store.passkey_used(&used.id, &used.data, now).await?;
    }
    Ok(true)
}
