//! The dashboard's one way to read or change anything: a request to the same
//! `/api/v1` and `/auth` routes the JSON API serves, made in process through the
//! server's router and carrying the browser's own cookie, origin headers, user
//! agent and address. Authorization, the cross-site check, re-authentication,
//! throttling and the audit log are therefore exactly the API's: the dashboard
//! adds no second path to check and skips none.

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::convert::Infallible;
use std::net::SocketAddr;
use tower::ServiceExt;

/// The API the pages are drawn from: the server's router for `/api/v1` and
/// `/auth`, with its state.
#[derive(Clone)]
pub struct Api {
    router: Router,
}

impl Api {
    /// Wraps the server's router (it must serve `/api/v1` and `/auth`).
    pub fn new(router: Router) -> Self {
        Self { router }
    }
}

/// Request headers that the API's checks read, forwarded from the browser:
/// the session cookie, the cross-site check's headers, and what the audit log
/// and the client-address rules record.
const FORWARDED: [HeaderName; 8] = [
    header::COOKIE,
    header::ORIGIN,
    header::HOST,
    header::USER_AGENT,
    HeaderName::from_static("sec-fetch-site"),
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("x-real-ip"),
    header::FORWARDED,
];

/// The browser behind a dashboard request: what of it the API is shown.
#[derive(Clone, Debug)]
pub struct Visitor {
    headers: HeaderMap,
    peer: Option<ConnectInfo<SocketAddr>>,
}

impl<S: Send + Sync> FromRequestParts<S> for Visitor {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Infallible> {
        let mut headers = HeaderMap::new();
        for name in FORWARDED {
            for value in parts.headers.get_all(&name) {
                headers.append(name.clone(), value.clone());
            }
        }
        Ok(Self {
            headers,
            peer: parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned(),
        })
    }
}

/// What the API answered.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Its `Set-Cookie` headers, passed on to the browser.
    pub cookies: Vec<HeaderValue>,
    /// Its body (JSON; `Null` when empty or not JSON).
    pub body: Value,
}

impl Answer {
    /// Whether the status is 2xx.
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// The body as `T`, or the API's own error message.
    pub fn parse<T: DeserializeOwned>(self) -> Result<T, Refusal> {
        if !self.ok() {
            return Err(self.refusal());
        }
        serde_json::from_value(self.body).map_err(|e| {
            tracing::error!(error = %e, "the dashboard could not read an API answer");
            Refusal {
                status: StatusCode::BAD_GATEWAY,
                code: "unreadable_answer".into(),
                message: "the server answered in a shape this page does not know".into(),
            }
        })
    }

    /// The API's refusal: its status, code and message.
    pub fn refusal(&self) -> Refusal {
        let error = &self.body["error"];
        Refusal {
            status: self.status,
            code: error["code"].as_str().unwrap_or("error").to_owned(),
            message: error["message"]
                .as_str()
                .unwrap_or("the request was refused")
                .to_owned(),
        }
    }
}

/// An API refusal, as pages show it.
#[derive(Clone, Debug)]
pub struct Refusal {
    /// The API's status.
    pub status: StatusCode,
    /// The API's stable code (`reauthentication_required`, …).
    pub code: String,
    /// The API's message, for people.
    pub message: String,
}

impl Api {
    /// `GET path` as `visitor`.
    pub async fn get(&self, visitor: &Visitor, path: &str) -> Answer {
        self.send(visitor, Method::GET, path, None).await
    }

    /// `method path` with a JSON body as `visitor`.
    pub async fn send(
        &self,
        visitor: &Visitor,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(headers) = request.headers_mut() {
            headers.extend(visitor.headers.clone());
            if body.is_some() {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let mut request = match request.body(Body::from(bytes)) {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "the dashboard built a bad API request");
                return Answer {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    cookies: Vec::new(),
                    body: Value::Null,
                };
            }
        };
        if let Some(peer) = &visitor.peer {
            request.extensions_mut().insert(*peer);
        }
        let response = match self.router.clone().oneshot(request).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = response.status();
        let cookies = response
            .headers()
            .get_all(header::SET_COOKIE)
            .iter()
            .cloned()
            .collect();
        let body = match response.into_body().collect().await {
            Ok(collected) => serde_json::from_slice(&collected.to_bytes()).unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        Answer {
            status,
            cookies,
            body,
        }
    }
}
