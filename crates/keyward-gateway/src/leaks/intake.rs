//! `POST /leaks/github`: GitHub's secret-scanning partner format, signed. The
//! management API's leak resource (`POST|GET /api/v1/leaks`, clear-leak) is in
//! `crate::management::leaks`.

use super::response::{respond, Sighting};
use crate::github::{SignatureError, KEY_ID_HEADER, SIGNATURE_HEADER};
use crate::metrics::LeakRejection;
use crate::state::{AppState, SharedState};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_core::KeyHash;
use keyward_store::NewAuditEvent;
use serde_json::{json, Value};

pub(crate) fn error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// Audit kind of refused GitHub reports, folded by [`crate::audit_sample`].
const REJECTED_KIND: &str = "leak_intake.rejected";

/// Seconds a caller refused for concurrency is told to wait.
const BUSY_RETRY_AFTER_SECS: &str = "5";

/// `POST /leaks/github`: verifies GitHub's signature over the raw body, handles
/// every match, and answers with GitHub's feedback array.
///
/// Until the signature is checked the caller is anyone: the body is read only
/// up to [`crate::config::LeakSettings::github_max_body_bytes`] (a declared
/// length over it is refused before reading), only
/// [`crate::config::LeakSettings::github_concurrent_bodies`] bodies are read at
/// once (more: 503 at once), and refusals are counted in a metric and folded
/// into one audit event and one WARN line per minute, holding only
/// server-chosen words and a sanitised key identifier.
pub async fn github(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Response {
    if !state.leaks.github.configured() {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            "GitHub leak intake is not configured (--github-public-keys)",
        );
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Ok(permit) = state.leaks.github_bodies.try_acquire() else {
        rejected(&state, LeakRejection::Busy, header(KEY_ID_HEADER)).await;
        let mut r = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many leak reports are being read; retry later",
        );
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from_static(BUSY_RETRY_AFTER_SECS),
        );
        return r;
    };
    let cap = state.leaks.github_max_body_bytes;
    let body = match read_bounded(body, &headers, cap).await {
        Ok(b) => b,
        Err(reason) => {
            rejected(&state, reason, header(KEY_ID_HEADER)).await;
            return match reason {
                LeakRejection::TooLarge => error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    &format!("the request body is larger than {cap} bytes"),
                ),
                _ => error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request body could not be read",
                ),
            };
        }
    };
    let checked = match (header(KEY_ID_HEADER), header(SIGNATURE_HEADER)) {
        (None, _) => Err(SignatureError::Missing("Github-Public-Key-Identifier")),
        (_, None) => Err(SignatureError::Missing("Github-Public-Key-Signature")),
        (Some(id), Some(sig)) => state.leaks.github.verify(id, sig, &body).await,
    };
    drop(permit);
    if let Err(e) = checked {
        let reason = match e {
            SignatureError::Missing(_) => LeakRejection::MissingSignature,
            SignatureError::UnknownKey => LeakRejection::UnknownKey,
            SignatureError::Malformed => LeakRejection::MalformedSignature,
            SignatureError::Mismatch => LeakRejection::BadSignature,
        };
        rejected(&state, reason, header(KEY_ID_HEADER)).await;
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "invalid or missing GitHub signature",
        );
    }
    let matches: Vec<Value> = match serde_json::from_slice(&body) {
        Ok(Value::Array(items)) => items,
        _ => {
            rejected(&state, LeakRejection::MalformedBody, header(KEY_ID_HEADER)).await;
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "the body must be a JSON array of {token, type, url, source}",
            );
        }
    };
    let mut tokens = Vec::with_capacity(matches.len());
    let mut sightings = Vec::with_capacity(matches.len());
    for m in &matches {
        let token = m["token"].as_str().unwrap_or_default();
        let token_type = m["type"].as_str().unwrap_or_default().to_owned();
        sightings.push(Sighting {
            hash: state.config.key_format.parse(token).ok().map(|p| p.hash),
            source: "github".into(),
            url: m["url"].as_str().unwrap_or_default().to_owned(),
            location: m["source"].as_str().unwrap_or_default().to_owned(),
            token_type: token_type.clone(),
            reporter: "github".into(),
        });
        tokens.push((KeyHash::of(token).to_hex(), token_type));
    }
    let verdicts = match respond(&state, &sightings).await {
        Ok(v) => v,
        Err(e) => {
            tracing::error!(error = %e, "storage failed during GitHub leak intake");
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            );
        }
    };
    let feedback: Vec<Value> = tokens
        .into_iter()
        .zip(&verdicts)
        .map(|((token_hash, token_type), v)| {
            json!({"token_hash": token_hash, "token_type": token_type, "label": v.github_label()})
        })
        .collect();
    Json(feedback).into_response()
}

/// Reads a body of at most `cap` bytes into one buffer sized up front. A
/// declared length over the cap is refused before anything is read, and a
/// chunked body is cut as soon as it passes the cap; the connection is then
/// closed by hyper, since the rest of the body is never read.
async fn read_bounded(body: Body, headers: &HeaderMap, cap: usize) -> Result<Bytes, LeakRejection> {
    use http_body_util::BodyExt;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > cap as u64) {
        return Err(LeakRejection::TooLarge);
    }
    // Sized once (to the declared length, or a little for a chunked body), so
    // that a body never leaves a doubled buffer behind.
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(8 * 1024, |n| n as usize));
    let mut body = body;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(LeakRejection::Unreadable);
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > cap {
                return Err(LeakRejection::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Counts a refused GitHub report, and audits and logs the first of each
/// minute with the number folded since. Nothing the caller chose is written
/// but the key identifier, cut to its first 64 ASCII letters and digits
/// (GitHub's are hex digests), which is what an operator needs to see that
/// GitHub rotated its key.
async fn rejected(state: &AppState, reason: LeakRejection, key_identifier: Option<&str>) {
    state.metrics.leak_rejected(reason);
    let now = state.clock.now_ms();
    let Some(folded) = state.audit_sampler.sample(REJECTED_KIND, now) else {
        return;
    };
    let key_identifier: Option<String> = key_identifier.map(|k| {
        k.chars()
            .filter(char::is_ascii_alphanumeric)
            .take(64)
            .collect()
    });
    tracing::warn!(
        reason = reason.as_str(),
        key_identifier = key_identifier.as_deref().unwrap_or("-"),
        folded,
        "refused a GitHub leak report (unsigned, badly signed, oversized, malformed or over the concurrency bound); more in the next minute are only counted (keyward_leak_reports_rejected_total)"
    );
    let audit = NewAuditEvent {
        at: now,
        actor: "github".into(),
        action: REJECTED_KIND.into(),
        target: "leaks/github".into(),
        detail: json!({
            "reason": reason.as_str(),
            "key_identifier": key_identifier,
            "folded_since_last": folded,
        }),
        ..Default::default()
    };
    if let Err(e) = state.store.append_audit(&audit).await {
        tracing::error!(error = %e, "could not audit a refused GitHub report");
    }
}
