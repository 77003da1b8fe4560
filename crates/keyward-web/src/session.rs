//! Who is looking at a page: the signed-in user, read from `GET /auth/me` with
//! the browser's cookie. A page that needs a user sends anyone else to the
//! sign-in page, so an ended session's next navigation lands there.

use crate::api::Visitor;
use crate::SharedWeb;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Redirect, Response};
use keyward_core::Role;
use serde::Deserialize;

/// The signed-in user, as `GET /auth/me` answers.
#[derive(Clone, Debug, Deserialize)]
pub struct Me {
    /// User id.
    pub id: String,
    /// Their email.
    pub email: String,
    /// Their organization's name.
    pub org: Option<String>,
    /// Their organization's id.
    pub org_id: String,
    /// Their role there.
    pub role: Role,
    /// Their second factors (`totp`, `passkey`).
    pub second_factors: Vec<String>,
    /// This session's id.
    pub session: String,
}

impl Me {
    /// Whether the user's role is at least `role` (what the pages offer; the
    /// API decides).
    pub fn can(&self, role: Role) -> bool {
        self.role.at_least(role)
    }
}

/// A page request by a signed-in user: who, and the browser to act as.
pub struct Viewer {
    /// The user.
    pub me: Me,
    /// The browser, for the API calls the page makes.
    pub visitor: Visitor,
}

impl FromRequestParts<SharedWeb> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, web: &SharedWeb) -> Result<Self, Response> {
        let Ok(visitor) = Visitor::from_request_parts(parts, web).await;
        let answer = web.api.get(&visitor, "/auth/me").await;
        match answer.parse::<Me>() {
            Ok(me) => Ok(Viewer { me, visitor }),
            Err(_) => Err(Redirect::to("/sign-in").into_response()),
        }
    }
}
