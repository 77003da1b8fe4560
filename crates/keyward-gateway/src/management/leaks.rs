//! The management API's leak resource: `POST /api/v1/leaks` (admin key;
//! `keyward scan --report` and other tools) disables every live key among the
//! reported tokens, `GET /api/v1/leaks` lists reports, and clear-leak is an
//! admin's explicit decision that a report was false.

use super::extract::ApiJson;
use super::{ApiError, Caller};
use crate::leaks::intake::error;
use crate::leaks::response::{respond, Sighting, Verdict};
use crate::state::{AppState, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_api::leaks::{self as api, ClearLeak, KeyMatch, LeakQuery, LeakResult, ReportLeaks};
use keyward_api::List;
use keyward_core::{KeyHash, KeyId};
use keyward_store::{KeyStatus, LeakReport};
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

/// A verdict as a caller may see it: a reported token of another
/// organization is still disabled (whoever holds a leaked secret may report
/// it), but what it was is not shown.
pub(super) fn key_match_for(caller: &Caller, verdict: Verdict) -> KeyMatch {
    let hidden = match &verdict {
        Verdict::Key(_, key) => !caller.sees(&key.org_id),
        Verdict::AdminKey(_, key) => caller.org.is_some() && key.org_id != caller.org,
        Verdict::NotOurs | Verdict::Unknown => false,
    };
    if hidden {
        return KeyMatch::unmatched("other_organization");
    }
    key_match(verdict)
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
    caller: Caller,
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
            reporter: caller.actor.clone(),
        });
    }
    let verdicts = respond(&state, &sightings).await?;
    let data: Vec<LeakResult> = hashes
        .into_iter()
        .zip(verdicts)
        .map(|(token_hash, v)| LeakResult {
            token_hash,
            outcome: key_match_for(&caller, v),
        })
        .collect();
    Ok(Json(List::new(data)).into_response())
}

/// `GET /api/v1/leaks`: where keys were found, newest first.
#[utoipa::path(get, path = "/api/v1/leaks", tag = "leaks",  responses((status = 200, description = "Leak reports, newest first", body = keyward_api::List<keyward_api::leaks::LeakReport>)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<LeakQuery>,
) -> Result<Json<List<api::LeakReport>>, ApiError> {
    let key = match q.key.as_deref() {
        Some(k) => Some(KeyId::parse(k).ok_or(ApiError::NotFound("key"))?),
        None => None,
    };
    if let (Some(k), Some(_)) = (&key, &caller.org) {
        state
            .store
            .get_key(k)
            .await?
            .filter(|r| caller.sees(&r.org_id))
            .ok_or(ApiError::NotFound("key"))?;
    }
    let reports = state
        .store
        .list_leak_reports(key.as_ref(), q.limit())
        .await?;
    let mut visible = Vec::with_capacity(reports.len());
    for r in reports {
        if caller.org.is_none() || report_visible(&state, &caller, &r).await? {
            visible.push(answer_report(r));
        }
    }
    Ok(Json(List::new(visible)))
}

/// Whether a leak report is about a key (or admin key) of the caller's
/// organization.
async fn report_visible(
    state: &AppState,
    caller: &Caller,
    r: &LeakReport,
) -> Result<bool, ApiError> {
    if let Some(k) = state.store.get_key(&r.key_id).await? {
        return Ok(caller.sees(&k.org_id));
    }
    Ok(state
        .store
        .get_admin_key(&r.key_id)
        .await?
        .is_some_and(|k| caller.org.is_none() || k.org_id == caller.org))
}

/// A leak report as the API shows it.
fn answer_report(r: LeakReport) -> api::LeakReport {
    api::LeakReport {
        id: r.id,
        key_id: r.key_id,
        token_hash: r.token_hash,
        source: r.source,
        url: r.url,
        location: r.location,
        token_type: r.token_type,
        outcome: r.outcome.as_str().into(),
        reporter: r.reporter,
        reported_at: r.reported_at,
    }
}

/// `POST /api/v1/keys/{id}/clear-leak`: an admin's explicit, audited decision
/// that a leak report was false. The only way a leaked key becomes active again
/// with the same secret (rotation issues a new one).
///
/// It answers the key's record alone (`keyward_api::keys::KeyRecord`, built by
/// the same conversion as every key answer), without the `ephemeral` and
/// `rotation_due` that `GET /api/v1/keys/{id}` adds: that is what it has
/// always sent, and the wire does not change with the types behind it.
/// Clients wanting the flags read the key.
#[utoipa::path(post, path = "/api/v1/keys/{id}/clear-leak", tag = "leaks", request_body = keyward_api::leaks::ClearLeak, params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The key record, active again (without the derived `ephemeral` and `rotation_due`)", body = keyward_api::keys::KeyRecord)))]
pub async fn clear(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<ClearLeak>,
) -> Result<Json<keyward_api::keys::KeyRecord>, ApiError> {
    let reason = req.reason.trim();
    if reason.is_empty() || reason.len() > 1_000 {
        return Err(ApiError::BadRequest(
            "a reason (1-1000 characters) is required".into(),
        ));
    }
    let id = KeyId::parse(&id).ok_or(ApiError::NotFound("key"))?;
    let current = super::keys::find(&state, &caller, id.as_str(), true).await?;
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
    state
        .invalidate(crate::cluster::Invalidation::Keys(vec![id.clone()]))
        .await;
    caller
        .audit(
            &state,
            Some(&record.org_id),
            "key.leak_cleared",
            id.as_str(),
            json!({"reason": reason}),
        )
        .await?;
    Ok(Json(super::keys::answer_record(record)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::LeakReportId;
    use keyward_store::LeakOutcome;

    /// Leak reports used to be answered as their storage record: the API type
    /// must put the same bytes on the wire (outcomes in snake case), and read
    /// back without loss.
    #[test]
    fn leak_report_answers_are_the_bytes_the_storage_record_gave() {
        for outcome in [
            LeakOutcome::Disabled,
            LeakOutcome::AlreadyLeaked,
            LeakOutcome::Inactive,
        ] {
            let report = LeakReport {
                id: LeakReportId::generate(),
                key_id: KeyId::generate(),
                token_hash: "ab".repeat(32),
                source: "github".into(),
                url: "https://example.test/x".into(),
                location: String::new(),
                token_type: "keyward_api_key".into(),
                outcome,
                reporter: "github".into(),
                reported_at: 1,
            };
            let sent = serde_json::to_string(&answer_report(report.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&report).unwrap());
            let read: api::LeakReport = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, answer_report(report));
        }
    }
}
