//! Deleting what sign-ins leave behind: single-use tokens (pending sign-ins,
//! reset and invitation links, passkey ceremonies, OpenID logins) once they
//! have expired or been used. They can never be taken again; without this,
//! every unanswered sign-in start would stay in storage for good.

use crate::state::{AppState, SharedState};
use std::time::Duration;

/// How often to purge.
const EVERY: Duration = Duration::from_secs(600);
/// Used or expired tokens are kept this long (to read while investigating).
const KEEP_MS: i64 = 3_600_000;

/// Purges now, then every [`EVERY`].
pub fn spawn(state: SharedState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(EVERY);
        loop {
            tick.tick().await;
            purge(&state).await;
        }
    });
}

/// One purge; a failure is logged and retried next time.
pub async fn purge(state: &AppState) {
    match state
        .store
        .purge_one_time_tokens(state.clock.now_ms() - KEEP_MS)
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "purged used and expired single-use tokens"),
        Err(e) => tracing::warn!(error = %e, "could not purge single-use tokens"),
    }
}
