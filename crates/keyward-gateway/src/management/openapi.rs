//! The management API's OpenAPI 3.1 document, served at
//! `GET /api/v1/openapi.json`. It is built from the same `OpenApiRouter`s that
//! register the routes (`utoipa_axum::routes!` reads each handler's
//! `#[utoipa::path]`), so a route cannot be registered without being documented;
//! a test checks every documented route against the running server.

use crate::state::SharedState;
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::OnceLock;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route of the document itself.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(document))
}

/// The document, for tools and tests.
pub fn document_json() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        let (_, mut doc) = super::routes().split_for_parts();
        doc.info.title = "keyward management API".into();
        doc.info.version = env!("CARGO_PKG_VERSION").into();
        doc.info.description = Some(
            "Authenticated by an admin key (kwa_…) in the Authorization header, or by \
             a session cookie from POST /auth/login. \
             Errors: {\"error\": {\"code\", \"message\"}}."
                .into(),
        );
        doc.to_json().unwrap_or_else(|e| {
            tracing::error!(error = %e, "the OpenAPI document does not serialize");
            "{}".into()
        })
    })
}

/// `GET /api/v1/openapi.json`: this document. Not authenticated: it describes the
/// routes, which the 404s and 401s of the API already reveal, and holds no data.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "openapi", responses((status = 200, description = "The OpenAPI 3.1 document of the management API")))]
async fn document() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        document_json(),
    )
}
