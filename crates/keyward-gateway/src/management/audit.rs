//! Reading the audit log.

use super::{Admin, ApiError};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize)]
pub struct AuditQuery {
    target: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<SharedState>,
    _admin: Admin,
    Query(q): Query<AuditQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(
        json!({ "data": state.store.list_audit(q.target.as_deref(), limit).await? }),
    ))
}
