//! Leak response: reports that one of our keys was found exposed (GitHub's
//! secret-scanning partner program, `keyward scan --report`, watchers) disable
//! the key at once, are recorded, audited, and notified to the key's owners.
//!
//! `intake` is GitHub's signed endpoint, `response` is what a confirmed leak
//! does, `watchers` scan configured sources on a schedule. The management API's
//! leak resource lives with the other resources in `crate::management`.

pub mod intake;
pub mod response;
pub mod watchers;

use crate::state::SharedState;
use axum::routing::post;
use axum::Router;

/// The GitHub partner endpoint (signed; no admin key).
pub fn router() -> Router<SharedState> {
    Router::new().route("/leaks/github", post(intake::github))
}
