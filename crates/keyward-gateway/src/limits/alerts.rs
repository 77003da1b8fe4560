//! Budget alerts: each crossed threshold is recorded as an audit event once per
//! period (the store remembers which fired, across restarts) and published to the
//! webhooks and email recipients subscribed to `budget.threshold_crossed`.

use crate::limits::budgets::ThresholdCrossed;
use crate::notify::Event;
use crate::notify::Notifier;
use keyward_core::{BudgetScope, Clock, EventId, KeyId, OrgId, ProjectId};
use keyward_store::{NewAuditEvent, SharedStore};
use serde_json::json;
use std::sync::Arc;

/// Hands crossed thresholds to whoever records and announces them (usually
/// [`budget_thresholds`] over a [`BudgetAlerts`]; tests collect them).
pub type RaiseAlerts = Box<dyn Fn(Vec<ThresholdCrossed>) + Send + Sync>;

/// What raising a budget alert needs.
#[derive(Clone)]
pub struct BudgetAlerts {
    /// Where alerts are recorded (once per period) and audited.
    pub store: SharedStore,
    /// Webhooks and emails.
    pub notifier: Arc<Notifier>,
    /// Time.
    pub clock: Clock,
    /// The server's runtime: request handlers run on worker runtimes that stop
    /// with their connections, and an alert must outlive the request.
    pub tasks: tokio::runtime::Handle,
}

/// Records each crossed threshold once, off the request path.
pub fn budget_thresholds(alerts: &BudgetAlerts, crossed: Vec<ThresholdCrossed>) {
    let state = alerts.clone();
    alerts.tasks.spawn(async move {
        for c in crossed {
            let now = state.clock.now_ms();
            let first = match state
                .store
                .record_budget_alert(&c.budget.scope, c.period_start, c.threshold, now)
                .await
            {
                Ok(first) => first,
                Err(e) => {
                    tracing::error!(error = %e, "recording a budget alert failed");
                    continue;
                }
            };
            if !first {
                continue;
            }
            tracing::warn!(
                scope = c.budget.scope.kind(),
                id = c.budget.scope.id(),
                threshold = c.threshold,
                "budget threshold crossed"
            );
            let (org_id, project_id) = owners(&state.store, &c.budget.scope).await;
            // In the organization's chain, so that its admins see their own
            // budget alerts in the audit log (the dashboard's budgets page).
            let event = NewAuditEvent {
                at: now,
                org_id: org_id.clone(),
                actor: "system".into(),
                action: "budget.threshold_crossed".into(),
                target: c.budget.scope.id().to_owned(),
                detail: json!({
                    "scope": c.budget.scope.kind(),
                    "threshold_percent": c.threshold,
                    "spent_micros": c.spent,
                    "amount_micros": c.budget.amount_micros.0,
                    "period": c.budget.period.as_str(),
                    "period_start": c.period_start,
                }),
                ..Default::default()
            };
            if let Err(e) = state.store.append_audit(&event).await {
                tracing::error!(error = %e, "recording a budget alert failed");
            }
            // Tell the owners by the webhooks and emails subscribed to the
            // event, including those scoped to the budget's project or org: a
            // key's budget belongs to the key's project and org, a project's
            // to its org.
            let notice = Event {
                id: EventId::generate(),
                event_type: "budget.threshold_crossed".into(),
                created_at: now,
                org_id,
                project_id,
                data: event.detail.clone(),
                summary: format!(
                    "keyward: {}% of the {} budget {} is spent",
                    c.threshold,
                    c.budget.scope.kind(),
                    c.budget.scope.id()
                ),
            };
            if let Err(e) = state.notifier.publish(&notice).await {
                tracing::error!(error = %e, "queueing a budget alert failed");
            }
        }
    });
}

/// The org and project a budget belongs to, for scoping its alert. A key or
/// project that cannot be read (deleted since, or a storage error, logged)
/// leaves what is unknown unset: the alert still reaches unscoped receivers.
async fn owners(store: &SharedStore, scope: &BudgetScope) -> (Option<OrgId>, Option<ProjectId>) {
    match scope {
        BudgetScope::Org(id) => (OrgId::parse(id), None),
        BudgetScope::Project(id) => {
            let Some(project_id) = ProjectId::parse(id) else {
                return (None, None);
            };
            match store.get_project(&project_id).await {
                Ok(project) => (project.map(|p| p.org_id), Some(project_id)),
                Err(e) => {
                    tracing::error!(error = %e, "reading a budget's project failed");
                    (None, Some(project_id))
                }
            }
        }
        BudgetScope::Key(id) => {
            let Some(key_id) = KeyId::parse(id) else {
                return (None, None);
            };
            match store.get_key(&key_id).await {
                Ok(Some(key)) => (Some(key.org_id), Some(key.project_id)),
                Ok(None) => (None, None),
                Err(e) => {
                    tracing::error!(error = %e, "reading a budget's key failed");
                    (None, None)
                }
            }
        }
    }
}
