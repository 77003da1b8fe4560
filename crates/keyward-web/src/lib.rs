//! keyward's dashboard: server-rendered pages for everything the JSON API does,
//! at `/` of `keyward serve`.
//!
//! How it is made, and why:
//! - **Pages are HTML rendered on the server** with `maud` (checked at compile
//!   time, no template files to ship) and work without JavaScript: forms post
//!   to the page routes, which pass them on to the API. One small script of our
//!   own (`assets/app.js`) adds what needs it: copy buttons and WebAuthn.
//! - **Every read and write goes through the API** in process ([`api`]), with
//!   the browser's cookie and headers, so the dashboard has exactly the API's
//!   authorization, cross-site and re-authentication checks.
//! - **Charts are SVG drawn on the server** from the hourly rollups: no
//!   third-party script, nothing inline for the CSP to allow, and the same data
//!   in a table beside them.
//! - **Strict headers on every answer** ([`layout::security_headers`]): a CSP
//!   with `script-src 'self'` and no inline script or style, `frame-ancestors
//!   'none'`, `no-referrer`, `nosniff`, and `no-store` on every page.

pub mod api;
pub mod assets;
pub mod chart;
pub mod layout;
mod pages;
pub mod session;

pub use api::Api;

use axum::Router;
use std::sync::Arc;

/// What the pages need to know about the deployment.
#[derive(Clone, Debug, Default)]
pub struct WebOptions {
    /// "Sign in with Google" (OpenID Connect) is configured.
    pub oidc: bool,
}

/// The dashboard's share: the API it reads through and the options.
pub struct Web {
    /// The in-process API.
    pub api: Api,
    /// The deployment's options.
    pub options: WebOptions,
}

/// The state of the dashboard's routes.
pub type SharedWeb = Arc<Web>;

/// The dashboard's routes: pages at `/` and below, assets at `/assets`.
pub fn router(api: Api, options: WebOptions) -> Router {
    let web = Arc::new(Web { api, options });
    pages::router()
        .merge(assets::router())
        .layer(axum::middleware::map_response(layout::security_headers))
        .with_state(web)
}
