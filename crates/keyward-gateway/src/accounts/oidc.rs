//! "Sign in with Google" (any OpenID provider): keyward as a relying party, the
//! part of the state the `/auth/oidc` routes share.
//!
//! The provider's discovery document and signing keys are fetched on the first
//! sign-in, not at start: a provider that is down when keyward starts must not
//! stop keyward from serving keys. A failed discovery is not cached, so the next
//! sign-in tries again. A discovered client is re-discovered after
//! [`REDISCOVER_AFTER`], because providers rotate their signing keys (Google
//! publishes a new key well before it signs with it): a client kept forever
//! would refuse every sign-in once the old key is retired. When re-discovery
//! fails, the client in hand keeps serving and the next try waits
//! [`RETRY_AFTER`], so a provider outage does not make every sign-in wait for
//! a timeout.

use crate::config::OidcSettings;
use axum::http::Uri;
use keyward_auth::oidc::{OidcClient, OidcConfig, OidcError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a discovered client (with the provider's signing keys) is used
/// before the discovery document and keys are fetched again.
pub const REDISCOVER_AFTER: Duration = Duration::from_secs(3_600);

/// After a failed re-discovery, how long the old client serves before the
/// next try.
pub const RETRY_AFTER: Duration = Duration::from_secs(60);

/// keyward as a relying party of the configured OpenID provider.
pub struct OidcRelyingParty {
    config: OidcConfig,
    org: Option<String>,
    discovered: Mutex<Option<Discovered>>,
}

struct Discovered {
    client: Arc<OidcClient>,
    /// When to fetch the discovery document again.
    refresh_at: Instant,
}

impl std::fmt::Debug for OidcRelyingParty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcRelyingParty")
            .field("issuer", &self.config.issuer_url)
            .field("client_id", &self.config.client_id)
            .finish_non_exhaustive()
    }
}

impl OidcRelyingParty {
    /// Checks what can be checked without the provider: a public URL to build
    /// the redirect URI from, a client-secret variable that is set, an issuer
    /// over https (plain http only to loopback), an organization for
    /// just-in-time users. Errors name the setting (never a secret's value).
    pub fn new(settings: &OidcSettings, public_url: Option<&Uri>) -> Result<Self, OidcError> {
        let Some(public_url) = public_url else {
            return Err(OidcError::Config(
                "sign-in with OpenID Connect needs the public URL (--public-url): the provider \
                 sends the browser back to {public_url}/auth/oidc/callback"
                    .into(),
            ));
        };
        if !std::env::var(&settings.client_secret_env).is_ok_and(|v| !v.is_empty()) {
            return Err(OidcError::ClientSecretMissing {
                var: settings.client_secret_env.clone(),
            });
        }
        let issuer: Uri = settings.issuer_url.parse().map_err(|_| {
            OidcError::Config(format!("issuer {:?} is not a URL", settings.issuer_url))
        })?;
        let plain_ok = issuer.scheme_str() == Some("http") && super::web::is_loopback(&issuer);
        if issuer.scheme_str() != Some("https") && !plain_ok {
            return Err(OidcError::Config(format!(
                "issuer {:?} must be https (plain http only to a loopback address)",
                settings.issuer_url
            )));
        }
        if settings.client_id.trim().is_empty() {
            return Err(OidcError::Config("the client id is empty".into()));
        }
        let allowed_domains: Vec<String> = settings
            .allowed_domains
            .iter()
            .map(|d| d.trim().to_ascii_lowercase())
            .filter(|d| !d.is_empty())
            .collect();
        if !allowed_domains.is_empty() && settings.org.is_none() {
            return Err(OidcError::Config(
                "allowed domains create accounts on first sign-in, so they need the organization \
                 those accounts join (--oidc-org)"
                    .into(),
            ));
        }
        let base = public_url.to_string();
        Ok(Self {
            config: OidcConfig {
                issuer_url: settings.issuer_url.clone(),
                client_id: settings.client_id.clone(),
                client_secret_env: settings.client_secret_env.clone(),
                redirect_url: format!("{}/auth/oidc/callback", base.trim_end_matches('/')),
                allowed_domains,
            },
            org: settings.org.clone(),
            discovered: Mutex::new(None),
        })
    }

