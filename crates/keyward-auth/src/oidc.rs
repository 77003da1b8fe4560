//! OpenID Connect sign-in ("Sign in with Google", or any OpenID provider): the relying
//! party's half, as domain logic the server calls from its `/auth` routes.
//!
//! The flow is the authorization code flow with PKCE (S256), `state` and `nonce`:
//! [`OidcClient::begin`] gives the URL to send the browser to and a
//! [`PendingOidcLogin`] the server keeps (server-side or sealed, keyed by its state)
//! until the provider redirects back; [`OidcClient::finish`] checks the returned state,
//! exchanges the code with the PKCE verifier and validates the ID token (issuer,
//! audience, expiry, signature against the provider's published keys, nonce). Only
//! an identity whose email the provider says it verified comes out.
//!
//! Whether that identity may sign in to an existing account or create one is a
//! separate, pure decision: [`link_decision`]. Once a user is linked, the server
//! should find them again by `(issuer, subject)`, which never changes, not by email.
//!
//! Plain `http` is refused for the provider except on loopback hosts (`127.0.0.1`,
//! `localhost`, `[::1]`): a provider on the same machine (a developer's, the tests')
//! has no network path to intercept, while a remote one over plain http would let
//! anyone on the path hand us their own signing keys.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openidconnect::core::{CoreClient, CoreIdToken, CoreProviderMetadata, CoreResponseType};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret,
    CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl, Nonce, PkceCodeChallenge,
    PkceCodeVerifier, RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// How long a sign-in may take between [`OidcClient::begin`] and
/// [`OidcClient::finish`]. Long enough for a person to pick an account and type a
/// password at the provider; short enough that a leaked pending login is soon useless.
pub const PENDING_LOGIN_LIFETIME: Duration = Duration::from_secs(10 * 60);

/// How keyward is registered with one OpenID provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OidcConfig {
    /// The provider's issuer, exactly as its discovery document states it
    /// (`https://accounts.google.com` for Google).
    pub issuer_url: String,
    /// The client id the provider gave keyward.
    pub client_id: String,
    /// The NAME of the environment variable holding the client secret, so that the
    /// secret itself never sits in a config file.
    pub client_secret_env: String,
    /// Where the provider sends the browser back (keyward's callback route).
    pub redirect_url: String,
    /// Email domains whose verified users may get an account created on their first
    /// sign-in (just-in-time). Empty: only existing users may sign in this way.
    pub allowed_domains: Vec<String>,
}

/// Why an OpenID Connect sign-in failed. Each kind has a stable [`OidcError::code`]
/// for the API and logs. Messages never hold a token, a code, the client secret or a
/// provider's raw response body (which may hold tokens).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// The configuration cannot work (a malformed URL, plain http to a remote host).
    #[error("OpenID Connect configuration: {0}")]
    Config(String),
    /// The environment variable that should hold the client secret is unset or empty.
    #[error(
        "the OpenID Connect client secret is not set: environment variable {var} is unset or empty"
    )]
    ClientSecretMissing {
        /// The variable's name (never its value).
        var: String,
    },
    /// The provider could not be reached, or answered with something that is not
    /// OpenID Connect (discovery, keys or token endpoint).
    #[error("the OpenID provider is unreachable or answered badly: {0}")]
    ProviderUnreachable(String),
    /// The `state` returned by the browser is not the one this sign-in began with:
    /// a forged or crossed callback (login CSRF).
    #[error("the sign-in state does not match")]
    StateMismatch,
    /// The pending login is older than [`PENDING_LOGIN_LIFETIME`].
    #[error("the sign-in took too long; start again")]
    LoginExpired,
    /// The provider refused the authorization code (used, expired, issued to another
    /// client, or the PKCE verifier does not match). Holds the provider's error code.
    #[error("the OpenID provider refused the authorization code ({0})")]
    CodeRejected(String),
    /// The ID token's nonce is not this sign-in's: a replayed or injected token.
    #[error("the ID token's nonce does not match this sign-in")]
    NonceMismatch,
    /// The ID token was issued for another client (audience), so another relying
    /// party's token is being replayed at keyward.
    #[error("the ID token was issued for another client")]
    AudienceMismatch,
    /// The ID token is otherwise invalid: bad signature, wrong issuer, expired,
    /// missing. Holds which check failed.
    #[error("invalid ID token: {0}")]
    InvalidIdToken(String),
    /// The ID token carries no email address.
    #[error("the OpenID provider did not share an email address")]
    EmailMissing,
    /// The provider does not vouch for the email address, so it cannot be trusted to
    /// identify anyone.
    #[error("the email address is not verified by the OpenID provider")]
    EmailUnverified,
    /// The email's domain is not one whose users may have an account created on
    /// first sign-in.
    #[error("no account exists for this email and its domain is not allowed to create one")]
    DomainNotAllowed,
}

