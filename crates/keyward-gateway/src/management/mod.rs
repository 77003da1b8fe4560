//! The management API under `/api/v1`, authenticated by admin keys (`kwa_`) or
//! a session, every object checked against the caller (see `caller.rs`).

pub(crate) mod admin_keys;
mod audit;
mod budgets;
pub(crate) mod caller;
pub(crate) mod keys;
mod leaks;
mod openapi;
pub(crate) mod orgs;
mod policy_input;
pub(crate) mod scan_uploads;
mod usage;
mod users;
pub(crate) mod webhooks;

pub(crate) use crate::json_api::{extract, json_rejections};
pub use crate::json_api::{ApiError, MAX_BODY_BYTES};
pub use caller::Caller;
pub use openapi::document_json as openapi_document;

use crate::state::SharedState;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use utoipa_axum::router::OpenApiRouter;

/// The routes of the management API: each resource module owns its routes.
pub fn router() -> Router<SharedState> {
    let (router, _) = routes().split_for_parts();
    router.layer(axum::middleware::map_response(
        crate::accounts::web::security_headers,
    ))
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
        .merge(users::router())
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
