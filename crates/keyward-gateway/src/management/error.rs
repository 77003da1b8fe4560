//! The management API's one error type: `{"error":{"code","message"}}`.

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use keyward_api::error::ErrorBody;
use keyward_store::StoreError;

/// A management API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No valid admin key.
    #[error("a valid admin key (kwa_…) is required in the Authorization header")]
    Unauthorized,
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
    /// Storage failed; details are logged.
    #[error("internal error")]
    Internal,
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
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
