//! `POST /api/v1/scan-uploads?name=app.apk`: an app bundle (or any archive or
//! file) uploaded as the raw body, scanned at once for keyward keys; every live
//! key found is treated as leaked. Size-limited by `max_upload_bytes`.

use super::leaks::key_match_for;
use super::{ApiError, Caller};
use crate::leaks::response::{respond, Verdict};
use crate::leaks::watchers::{key_scanner, sightings};
use crate::state::SharedState;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_api::error::ErrorBody;
use keyward_api::leaks::{UploadFinding, UploadQuery, UploadScan};
use keyward_scan::scanner::CollectSink;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route of `/api/v1/scan-uploads`. It reads its own body, up to
/// `max_upload_bytes`, so it sits outside the 2 MiB extractor limit.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(upload))
}

/// `POST /api/v1/scan-uploads`.
#[utoipa::path(post, path = "/api/v1/scan-uploads", tag = "scan-uploads", request_body(content = Vec<u8>, content_type = "application/octet-stream"), responses((status = 200, description = "Keys found in the upload", body = keyward_api::leaks::UploadScan)))]
async fn upload(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<UploadQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    let limit = state.config.leaks.watchers.max_upload_bytes;
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return Ok((
            StatusCode::PAYLOAD_TOO_LARGE,
            Json(ErrorBody::new(
                "payload_too_large",
                format!("uploads are limited to {limit} bytes"),
            )),
        )
            .into_response());
    };
    let name: String = q
        .name
        .unwrap_or_else(|| keyward_api::leaks::DEFAULT_UPLOAD_NAME.into())
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    let scan_name = name.clone();
    let findings = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let scanner = key_scanner()?;
        let sink = CollectSink::default();
        scanner.scan_reader(&scan_name, &mut std::io::Cursor::new(bytes), &sink);
        Ok(sink
            .findings
            .into_inner()
            .unwrap_or_else(|e| e.into_inner()))
    })
    .await
    .map_err(|e| {
        tracing::error!(error = %e, "upload scan panicked");
        ApiError::Internal
    })?
    .map_err(|e| {
        tracing::error!(error = %e, "upload scan failed");
        ApiError::Internal
    })?;
    let url = format!("upload:{name}");
    let found = sightings(&state, &findings, "upload", caller.actor.as_str(), &url);
    let verdicts = respond(&state, &found).await?;
    let data: Vec<UploadFinding> = found
        .iter()
        .zip(verdicts)
        .filter(|(_, v)| !matches!(v, Verdict::NotOurs))
        .map(|(s, v)| UploadFinding {
            location: s.location.clone(),
            outcome: key_match_for(&caller, v),
        })
        .collect();
    Ok(Json(UploadScan { name, data }).into_response())
}