impl OidcError {
    /// A stable machine-readable code per kind, for API error bodies and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Config(_) => "oidc_config",
            Self::ClientSecretMissing { .. } => "oidc_client_secret_missing",
            Self::ProviderUnreachable(_) => "oidc_provider_unreachable",
            Self::StateMismatch => "oidc_state_mismatch",
            Self::LoginExpired => "oidc_login_expired",
            Self::CodeRejected(_) => "oidc_code_rejected",
            Self::NonceMismatch => "oidc_nonce_mismatch",
            Self::AudienceMismatch => "oidc_audience_mismatch",
            Self::InvalidIdToken(_) => "oidc_invalid_id_token",
            Self::EmailMissing => "oidc_email_missing",
            Self::EmailUnverified => "oidc_email_unverified",
            Self::DomainNotAllowed => "oidc_domain_not_allowed",
        }
    }
}

/// Who the provider says signed in, after every check passed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedIdentity {
    /// The provider's issuer URL.
    pub issuer: String,
    /// The provider's stable id for the user (`sub`); with `issuer`, the key to link on.
    pub subject: String,
    /// The email address, lowercased.
    pub email: String,
    /// Always true for an identity [`OidcClient::finish`] returned; kept so that
    /// [`link_decision`] checks it again rather than trusting its caller.
    pub email_verified: bool,
}

/// What a sign-in in progress must remember until the provider redirects back.
/// The server stores it server-side or sealed, keyed by `state`; it must never reach
/// the browser readable, since it holds the PKCE verifier.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOidcLogin {
    /// The `state` sent to the provider (also the key to find this record by).
    pub state: String,
    /// The `nonce` the ID token must carry.
    pub nonce: String,
    /// The PKCE code verifier whose S256 challenge was sent.
    pub pkce_verifier: String,
    /// When the sign-in began, in seconds since the Unix epoch (UTC).
    pub created_at_unix: u64,
}

impl fmt::Debug for PendingOidcLogin {
    // The verifier and nonce are secrets for the life of the sign-in.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingOidcLogin")
            .field("created_at_unix", &self.created_at_unix)
            .finish_non_exhaustive()
    }
}

impl PendingOidcLogin {
    /// Whether this sign-in began more than [`PENDING_LOGIN_LIFETIME`] before `now`.
    pub fn is_expired_at(&self, now: SystemTime) -> bool {
        let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        now.saturating_sub(self.created_at_unix) > PENDING_LOGIN_LIFETIME.as_secs()
    }
}

/// The client type `from_provider_metadata` yields: authorization endpoint known,
/// token and userinfo endpoints as the discovery document says.
type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// keyward as a relying party of one OpenID provider, after discovery.
pub struct OidcClient {
    client: DiscoveredClient,
    http: reqwest::Client,
    issuer: String,
    allowed_domains: Vec<String>,
}

impl fmt::Debug for OidcClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcClient")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client.client_id().as_str())
            .finish_non_exhaustive()
    }
}

