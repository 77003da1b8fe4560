//! Reading the audit log.

use super::{Admin, ApiError};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use keyward_api::audit::AuditQuery;
use keyward_api::List;
use keyward_store::AuditEvent;

/// The route of `/api/v1/audit`.
pub fn router() -> Router<SharedState> {
    Router::new().route("/api/v1/audit", get(list))
}

/// `GET /api/v1/audit`: events, newest first.
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
