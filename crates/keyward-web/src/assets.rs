//! The stylesheet and the script, ours, embedded in the binary and served from
//! keyward itself (the CSP allows no other origin).

use crate::SharedWeb;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

/// `/assets/…`.
pub fn router() -> Router<SharedWeb> {
    Router::new()
        .route(
            "/assets/app.css",
            get(|| async { asset("text/css; charset=utf-8", CSS) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", JS) }),
        )
}

fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // Short: a new version of keyward serves a new file at the same path.
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
}
