//! Security events of accounts, in the audit log: who (the user, or the email
//! typed for an unknown account), what, from where.

use super::session::Origin;
use crate::state::AppState;
use keyward_store::{NewAuditEvent, User};
use serde_json::Value;

/// Appends one security event; a failure to record is logged, never hidden,
/// and does not fail the user's request (the sign-in already happened).
pub async fn record(
    state: &AppState,
    user: Option<&User>,
    actor: &str,
    action: &str,
    origin: &Origin,
    detail: Value,
) {
    let event = NewAuditEvent {
        at: state.clock.now_ms(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: user.map(|u| u.id.to_string()).unwrap_or_default(),
        detail: with_source(detail, origin),
        org_id: user.map(|u| u.org_id.clone()),
        ip: Some(origin.ip_text()),
        user_agent: origin.user_agent.clone(),
    };
    if let Err(e) = state.store.append_audit(&event).await {
        tracing::error!(error = %e, action, "could not record a security event");
    }
}

fn with_source(mut detail: Value, origin: &Origin) -> Value {
    if let Value::Object(map) = &mut detail {
        map.insert("ip".into(), origin.ip_text().into());
        if let Some(ua) = &origin.user_agent {
            map.insert("user_agent".into(), ua.clone().into());
        }
    }
    detail
}
