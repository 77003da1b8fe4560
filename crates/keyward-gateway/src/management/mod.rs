//! The management API under `/api/v1`, authenticated by admin keys (`kwa_`).

pub(crate) mod admin_keys;
mod audit;
mod budgets;
mod error;
mod extract;
pub(crate) mod keys;
mod leaks;
mod openapi;
pub(crate) mod orgs;
mod policy_input;
pub(crate) mod scan_uploads;
mod usage;
pub(crate) mod webhooks;

pub use error::ApiError;
pub use openapi::document_json as openapi_document;

use crate::state::{AppState, SharedState};
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use keyward_core::{KeyId, KeyKind};
use keyward_store::KeyStatus;
use std::sync::Arc;
use utoipa_axum::router::OpenApiRouter;

/// The routes of the management API: each resource module owns its routes.
pub fn router() -> Router<SharedState> {
    let (router, _) = routes().split_for_parts();
    router
}

/// Every management route with its OpenAPI description.
fn routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .merge(orgs::router())
        .merge(keys::router())
        .merge(budgets::router())
        .merge(admin_keys::router())
        .merge(usage::router())
        .merge(audit::router())
        .merge(webhooks::router())
        .merge(openapi::router())
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(axum::middleware::map_response(json_rejections))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(own_limit_routes())
}

/// Routes that read their bodies themselves, each with its own size limit (leak
/// reports up to the gateway's body limit, app bundles up to the upload limit),
/// so they sit outside the 2 MiB extractor limit above.
fn own_limit_routes() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .merge(leaks::router())
        .merge(scan_uploads::router())
}

/// The largest request body a management route reads (bulk routes such as
/// scan uploads and leak reports have their own limits). Axum's default; named
/// so that the 413's message can say it.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Axum's extractors refuse in plain text (a `Bytes` body over the limit: a
/// plain 413; a malformed query string or path: a plain 400). JSON bodies are
/// refused in the API's shape by `extract::ApiJson`; this maps the others, so that every management route answers in the one JSON error shape.
async fn json_rejections(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !plain {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.into_response(),
        StatusCode::BAD_REQUEST => {
            let text = axum::body::to_bytes(response.into_body(), 4_096)
                .await
                .unwrap_or_default();
            ApiError::BadRequest(String::from_utf8_lossy(&text).into_owned()).into_response()
        }
        _ => response,
    }
}

/// The admin key that authenticated a management request.
pub struct Admin {
    /// Its id, recorded as the actor in audit events.
    pub id: KeyId,
}

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let presented = crate::request::credentials::presented_key(&parts.headers)
            .ok_or(ApiError::Unauthorized)?;
        authenticate(state, presented).await
    }
}

async fn authenticate(state: &Arc<AppState>, presented: &str) -> Result<Admin, ApiError> {
    let parsed = state
        .config
        .key_format
        .parse(presented)
        .map_err(|_| ApiError::Unauthorized)?;
    if parsed.kind != KeyKind::Admin {
        return Err(ApiError::Unauthorized);
    }
    let admin = state
        .store
        .admin_key_by_hash(&parsed.hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if admin.status != KeyStatus::Active {
        return Err(ApiError::Unauthorized);
    }
    // Another admin key at work: the initial key file has done its job.
    if let Some((path, held)) = state.initial_admin_key.retire_unless_holds(&admin.id) {
        crate::bootstrap::audit_file_removed(
            &state.store,
            &state.clock,
            &held,
            &path,
            "another admin key was used",
        )
        .await;
    }
    Ok(Admin { id: admin.id })
}
