//! The management API's one error type: `{"error":{"code","message"}}`.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_api::error::ErrorBody;
use keyward_store::StoreError;

/// A management API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid admin key and no valid session.
    #[error("sign in, or send a valid admin key (kwa_…) in the Authorization header")]
    Unauthorized,
    /// The caller is known but may not do this (role, or the bootstrap key's
    /// limits); never used for another organization's objects, which are
    /// "not found".
    #[error("{0}")]
    Forbidden(String),
    /// Wrong email, password or second factor; the same answer whether or not
    /// the account exists.
    #[error("the email, password or code is not right")]
    InvalidCredentials,
    /// Too many failed sign-ins from this address or on this account.
    #[error("too many failed attempts: try again in {0} seconds")]
    Throttled(u64),
    /// A sensitive action without a recent sign-in or re-authentication.
    #[error("confirm your password or a second factor first (POST /auth/reauthenticate)")]
    ReauthenticationRequired,
    /// A state-changing request carried a session cookie but came from
    /// another site (CSRF).
    #[error("cross-site request refused: the Origin is not this server's")]
    CrossSite,
    /// A new password that the policy refuses; `.0` is the stable code.
    #[error("{1}")]
    Password(&'static str, String),
    /// The object does not exist (or is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// The request conflicts with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request body is over the management API's limit.
    #[error(
        "the request body is over the limit of {} bytes",
        super::MAX_BODY_BYTES
    )]
    PayloadTooLarge,
    /// A refusal with its own status and stable code, for answers the other
    /// variants do not name (a passkey ceremony that failed, a feature this
    /// deployment has not configured).
    #[error("{2}")]
    Coded(StatusCode, &'static str, String),
    /// Storage failed; details are logged.
    #[error("internal error")]
    Internal,
    /// Sign-in with OpenID Connect is not configured on this server.
    #[error("sign-in with an OpenID provider is not configured on this server")]
    OidcNotConfigured,
    /// The OpenID Connect sign-in failed at the provider or in the ID token's
    /// checks, or its identity may not have an account (see
    /// [`keyward_auth::oidc::OidcError::code`] for the codes).
    #[error(transparent)]
    Oidc(#[from] keyward_auth::oidc::OidcError),
    /// An OpenID Connect callback keyward cannot match to a sign-in this
    /// browser began, or whose user may not sign in: `.0` is the stable code
    /// (`oidc_sign_in_unknown`, `oidc_browser_mismatch`, `oidc_provider_error`,
    /// `oidc_callback_invalid`, `oidc_account_refused`), `.1` the message.
    /// Never echoes the callback's state or code.
    #[error("{1}")]
    OidcCallback(&'static str, String),
    /// A gateway key was refused where it authenticates a request outside
    /// `/v1` (`POST /keyward/v1/tokens`): sent as the gateway sends it — same
    /// status, code and headers (`Retry-After`, `x-ratelimit-*`), in OpenAI's
    /// shape, whose `code` and `message` are where this API puts them.
    #[error(transparent)]
    Gateway(#[from] crate::error::GatewayError),
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => ApiError::NotFound(what),
            StoreError::Duplicate(what) => ApiError::Conflict(format!("{what} already exists")),
            StoreError::Backend(detail) => {
                tracing::error!(error = %detail, "storage failed in the management API");
                ApiError::Internal
            }
            // Only opening a store answers this; a running server never sees it.
            e @ StoreError::SchemaNewer { .. } => {
                tracing::error!(error = %e, "storage refused in the management API");
                ApiError::Internal
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        ApiError::BadRequest(format!("invalid JSON body: {}", e.body_text()))
    }
}

impl From<BytesRejection> for ApiError {
    fn from(e: BytesRejection) -> Self {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return ApiError::PayloadTooLarge;
        }
        ApiError::BadRequest(format!("unreadable body: {}", e.body_text()))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = match self {
            ApiError::Gateway(e) => return e.into_response(),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::Throttled(secs) => {
                let body = axum::Json(ErrorBody::new("too_many_attempts", self.to_string()));
                let after = secs.max(1).to_string();
                return (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::RETRY_AFTER, after)],
                    body,
                )
                    .into_response();
            }
            ApiError::ReauthenticationRequired => {
                (StatusCode::FORBIDDEN, "reauthentication_required")
            }
            ApiError::CrossSite => (StatusCode::FORBIDDEN, "cross_site_request"),
            ApiError::Password(code, _) => (StatusCode::BAD_REQUEST, code),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Coded(status, code, _) => (status, code),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            ApiError::OidcNotConfigured => (StatusCode::NOT_FOUND, "oidc_not_configured"),
            ApiError::Oidc(e) => return oidc_error(&e),
            ApiError::OidcCallback(
                code @ ("oidc_browser_mismatch" | "oidc_account_refused"),
                _,
            ) => (StatusCode::FORBIDDEN, code),
            ApiError::OidcCallback(code, _) => (StatusCode::BAD_REQUEST, code),
        };
        let body = axum::Json(ErrorBody::new(code, self.to_string()));
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body is not read, so the connection cannot carry
            // another request: say so, or a client would reuse it and fail.
            return (status, [(header::CONNECTION, "close")], body).into_response();
        }
        (status, body).into_response()
    }
}

/// One status per kind of OpenID Connect failure. The provider being down or
/// keyward misconfigured is 503 with a fixed message (the detail, which may
/// name internal addresses, is logged); an identity refused an account is 403;
/// anything wrong with the callback or the ID token is 400.
fn oidc_error(e: &keyward_auth::oidc::OidcError) -> Response {
    use keyward_auth::oidc::OidcError as E;
    let (status, message) = match e {
        E::Config(_) | E::ClientSecretMissing { .. } | E::ProviderUnreachable(_) => {
            tracing::error!(error = %e, "OpenID Connect sign-in unavailable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "sign-in with the OpenID provider is unavailable for now; try again later, or \
                 sign in with a password"
                    .to_owned(),
            )
        }
        E::EmailMissing | E::EmailUnverified | E::DomainNotAllowed => {
            (StatusCode::FORBIDDEN, e.to_string())
        }
        E::StateMismatch
        | E::LoginExpired
        | E::CodeRejected(_)
        | E::NonceMismatch
        | E::AudienceMismatch
        | E::InvalidIdToken(_) => (StatusCode::BAD_REQUEST, e.to_string()),
    };
    (status, axum::Json(ErrorBody::new(e.code(), message))).into_response()
}