/// An HTTP client fit for talking to an OpenID provider: it follows no redirects
/// (a redirect from the token endpoint could be turned into a request to an internal
/// address, SSRF) and gives up on a provider that hangs.
pub fn http_client() -> Result<reqwest::Client, OidcError> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| OidcError::Config(format!("cannot build the HTTP client: {e}")))
}

impl OidcClient {
    /// Reads the client secret from the environment variable the config names, fetches
    /// the provider's discovery document and signing keys, and checks that every
    /// endpoint keyward will use is https (or loopback).
    ///
    /// `http` must not follow redirects: use [`http_client`].
    pub async fn discover(config: &OidcConfig, http: reqwest::Client) -> Result<Self, OidcError> {
        let secret = std::env::var(&config.client_secret_env)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| OidcError::ClientSecretMissing {
                var: config.client_secret_env.clone(),
            })?;
        check_transport("issuer_url", &config.issuer_url)?;
        let issuer = IssuerUrl::new(config.issuer_url.clone())
            .map_err(|e| OidcError::Config(format!("issuer_url: {e}")))?;
        let redirect = RedirectUrl::new(config.redirect_url.clone())
            .map_err(|e| OidcError::Config(format!("redirect_url: {e}")))?;

        let metadata = CoreProviderMetadata::discover_async(issuer, &http)
            .await
            .map_err(|e| OidcError::ProviderUnreachable(discovery_error_summary(&e)))?;
        check_transport("jwks_uri", metadata.jwks_uri().url().as_str())?;
        let token_url = metadata.token_endpoint().ok_or_else(|| {
            OidcError::ProviderUnreachable("the discovery document has no token endpoint".into())
        })?;
        check_transport("token_endpoint", token_url.url().as_str())?;
        check_transport(
            "authorization_endpoint",
            metadata.authorization_endpoint().url().as_str(),
        )?;

        let client = CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(secret)),
        )
        .set_redirect_uri(redirect);
        Ok(Self {
            client,
            http,
            issuer: config.issuer_url.clone(),
            allowed_domains: config.allowed_domains.clone(),
        })
    }

    /// The email domains allowed just-in-time account creation (from the config).
    pub fn allowed_domains(&self) -> &[String] {
        &self.allowed_domains
    }

    /// Starts a sign-in: the URL to redirect the browser to, and what to keep until
    /// it comes back. Asks for the `openid` and `email` scopes only.
    pub fn begin(&self) -> (String, PendingOidcLogin) {
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let (url, state, nonce) = self
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .add_scope(Scope::new("email".into()))
            .set_pkce_challenge(challenge)
            .url();
        let pending = PendingOidcLogin {
            state: state.secret().clone(),
            nonce: nonce.secret().clone(),
            pkce_verifier: verifier.secret().clone(),
            created_at_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        };
        (url.to_string(), pending)
    }

    /// Completes a sign-in from the provider's redirect (`state` and `code` query
    /// parameters): checks the state, exchanges the code with the PKCE verifier and
    /// validates the ID token. The caller must delete `pending` whatever the outcome,
    /// so that it cannot be tried twice.
    pub async fn finish(
        &self,
        pending: &PendingOidcLogin,
        returned_state: &str,
        code: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        let same_state: bool = pending
            .state
            .as_bytes()
            .ct_eq(returned_state.as_bytes())
            .into();
        if !same_state {
            return Err(OidcError::StateMismatch);
        }
        if pending.is_expired_at(SystemTime::now()) {
            return Err(OidcError::LoginExpired);
        }
        let request = self
            .client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .map_err(|e| OidcError::Config(format!("token endpoint: {e}")))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier.clone()));
        let response = request
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = response.id_token().ok_or_else(|| {
            OidcError::InvalidIdToken("the token response has no ID token".into())
        })?;
        self.verify_id_token(id_token, &pending.nonce)
    }

    /// Validates an ID token for this client and `expected_nonce` and returns the
    /// identity in it. [`OidcClient::finish`] calls this on the token it received;
    /// it is public so that a token that reached keyward another way (and the tests'
    /// token-substitution attacks) goes through exactly the same checks.
    pub fn verify_id_token_str(
        &self,
        id_token: &str,
        expected_nonce: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        let token: CoreIdToken = id_token
            .parse()
            .map_err(|_| OidcError::InvalidIdToken("not a JWT".into()))?;
        self.verify_id_token(&token, expected_nonce)
    }

    fn verify_id_token(
        &self,
        token: &CoreIdToken,
        expected_nonce: &str,
    ) -> Result<VerifiedIdentity, OidcError> {
        let verifier = self.client.id_token_verifier();
        let nonce = Nonce::new(expected_nonce.to_owned());
        let claims = token.claims(&verifier, &nonce).map_err(claims_error)?;
        let email = claims.email().ok_or(OidcError::EmailMissing)?;
        if claims.email_verified() != Some(true) {
            return Err(OidcError::EmailUnverified);
        }
        Ok(VerifiedIdentity {
            issuer: claims.issuer().as_str().to_owned(),
            subject: claims.subject().as_str().to_owned(),
            email: email.as_str().to_lowercase(),
            email_verified: true,
        })
    }
}

