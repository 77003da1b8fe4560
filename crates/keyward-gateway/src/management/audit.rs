//! Reading the audit log.

use super::{ApiError, Caller};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_api::audit::{self as api, AuditQuery};
use keyward_api::List;
use keyward_store::AuditEvent;
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route of `/api/v1/audit`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(list))
}

/// `GET /api/v1/audit`: events, newest first.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit",  responses((status = 200, description = "Audit events, newest first", body = keyward_api::List<keyward_api::audit::AuditEvent<serde_json::Value>>)))]
async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<List<api::AuditEvent<Value>>>, ApiError> {
    let limit = q.limit();
    let events = state.store.list_audit(q.target.as_deref(), limit).await?;
    // Until events carry their organization, a caller scoped to one sees only
    // what they did themselves.
    let events: Vec<AuditEvent> = match caller.org {
        None => events,
        Some(_) => events
            .into_iter()
            .filter(|e| e.actor == caller.actor)
            .collect(),
    };
    Ok(Json(List::new(events.into_iter().map(answer).collect())))
}

/// An audit event as the API shows it.
fn answer(e: AuditEvent) -> api::AuditEvent<Value> {
    api::AuditEvent {
        id: e.id,
        at: e.at,
        actor: e.actor,
        action: e.action,
        target: e.target,
        detail: e.detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::AuditId;

    /// Audit events used to be answered as their storage records: the API type
    /// must put the same bytes on the wire, and read back without loss.
    #[test]
    fn audit_answers_are_the_bytes_the_storage_record_gave() {
        let event = AuditEvent {
            id: AuditId::generate(),
            at: 1,
            actor: "kwa".into(),
            action: "key.created".into(),
            target: "key_x".into(),
            detail: serde_json::json!({"name": "app", "budget": null, "n": [1, 2.5]}),
        };
        let sent = serde_json::to_string(&answer(event.clone())).unwrap();
        assert_eq!(sent, serde_json::to_string(&event).unwrap());
        let read: api::AuditEvent<Value> = serde_json::from_str(&sent).unwrap();
        assert_eq!(read, answer(event));
    }
}
