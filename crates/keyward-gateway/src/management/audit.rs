//! Reading the audit log.

use super::orgs::resolve_org;
use super::{ApiError, Caller};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_api::audit::{self as api, AuditQuery, AuditVerification};
use keyward_api::List;
use keyward_core::{AuditId, Role};
use keyward_store::{AuditEvent, AuditFilter};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of `/api/v1/audit`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(verify))
}

/// `GET /api/v1/audit`: events, newest first: an organization's to its admins
/// and owners, a member's or viewer's own to them.
#[utoipa::path(get, path = "/api/v1/audit", tag = "audit", responses((status = 200, description = "Audit events, newest first", body = keyward_api::List<keyward_api::audit::AuditEvent<serde_json::Value>>)))]
async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<AuditQuery>,
) -> Result<Json<List<api::AuditEvent<Value>>>, ApiError> {
    // A caller scoped to one organization sees its chain only, whatever it
    // asks for; deployment-level events are not its to read.
    let org_id = match (&caller.org, q.org.as_deref()) {
        (Some(own), _) => Some(own.clone()),
        (None, Some(asked)) => Some(resolve_org(&state, Some(asked)).await?.id),
        (None, None) => None,
    };
    // Users see their own activity; admins see their organization's.
    let actor = if caller.role.at_least(Role::Admin) {
        q.actor.clone()
    } else {
        Some(caller.actor.clone())
    };
    let before = match q.before.as_deref() {
        Some(id) => Some(AuditId::parse(id).ok_or_else(|| {
            ApiError::BadRequest(
                "before must be an audit event id (aud_…): the last one of the previous page"
                    .into(),
            )
        })?),
        None => None,
    };
    let filter = AuditFilter {
        org_id,
        target: q.target.clone(),
        actor,
        action_prefix: q.action.clone(),
        since: q.since,
        until: q.until,
        before,
        limit: q.limit(),
    };
    let events = state.store.query_audit(&filter).await?;
    Ok(Json(List::new(events.into_iter().map(answer).collect())))
}

/// `GET /api/v1/audit/verify`: walks every organization's hash chain and the
/// deployment's. Only a deployment-wide caller may: the answer covers every
/// organization.
#[utoipa::path(get, path = "/api/v1/audit/verify", tag = "audit", responses((status = 200, description = "Whether the audit log is intact, or its first event that does not fit", body = keyward_api::audit::AuditVerification), (status = 403, description = "Not a deployment-wide caller")))]
async fn verify(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<AuditVerification>, ApiError> {
    caller.require_deployment()?;
    Ok(Json(match state.store.verify_audit().await? {
        Ok(n) => AuditVerification {
            ok: true,
            events: Some(n),
            event_id: None,
            chain: None,
            reason: None,
        },
        Err(b) => AuditVerification {
            ok: false,
            events: None,
            event_id: Some(b.event_id),
            chain: Some(b.chain),
            reason: Some(b.reason),
        },
    }))
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
        org_id: e.org_id,
        ip: e.ip,
        user_agent: e.user_agent,
        prev_hash: e.prev_hash,
        hash: e.hash,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            org_id: Some(keyward_core::OrgId::from_trusted("org_x".into())),
            ip: Some("203.0.113.7".into()),
            user_agent: None,
            prev_hash: None,
            hash: Some("ab".repeat(32)),
        };
        let sent = serde_json::to_string(&answer(event.clone())).unwrap();
        assert_eq!(sent, serde_json::to_string(&event).unwrap());
        let read: api::AuditEvent<Value> = serde_json::from_str(&sent).unwrap();
        assert_eq!(read, answer(event));
    }
}
