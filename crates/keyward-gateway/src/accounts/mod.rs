//! Accounts' share of the server state: the session cache, sign-in
//! throttling, the cookie names and the public origin, plus the browser-facing
//! checks (`web.rs`) and the OpenID provider keyward relies on (`oidc.rs`).
//! The `/auth` routes that use them are in `crate::auth`.
//!
//! Decisions that hold for accounts:
//! - A wrong email, a wrong password, a locked, disabled or reset-pending account
//!   all answer the same 401 `invalid_credentials`, after the same argon2id work
//!   (a dummy hash when there is no account), so an answer never tells whether
//!   an account exists.
//! - Any password or second-factor change ends every other session of the user;
//!   an ended session is dropped from this node's cache at once, so its very
//!   next request is refused.
//! - Argon2 runs on the blocking pool: a sign-in never stalls a connection thread.

pub mod oidc;
pub mod shared_throttle;
pub mod web;

use crate::config::AccountSettings;
use crate::sealing::SealingKey;
use crate::ttl_map::TtlMap;
use axum::http::HeaderValue;
use keyward_auth::passkeys::{PasskeyConfig, Passkeys};
use keyward_auth::throttle::{Throttle, ThrottleCounters};
use keyward_store::{Session, User};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// The accounts share of the server state.
pub struct Accounts {
    /// Timeouts, the public URL, the breach-check URL.
    pub settings: AccountSettings,
    /// The session cookie's name and attributes, from the public URL.
    pub cookies: CookieNames,
    /// The public URL's origin (`scheme://host[:port]`), when configured.
    pub origin: Option<String>,
    /// Open sessions by the SHA-256 of their secret, briefly cached; an ended
    /// session is removed at once.
    pub sessions: TtlMap<String, Arc<ActiveSession>>,
    /// Failed sign-in counters (per account, per source, spraying).
    pub throttle: Throttle,
    /// Seals TOTP secrets.
    pub sealing: SealingKey,
    /// For the optional breach check.
    pub http: reqwest::Client,
    /// The WebAuthn relying party, when the public URL names a domain that
    /// browsers accept as one (https, or http://localhost).
    pub passkeys: Option<Passkeys>,
    /// OpenID sign-in starts per source address in the current minute: each
    /// writes a pending sign-in, so an unauthenticated flood is bounded.
    pub oidc_starts: TtlMap<String, Arc<AtomicU32>>,
    /// "Sign in with Google" (any OpenID provider), when configured.
    pub oidc: Option<oidc::OidcRelyingParty>,
}

impl Accounts {
    /// Builds the share; `cache_ttl_ms` bounds how long a session read from
    /// storage is trusted (role changes take effect within it). `oidc` is built
    /// from `settings.oidc` first, so that a configuration that cannot work
    /// stops the start before anything is written. `throttle` keeps the
    /// failed sign-ins: this node's memory, or Redis in a cluster
    /// ([`shared_throttle`]).
    pub fn new(
        settings: AccountSettings,
        sealing: SealingKey,
        clock: keyward_core::Clock,
        cache_ttl_ms: i64,
        oidc: Option<oidc::OidcRelyingParty>,
        throttle: Arc<dyn ThrottleCounters>,
    ) -> Self {
        let origin = settings.public_url.as_ref().and_then(web::origin_of);
        let secure = settings
            .public_url
            .as_ref()
            .is_some_and(|u| u.scheme_str() == Some("https"));
        if let Some(url) = &settings.public_url {
            if !secure && !web::is_loopback(url) {
                tracing::warn!(
                    public_url = %url,
                    "the public URL is plain http and not loopback: session cookies travel unencrypted; use https"
                );
            }
        }
        Self {
            cookies: CookieNames::new(secure),
            origin,
            sessions: TtlMap::new(cache_ttl_ms),
            throttle: Throttle::new(throttle, clock),
            sealing,
            http: reqwest::Client::new(),
            passkeys: settings.public_url.as_ref().and_then(relying_party),
            oidc,
            oidc_starts: TtlMap::new(60_000),
            settings,
        }
    }
}

/// OpenID sign-in starts one source may make in a minute.
pub const OIDC_STARTS_PER_MINUTE: u32 = 30;

impl Accounts {
    /// Counts an OpenID sign-in start from `ip`; `false` once the source has
    /// made [`OIDC_STARTS_PER_MINUTE`] this minute (an IPv6 /64 is one source).
    pub fn admit_oidc_start(&self, ip: std::net::IpAddr, now_ms: i64) -> bool {
        let source = keyward_auth::throttle::source_key(ip);
        let counter = match self.oidc_starts.get(&source, now_ms) {
            Some(counter) => counter,
            None => {
                let counter = Arc::new(AtomicU32::new(0));
                self.oidc_starts.insert(source, counter.clone(), now_ms);
                counter
            }
        };
        counter.fetch_add(1, Ordering::Relaxed) < OIDC_STARTS_PER_MINUTE
    }
}

/// The WebAuthn relying party for a public URL: its host is the RP id, its
/// origin the one origin answers may come from. Browsers refuse an IP address
/// as RP id and plain http except on localhost, so such a URL turns passkeys
/// off (with a line in the log) rather than offering what cannot work.
fn relying_party(url: &http::Uri) -> Option<Passkeys> {
    let config = PasskeyConfig {
        rp_id: url.host()?.to_ascii_lowercase(),
        rp_origin: web::origin_of(url)?,
        rp_name: "keyward".to_owned(),
    };
    match Passkeys::new(config) {
        Ok(passkeys) => Some(passkeys),
        Err(e) => {
            tracing::info!(public_url = %url, reason = %e, "passkeys are off: they need a public URL on a domain name, https or http://localhost");
            None
        }
    }
}

/// The cookies' names and attributes.
#[derive(Clone, Debug)]
pub struct CookieNames {
    /// The session cookie: `__Host-keyward_session` on https, else `keyward_session`.
    pub session: &'static str,
    /// A sign-in waiting for its second factor.
    pub pending: &'static str,
    /// A long-lived cookie that recognises a device (new-device alerts).
    pub device: &'static str,
    /// Binds an OpenID Connect sign-in to the browser that began it.
    pub oidc: &'static str,
    /// `Secure` (https public URL).
    pub secure: bool,
}

impl CookieNames {
    /// Names for a public URL that is (`secure`) or is not https. The
    /// `__Host-` prefix makes browsers refuse the cookie unless it is
    /// `Secure`, host-only and for `/`, so a sibling subdomain cannot plant it.
    pub fn new(secure: bool) -> Self {
        if secure {
            Self {
                session: "__Host-keyward_session",
                pending: "__Host-keyward_pending",
                device: "__Host-keyward_device",
                oidc: "__Host-keyward_oidc",
                secure,
            }
        } else {
            Self {
                session: "keyward_session",
                pending: "keyward_pending",
                device: "keyward_device",
                oidc: "keyward_oidc",
                secure,
            }
        }
    }

    /// A `Set-Cookie` value; `max_age_s` 0 deletes the cookie.
    pub fn set(&self, name: &str, value: &str, max_age_s: i64) -> HeaderValue {
        let secure = if self.secure { "; Secure" } else { "" };
        let text =
            format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age_s}{secure}");
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A session with its user, as the cache holds it.
#[derive(Clone, Debug)]
pub struct ActiveSession {
    /// The session.
    pub session: Session,
    /// Its user.
    pub user: User,
}
