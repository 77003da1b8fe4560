//! Leak response: reports that one of our keys was found exposed (GitHub's
//! secret-scanning partner program, `keyward scan --report`, watchers) disable
//! the key at once, are recorded, audited, and notified to the key's owners.

pub mod github;
pub mod intake;
pub mod response;

use crate::notify::{Notifier, NotifySettings};
use crate::state::SharedState;
use axum::routing::{get, post};
use axum::Router;
use keyward_core::Clock;
use keyward_store::SharedStore;
use p256::ecdsa::VerifyingKey;
use std::collections::HashMap;
use std::sync::Arc;

/// Leak-response settings.
#[derive(Clone, Debug, Default)]
pub struct LeakSettings {
    /// GitHub's public keys, read from the configured file at start.
    pub github_keys: HashMap<String, VerifyingKey>,
    /// Where to fetch GitHub's public-keys document when a request names an
    /// unknown key (e.g. `https://api.github.com/meta/public_keys/secret_scanning`).
    pub github_keys_url: Option<String>,
    /// Notifications (SMTP, retries).
    pub notify: NotifySettings,
    /// Sources scanned on a schedule.
    pub watchers: crate::watchers::WatcherSettings,
}

/// Leak response's shared state.
pub struct LeakState {
    /// GitHub's keys.
    pub github: github::GithubKeys,
    /// Notifications.
    pub notifier: Arc<Notifier>,
}

impl LeakState {
    /// Builds the state and starts the notification worker; `sealing` opens
    /// the stored webhook secrets.
    pub fn start(
        settings: &LeakSettings,
        store: SharedStore,
        clock: Clock,
        sealing: crate::sealing::SealingKey,
    ) -> Arc<Self> {
        let notifier = Notifier::new(store, clock, settings.notify.clone(), sealing);
        notifier.spawn_worker();
        Arc::new(Self {
            github: github::GithubKeys::new(
                settings.github_keys.clone(),
                settings.github_keys_url.clone(),
            ),
            notifier,
        })
    }
}

/// Routes: the GitHub partner endpoint (signed, no admin key) and the
/// management API's leak, webhook, recipient and upload resources.
pub fn router() -> Router<SharedState> {
    use crate::management::{scan_uploads, webhooks};
    Router::new()
        .route("/leaks/github", post(intake::github))
        .route("/api/v1/leaks", get(intake::list).post(intake::report))
        .route("/api/v1/keys/{id}/clear-leak", post(intake::clear))
        .route(
            "/api/v1/webhooks",
            get(webhooks::list).post(webhooks::create),
        )
        .route(
            "/api/v1/webhooks/{id}",
            axum::routing::delete(webhooks::remove),
        )
        .route("/api/v1/webhooks/{id}/test", post(webhooks::test))
        .route(
            "/api/v1/webhooks/{id}/deliveries",
            get(webhooks::deliveries),
        )
        .route(
            "/api/v1/email-recipients",
            get(webhooks::list_recipients).post(webhooks::create_recipient),
        )
        .route(
            "/api/v1/email-recipients/{id}",
            axum::routing::delete(webhooks::remove_recipient),
        )
        .route("/api/v1/scan-uploads", post(scan_uploads::upload))
}
