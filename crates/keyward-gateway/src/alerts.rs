//! Recording alerts. Budget thresholds are recorded as audit events once per
//! period (the store remembers which fired, across restarts); delivery by email
//! and webhook reads them from there.

use crate::budget_ledger::ThresholdCrossed;
use crate::state::SharedState;
use keyward_store::NewAuditEvent;
use serde_json::json;

/// Records each crossed threshold once, off the request path.
pub fn budget_thresholds(state: SharedState, crossed: Vec<ThresholdCrossed>) {
    tokio::spawn(async move {
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
            let event = NewAuditEvent {
                at: now,
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
            };
            if let Err(e) = state.store.append_audit(&event).await {
                tracing::error!(error = %e, "recording a budget alert failed");
            }
        }
    });
}
