//! Reading the audit log.

use super::{Admin, ApiError};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_api::audit::AuditQuery;
use keyward_api::List;
use keyward_store::AuditEvent;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route of `/api/v1/audit`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// `GET /api/v1/audit`: events, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",  responses((status = 200, description = "Audit events, newest first")))]
async fn list(
    State(state): State<SharedState>,
    _admin: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<List<AuditEvent>>, ApiError> {
    let limit = q.limit();
    Ok(Json(List::new(
        state.store.list_audit(q.target.as_deref(), limit).await?,
    )))
}
