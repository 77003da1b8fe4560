//! Reconciliation of shared counters against storage (cluster mode): every
//! [`EVERY`], each node compares the budget accounts it charged since the
//! last round with the spend in storage and raises any that Redis holds less
//! of. Redis can fall behind storage only by losing writes (a failover to a
//! replica that was behind, settlements dropped after a long outage); it is
//! ahead by design (usage reaches storage in batches), so it is raised,
//! never lowered, and an account Redis lost entirely is rebuilt from storage
//! by admission instead (`Refusal::Unloaded`). The server runs [`once`]
//! every [`EVERY`] (`serve`).

use crate::limits::admission::spent_since;
use crate::limits::{Backlog, SpendControl};
use std::time::Duration;

/// How often a node reconciles. A lost settlement can let a budget overspend
/// by what it was worth until then.
pub const EVERY: Duration = Duration::from_secs(60);

/// One round; returns how many accounts were raised. Skipped while usage
/// cannot be written (storage is behind by more than the batch).
pub async fn once(limits: &SpendControl) -> usize {
    let accounts = limits.counters.charged_accounts();
    if accounts.is_empty() || limits.unwritten.backlog() != Backlog::Flowing {
        return 0;
    }
    // What this node served is in storage, and its settlements (and its
    // shares' pending spend) in Redis, before the two are compared. Another
    // node's settlements may still be on their way (its shares sync every
    // 100 ms): a round that meets one raises Redis by it and counts it
    // twice, which refuses that much early and never overspends.
    limits.unwritten.flush().await;
    limits.counters.flush().await;
    let mut raised = 0;
    for id in accounts {
        let stored = match spent_since(limits, &id.0, id.1).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "reconciling budgets: reading spend failed; next round");
                return raised;
            }
        };
        if let Some(before) = limits.counters.reconcile(&id, stored).await {
            raised += 1;
            tracing::warn!(
                scope = id.0.kind(),
                scope_id = id.0.id(),
                shared = before,
                stored,
                "a budget's spend in Redis was behind storage (lost settlements); raised to storage's"
            );
        }
    }
    raised
}