    /// The redirect URI to register with the provider.
    pub fn redirect_url(&self) -> &str {
        &self.config.redirect_url
    }

    /// The organization (name or id) just-in-time users join.
    pub fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }

    /// The discovered client: discovered now if it never was, or again when
    /// it is due (see the module's notes).
    pub async fn client(&self) -> Result<Arc<OidcClient>, OidcError> {
        let mut slot = self.discovered.lock().await;
        let now = Instant::now();
        if let Some(d) = slot.as_ref() {
            if now < d.refresh_at {
                return Ok(d.client.clone());
            }
        }
        let http = keyward_auth::oidc::http_client()?;
        match OidcClient::discover(&self.config, http).await {
            Ok(client) => {
                let client = Arc::new(client);
                *slot = Some(Discovered {
                    client: client.clone(),
                    refresh_at: now + REDISCOVER_AFTER,
                });
                Ok(client)
            }
            Err(e) => match slot.as_mut() {
                Some(d) => {
                    tracing::warn!(error = %e, "re-discovering the OpenID provider failed; keeping its last keys");
                    d.refresh_at = now + RETRY_AFTER;
                    Ok(d.client.clone())
                }
                None => Err(e),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(secret_env: &str) -> OidcSettings {
        OidcSettings {
            issuer_url: "https://accounts.google.com".into(),
            client_id: "keyward.apps.googleusercontent.com".into(),
            client_secret_env: secret_env.into(),
            allowed_domains: vec![],
            org: None,
        }
    }

    #[test]
    fn without_a_public_url_there_is_no_redirect_uri_to_register() {
        let err = OidcRelyingParty::new(&settings("PATH"), None).unwrap_err();
        assert!(err.to_string().contains("--public-url"), "{err}");
    }

    #[test]
    fn an_unset_secret_variable_is_named_and_nothing_else() {
        let url: Uri = "https://keys.example.com".parse().unwrap();
        let var = "KEYWARD_UNIT_TEST_OIDC_SECRET_NEVER_SET";
        let err = OidcRelyingParty::new(&settings(var), Some(&url)).unwrap_err();
        assert_eq!(err.code(), "oidc_client_secret_missing");
        assert!(err.to_string().contains(var), "{err}");
    }

    #[test]
    fn the_redirect_uri_is_the_public_urls_callback() {
        // PATH is set in any process that runs tests; it stands in for a secret.
        let url: Uri = "https://keys.example.com/".parse().unwrap();
        let rp = OidcRelyingParty::new(&settings("PATH"), Some(&url)).unwrap();
        assert_eq!(
            rp.redirect_url(),
            "https://keys.example.com/auth/oidc/callback"
        );
    }

    #[test]
    fn a_remote_issuer_over_plain_http_is_refused_at_start() {
        let url: Uri = "https://keys.example.com".parse().unwrap();
        let mut s = settings("PATH");
        s.issuer_url = "http://accounts.example.com".into();
        let err = OidcRelyingParty::new(&s, Some(&url)).unwrap_err();
        assert_eq!(err.code(), "oidc_config", "{err}");
        s.issuer_url = "http://127.0.0.1:4000".into();
        assert!(OidcRelyingParty::new(&s, Some(&url)).is_ok());
    }

    #[test]
    fn allowed_domains_without_an_organization_are_refused_at_start() {
        let url: Uri = "https://keys.example.com".parse().unwrap();
        let mut s = settings("PATH");
        s.allowed_domains = vec!["example.com".into()];
        let err = OidcRelyingParty::new(&s, Some(&url)).unwrap_err();
        assert!(err.to_string().contains("--oidc-org"), "{err}");
    }
}