/// What to do with a verified identity that has no `(issuer, subject)` link yet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Link {
    /// Sign in to (and link) the existing user with this email.
    ExistingUser,
    /// Create a user with this email (just-in-time), then sign in.
    CreateUser,
    /// Refuse the sign-in; the error says why.
    Refuse(OidcError),
}

/// Decides whether `identity` may sign in as the existing user with its email, or
/// have a user created, or neither. Linking by email is only safe when the provider
/// vouches for the address; creating users is only for domains the operator chose
/// (an exact, case-insensitive match: `sub.example.com` is not `example.com`).
pub fn link_decision(
    identity: &VerifiedIdentity,
    existing_user_for_email: bool,
    allowed_domains: &[String],
) -> Link {
    if !identity.email_verified {
        return Link::Refuse(OidcError::EmailUnverified);
    }
    if existing_user_for_email {
        return Link::ExistingUser;
    }
    let domain = match identity.email.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => domain,
        _ => return Link::Refuse(OidcError::EmailMissing),
    };
    if allowed_domains
        .iter()
        .any(|allowed| allowed.trim().eq_ignore_ascii_case(domain))
    {
        Link::CreateUser
    } else {
        Link::Refuse(OidcError::DomainNotAllowed)
    }
}

/// Refuses plain http except to loopback hosts (see the module doc).
fn check_transport(what: &str, url: &str) -> Result<(), OidcError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| OidcError::Config(format!("{what}: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(&parsed) => Ok(()),
        scheme => Err(OidcError::Config(format!(
            "{what} must use https ({scheme} is allowed only to 127.0.0.1, localhost or [::1])"
        ))),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    match url.host_str() {
        Some(host) if host.eq_ignore_ascii_case("localhost") => true,
        // The URL parser already normalised IP literals; IPv6 keeps its brackets.
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    }
}

fn discovery_error_summary<E: std::error::Error>(e: &openidconnect::DiscoveryError<E>) -> String {
    use openidconnect::DiscoveryError as D;
    // Never the response body: it is the provider's, and may be anything.
    match e {
        D::Request(inner) => format!("request failed: {inner}"),
        D::Response(status, _, msg) => format!("HTTP {status}: {msg}"),
        D::Parse(inner) => format!("unparseable discovery document or JWKS at {}", inner.path()),
        D::UrlParse(inner) => format!("bad URL: {inner}"),
        D::Validation(msg) => msg.clone(),
        D::Other(msg) => msg.clone(),
        _ => "discovery failed".into(),
    }
}

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> OidcError {
    match e {
        // The provider's own error code (`invalid_grant`...), never its description,
        // which a hostile provider could fill with anything.
        RequestTokenError::ServerResponse(resp) => {
            OidcError::CodeRejected(resp.error().as_ref().to_owned())
        }
        RequestTokenError::Request(inner) => {
            OidcError::ProviderUnreachable(format!("token request failed: {inner}"))
        }
        // The body may hold tokens: report only where parsing failed.
        RequestTokenError::Parse(inner, _) => OidcError::ProviderUnreachable(format!(
            "unparseable token response at {}",
            inner.path()
        )),
        RequestTokenError::Other(msg) => OidcError::ProviderUnreachable(msg),
    }
}

fn claims_error(e: ClaimsVerificationError) -> OidcError {
    match e {
        ClaimsVerificationError::InvalidNonce(_) => OidcError::NonceMismatch,
        ClaimsVerificationError::InvalidAudience(_) => OidcError::AudienceMismatch,
        ClaimsVerificationError::Expired(_) => OidcError::InvalidIdToken("expired".into()),
        ClaimsVerificationError::InvalidIssuer(_) => {
            OidcError::InvalidIdToken("wrong issuer".into())
        }
        ClaimsVerificationError::SignatureVerification(_) => {
            OidcError::InvalidIdToken("signature".into())
        }
        other => OidcError::InvalidIdToken(format!("{other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(email: &str, verified: bool) -> VerifiedIdentity {
        VerifiedIdentity {
            issuer: "https://accounts.google.com".into(),
            subject: "1234".into(),
            email: email.into(),
            email_verified: verified,
        }
    }

    #[test]
    fn unverified_email_links_to_nobody() {
        let id = identity("alice@corp.example", false);
        assert_eq!(
            link_decision(&id, true, &["corp.example".into()]),
            Link::Refuse(OidcError::EmailUnverified)
        );
    }

    #[test]
    fn lookalike_domains_cannot_create_users() {
        let allowed = ["corp.example".to_string()];
        for email in [
            "mallory@corp.example.evil.test",
            "mallory@evil-corp.example",
            "mallory@sub.corp.example",
            "corp.example@evil.test",
            "mallory@",
        ] {
            assert!(
                matches!(
                    link_decision(&identity(email, true), false, &allowed),
                    Link::Refuse(_)
                ),
                "{email}"
            );
        }
        assert_eq!(
            link_decision(&identity("bob@CORP.example", true), false, &allowed),
            Link::CreateUser
        );
        assert_eq!(
            link_decision(&identity("bob@corp.example", true), false, &[]),
            Link::Refuse(OidcError::DomainNotAllowed)
        );
    }

    #[test]
    fn plain_http_to_a_remote_provider_is_refused() {
        assert!(check_transport("issuer_url", "http://accounts.example.com").is_err());
        assert!(check_transport("issuer_url", "http://127.0.0.1.evil.test").is_err());
        assert!(check_transport("issuer_url", "https://accounts.google.com").is_ok());
        assert!(check_transport("issuer_url", "http://127.0.0.1:8080").is_ok());
        assert!(check_transport("issuer_url", "http://localhost:8080").is_ok());
        assert!(check_transport("issuer_url", "http://[::1]:8080").is_ok());
    }

    #[test]
    fn a_stale_pending_login_is_expired() {
        let mut p = PendingOidcLogin {
            state: "state-secret".into(),
            nonce: "nonce-secret".into(),
            pkce_verifier: "verifier-secret".into(),
            created_at_unix: 1_000_000,
        };
        let at = |secs: u64| UNIX_EPOCH + Duration::from_secs(secs);
        assert!(!p.is_expired_at(at(1_000_000 + 60)));
        assert!(p.is_expired_at(at(1_000_000 + 11 * 60)));
        p.created_at_unix = 2_000_000;
        assert!(!p.is_expired_at(at(1_000_000)));
        assert!(!format!("{p:?}").contains("secret"));
    }
}
