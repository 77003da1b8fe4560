//! The one JSON shape of `/api` and `/auth` answers: the error type
//! (`{"error":{"code","message"}}`), the body extractor that refuses in it, and
//! the mapper that turns axum's plain-text refusals into it.

pub mod error;
pub mod extract;

pub use error::ApiError;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// The largest request body a management route reads (bulk routes such as
/// scan uploads and leak reports have their own limits). Axum's default; named
/// so that the 413's message can say it.
pub const MAX_BODY_BYTES: usize = 2 * 1024 * 1024;

/// Axum's extractors refuse in plain text (a `Bytes` body over the limit: a
/// plain 413; a malformed query string or path: a plain 400). JSON bodies are
/// refused in the API's shape by `extract::ApiJson`; this maps the others, so that every management route answers in the one JSON error shape.
pub async fn json_rejections(response: Response) -> Response {
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/plain"));
    if !plain {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge.into_response(),
        StatusCode::BAD_REQUEST => {
            let text = axum::body::to_bytes(response.into_body(), 4_096)
                .await
                .unwrap_or_default();
            ApiError::BadRequest(String::from_utf8_lossy(&text).into_owned()).into_response()
        }
        _ => response,
    }
}
