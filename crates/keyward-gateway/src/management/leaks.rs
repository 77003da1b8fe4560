//! The management API's leak resource: `POST /api/v1/leaks` (admin key;
//! `keyward scan --report` and other tools) disables every live key among the
//! reported tokens, `GET /api/v1/leaks` lists reports, and clear-leak is an
//! admin's explicit decision that a report was false.

use super::extract::ApiJson;
use super::{Admin, ApiError};
use crate::leaks::intake::error;
use crate::leaks::response::{respond, Sighting, Verdict};
use crate::state::{AppState, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_api::leaks::{ClearLeak, KeyMatch, LeakQuery, LeakResult, ReportLeaks};
use keyward_api::List;
use keyward_core::{KeyHash, KeyId};
use keyward_store::{KeyRecord, KeyStatus, LeakReport, NewAuditEvent};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of the leak resource. They read their own bodies (reports up to
/// the gateway's body limit), so they sit outside the 2 MiB extractor limit.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, report))
        .routes(routes!(clear))
}

/// A leak response's verdict on one token, as the API shows it.
pub(super) fn key_match(verdict: Verdict) -> KeyMatch {
    match verdict {
        Verdict::NotOurs => KeyMatch::unmatched("not_keyward"),
        Verdict::Unknown => KeyMatch::unmatched("unknown"),
        Verdict::Key(outcome, key) => KeyMatch {
            result: outcome.as_str().into(),
            key_id: Some(key.id),
            key_name: Some(key.name),
            key_kind: None,
            hint: Some(key.hint),
            status: Some(key.status.as_str().into()),
        },
        Verdict::AdminKey(outcome, key) => KeyMatch {
            result: outcome.as_str().into(),
            key_id: Some(key.id),
            key_name: Some(key.name),
            key_kind: Some("admin".into()),
            hint: Some(key.hint),
            status: Some(key.status.as_str().into()),
        },
    }
}

/// Most tokens accepted in one `/api/v1/leaks` request.
const MAX_API_LEAKS: usize = 10_000;

async fn read_body(state: &AppState, body: Body) -> Result<Bytes, Response> {
    axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                &format!(
                    "the request body is larger than {} bytes",
                    state.config.max_body_bytes
                ),
            )
        })
}

/// `POST /api/v1/leaks`: tokens (or their hashes) found somewhere; every one
/// that is a live key of ours is disabled. Answers one result per token.
#[utoipa::path(post, path = "/api/v1/leaks", tag = "leaks", request_body = keyward_api::leaks::ReportLeaks, responses((status = 200, description = "One result per token", body = keyward_api::List<keyward_api::leaks::LeakResult>)))]
pub async fn report(
    State(state): State<SharedState>,
    admin: Admin,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = match read_body(&state, body).await {
        Ok(b) => b,
        Err(r) => return Ok(r),
    };
    let req: ReportLeaks = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))?;
    if req.leaks.len() > MAX_API_LEAKS {
        return Err(ApiError::BadRequest(format!(
            "at most {MAX_API_LEAKS} leaks per request"
        )));
    }
    let mut sightings = Vec::with_capacity(req.leaks.len());
    let mut hashes = Vec::with_capacity(req.leaks.len());
    for l in &req.leaks {
        let hash = match (&l.token, &l.token_hash) {
            (Some(t), None) => state.config.key_format.parse(t).ok().map(|p| p.hash),
            (None, Some(h)) => Some(KeyHash::from_hex(h).ok_or_else(|| {
                ApiError::BadRequest("token_hash must be 64 hex characters".into())
            })?),
            _ => {
                return Err(ApiError::BadRequest(
                    "each leak needs exactly one of token or token_hash".into(),
                ))
            }
        };
        let source = l.source.trim();
        if source.is_empty() || source.len() > 64 {
            return Err(ApiError::BadRequest(
                "source must be 1-64 characters".into(),
            ));
        }
        hashes.push(match (&l.token, hash) {
            (_, Some(h)) => h.to_hex(),
            (Some(t), None) => KeyHash::of(t).to_hex(),
            (None, None) => String::new(),
        });
        sightings.push(Sighting {
            hash,
            source: source.to_owned(),
            url: l.url.chars().take(2_000).collect(),
            location: l.location.chars().take(2_000).collect(),
            token_type: String::new(),
            reporter: admin.id.to_string(),
        });
    }
    let verdicts = respond(&state, &sightings).await?;
    let data: Vec<LeakResult> = hashes
        .into_iter()
        .zip(verdicts)
        .map(|(token_hash, v)| LeakResult {
            token_hash,
            outcome: key_match(v),
        })
        .collect();
    Ok(Json(List::new(data)).into_response())
}

/// `GET /api/v1/leaks`: where keys were found, newest first.
#[utoipa::path(get, path = "/api/v1/leaks", tag = "leaks",  responses((status = 200, description = "Leak reports, newest first")))]
pub async fn list(
    State(state): State<SharedState>,
    _admin: Admin,
    Query(q): Query<LeakQuery>,
) -> Result<Json<List<LeakReport>>, ApiError> {
    let key = match q.key.as_deref() {
        Some(k) => Some(KeyId::parse(k).ok_or(ApiError::NotFound("key"))?),
        None => None,
    };
    let limit = q.limit();
    Ok(Json(List::new(
        state.store.list_leak_reports(key.as_ref(), limit).await?,
    )))
}

/// `POST /api/v1/keys/{id}/clear-leak`: an admin's explicit, audited decision
/// that a leak report was false. The only way a leaked key becomes active again
/// with the same secret (rotation issues a new one).
#[utoipa::path(post, path = "/api/v1/keys/{id}/clear-leak", tag = "leaks", request_body = keyward_api::leaks::ClearLeak, params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The key record, active again")))]
pub async fn clear(
    State(state): State<SharedState>,
    admin: Admin,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ClearLeak>,
) -> Result<Json<KeyRecord>, ApiError> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1_000 {
        return Err(ApiError::BadRequest(
            "a reason (1-1000 characters) is required".into(),
        ));
    }
    let id = KeyId::parse(&id).ok_or(ApiError::NotFound("key"))?;
    let current = state
        .store
        .get_key(&id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    if current.status != KeyStatus::Leaked {
        return Err(ApiError::Conflict(format!(
            "the key is {}, not leaked",
            current.status.as_str()
        )));
    }
    let record = state
        .store
        .clear_key_leak(&id)
        .await?
        .ok_or_else(|| ApiError::Conflict("the key is no longer leaked".into()))?;
    state.keys.invalidate(&id);
    state.keys_by_id.remove(&id);
    state
        .store
        .append_audit(&NewAuditEvent {
            at: state.clock.now_ms(),
            actor: admin.id.to_string(),
            action: "key.leak_cleared".into(),
            target: id.to_string(),
            detail: json!({"reason": reason}),
        })
        .await?;
    Ok(Json(record))
}
