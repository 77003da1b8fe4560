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
#[derive(Clone, Debug)]
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
    /// Largest body `POST /leaks/github` reads, bytes. The endpoint is
    /// unauthenticated until the signature over the whole body is checked, so
    /// the body is bounded by what GitHub sends (a batch of matches, each a
    /// token and two short URLs, about 150 bytes: 1 MiB holds about 7,000),
    /// not by the gateway's 8 MiB limit.
    pub github_max_body_bytes: usize,
    /// Most `POST /leaks/github` bodies read at once; more are answered 503
    /// with `Retry-After` before their body is read. Bounds the memory an
    /// unauthenticated caller can hold to this times the body cap.
    pub github_concurrent_bodies: usize,
}

impl Default for LeakSettings {
    fn default() -> Self {
        Self {
            github_keys: HashMap::new(),
            github_keys_url: None,
            notify: NotifySettings::default(),
            watchers: crate::watchers::WatcherSettings::default(),
            github_max_body_bytes: 1024 * 1024,
            github_concurrent_bodies: 8,
        }
    }
}

/// Leak response's shared state.
pub struct LeakState {
    /// GitHub's keys.
    pub github: github::GithubKeys,
    /// Notifications.
    pub notifier: Arc<Notifier>,
    /// Places for GitHub report bodies being read and checked
    /// ([`LeakSettings::github_concurrent_bodies`]).
    pub github_bodies: tokio::sync::Semaphore,
    /// [`LeakSettings::github_max_body_bytes`].
    pub github_max_body_bytes: usize,
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
            github_bodies: tokio::sync::Semaphore::new(settings.github_concurrent_bodies.max(1)),
            github_max_body_bytes: settings.github_max_body_bytes,
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
