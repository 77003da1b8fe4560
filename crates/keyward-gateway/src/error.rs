//! The gateway's one error type and its one status mapping, in OpenAI's shape.
//!
//! Every `/v1` refusal goes through [`GatewayError`], so clients see
//! `{"error":{"message","type","param","code"}}` with the status OpenAI would send.
//! Messages never contain the key the client sent.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Why the gateway refused or failed a request.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No key in `Authorization`, `api-key` or `x-api-key`.
    #[error("You didn't provide an API key. Send your keyward key in the Authorization header as `Bearer KEY` (or in `api-key` / `x-api-key`).")]
    MissingKey,
    /// The key is not usable; the message says why without echoing it.
    #[error("{0}")]
    InvalidKey(String),
    /// The request body is not what the endpoint needs.
    #[error("{0}")]
    BadRequest(String),
    /// The request body is over the size limit.
    #[error("The request body is larger than the gateway's limit of {limit} bytes.")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The key may not call this endpoint.
    #[error("{0}")]
    PermissionDenied(String),
    /// The key may not use this model.
    #[error("{0}")]
    ModelNotAllowed(String),
    /// The key may not be used from this address.
    #[error("{0}")]
    IpNotAllowed(String),
    /// The key may not be used from a web page of this origin.
    #[error("{0}")]
    OriginNotAllowed(String),
    /// A rate limit was reached.
    #[error("{}", .0.message)]
    RateLimited(crate::rate_headers::RateLimited),
    /// A hard budget cannot pay for the request.
    #[error("{0}")]
    InsufficientQuota(String),
    /// The request's cost cannot be bounded, and a hard budget applies.
    #[error("{0}")]
    CostUnbounded(String),
    /// The shared counters (cluster mode's Redis) cannot be reached, so the
    /// key's rate limits and budgets cannot be checked: refused, not let
    /// through unchecked.
    #[error("The gateway cannot check this key's rate limits and budgets right now (its shared counters are unreachable), so the request was refused rather than risk exceeding them. Try again shortly.")]
    LimitsUnavailable,
    /// Usage could not be stored for a while (the database is unreachable)
    /// and as much as the gateway holds in memory is waiting: refused, so
    /// that nothing is served that could not be counted.
    #[error("The gateway cannot record usage right now (its database is unreachable and its buffer is full), so the request was refused rather than served uncounted. Try again shortly.")]
    UsageBacklog,
    /// The upstream could not be reached.
    #[error("The upstream API could not be reached. Try again later.")]
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    #[error("The upstream API did not respond in time.")]
    UpstreamTimeout,
    /// A bug or storage failure; details go to the log, not the client.
    #[error("The gateway had an internal error.")]
    Internal,
}

impl GatewayError {
    fn parts(&self) -> (StatusCode, &'static str, Option<&'static str>) {
        match self {
            GatewayError::MissingKey | GatewayError::InvalidKey(_) => (
                StatusCode::UNAUTHORIZED,
                "invalid_request_error",
                Some("invalid_api_key"),
            ),
            GatewayError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", None),
            GatewayError::PermissionDenied(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("permission_denied"),
            ),
            GatewayError::ModelNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("model_not_allowed"),
            ),
            GatewayError::IpNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("ip_not_allowed"),
            ),
            GatewayError::OriginNotAllowed(_) => (
                StatusCode::FORBIDDEN,
                "invalid_request_error",
                Some("origin_not_allowed"),
            ),
            GatewayError::RateLimited(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "requests",
                Some("rate_limit_exceeded"),
            ),
            GatewayError::InsufficientQuota(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                Some("insufficient_quota"),
            ),
            GatewayError::CostUnbounded(_) => (
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("cost_not_bounded"),
            ),
            GatewayError::TooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                Some("request_too_large"),
            ),
            GatewayError::LimitsUnavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                Some("limits_unavailable"),
            ),
            GatewayError::UsageBacklog => (
                StatusCode::SERVICE_UNAVAILABLE,
                "api_error",
                Some("usage_backlog"),
            ),
            GatewayError::UpstreamUnreachable => (
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("upstream_unreachable"),
            ),
            GatewayError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "api_error",
                Some("upstream_timeout"),
            ),
            GatewayError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "api_error",
                Some("internal_error"),
            ),
        }
    }

    /// The HTTP status this error is sent with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let (status, kind, code) = self.parts();
        let body = json!({"error": {"message": self.to_string(), "type": kind, "param": null, "code": code}});
        let mut resp = (status, axum::Json(body)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        }
        if let GatewayError::TooLarge { .. } = &self {
            // The rest of the body was not read, so the connection cannot carry
            // another request; saying so keeps clients from reusing it (and
            // failing their next request on a closed socket).
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let GatewayError::RateLimited(r) = &self {
            let secs = (r.retry_after_ms + 999) / 1000;
            resp.headers_mut()
                .insert("retry-after", HeaderValue::from(secs.max(1)));
            crate::rate_headers::write_headers(resp.headers_mut(), &r.headers);
        }
        resp
    }
}
