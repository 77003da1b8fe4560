//! One way to make a change visible: [`AppState::invalidate`] drops what the
//! change made stale from this node's caches and publishes it to the other
//! nodes (`crate::cluster`), before the change is answered. Every handler that
//! changes a cached record goes through it, so no change is applied to one
//! node only.

use crate::cluster::Invalidation;
use crate::state::{AppState, SharedState};
use std::sync::Arc;

impl AppState {
    /// Drops what `what` made stale here, then tells the other nodes and waits
    /// until Redis has the message, so that when the change is answered every
    /// subscribed node is about one network hop from refusing what it ended.
    pub async fn invalidate(&self, what: Invalidation) {
        self.drop_cached(&what);
        self.bus.publish(&what).await;
    }

    /// Drops this node's cached copies of what `what` names; the next request
    /// reads storage.
    pub fn drop_cached(&self, what: &Invalidation) {
        match what {
            Invalidation::Keys(ids) => {
                for id in ids {
                    self.keys.invalidate(id);
                    self.keys_by_id.remove(id);
                }
                // A revoked or deleted key's origins stop being answered at once.
                self.origins.invalidate();
            }
            Invalidation::Session(id) => self
                .accounts
                .sessions
                .remove_where(|_, cached| cached.session.id == *id),
            Invalidation::User(id) => self
                .accounts
                .sessions
                .remove_where(|_, cached| cached.user.id == *id),
            Invalidation::Project(id) => self.limits.projects.remove(id),
            Invalidation::Budget(scope) => self.limits.budgets.remove(scope.as_str()),
            Invalidation::Origins => self.origins.invalidate(),
            Invalidation::Everything => {
                self.keys.clear();
                self.keys_by_id.clear();
                self.accounts.sessions.clear();
                self.limits.projects.clear();
                self.limits.budgets.clear();
                self.origins.invalidate();
            }
        }
    }
}

/// Applies the other nodes' invalidations to `state` until `stop` turns true
/// (nothing without Redis). Holds the state weakly: a server that is dropped
/// is not kept alive by its subscriber.
pub fn subscribe(state: &SharedState, stop: tokio::sync::watch::Receiver<bool>) {
    let weak = Arc::downgrade(state);
    state.bus.subscribe(
        Arc::new(move |what: &Invalidation| {
            if let Some(state) = weak.upgrade() {
                state.drop_cached(what);
            }
        }),
        stop,
    );
}
