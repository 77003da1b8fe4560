//! Browsers on other origins: CORS preflights and the headers that let a page
//! read the gateway's answer.
//!
//! Decisions:
//! - Exact origins only, never `*`: the page sends a key, and an answer readable
//!   by every origin would make any page a client of any key it obtains.
//! - A preflight carries no key, so it is answered (204) for an origin that some
//!   active key lists ([`crate::origins`]) and refused (403, no CORS headers,
//!   so the browser stops before sending the key) for any other. Whether the
//!   key the page then sends lists the origin is checked by admission.
//! - `Access-Control-Allow-Origin` is sent, on answers and refusals alike, only
//!   for a listed origin; `Vary: Origin` on every answer to a request that had
//!   one, so a shared cache never serves one origin's answer to another.
//! - No `Access-Control-Allow-Credentials`: the key travels in a header the page
//!   sets, not in a cookie.

use crate::error::GatewayError;
use crate::state::AppState;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};

/// How long a browser may reuse a preflight answer, in seconds.
const PREFLIGHT_MAX_AGE: &str = "600";

/// The gateway's own headers a page may read: request id, rate limits, retry hints.
const EXPOSED: &str = "x-request-id, x-ratelimit-limit-requests, x-ratelimit-remaining-requests, \
     x-ratelimit-reset-requests, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, \
     x-ratelimit-reset-tokens, retry-after, retry-after-ms, x-should-retry, openai-processing-ms, openai-version";

/// Methods a page may ask for.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// Is this a CORS preflight (not an `OPTIONS` call meant for the upstream)?
pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
    method == Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Answers a preflight from `origin`.
pub async fn preflight(state: &AppState, origin: &HeaderValue, headers: &HeaderMap) -> Response {
    let listed = match origin.to_str() {
        Ok(o) => state.origins.contains(o, state.clock.now_ms()).await,
        Err(_) => false,
    };
    if !listed {
        let mut refused = GatewayError::OriginNotAllowed(
            "No key lets web pages of this origin call the gateway.".into(),
        )
        .into_response();
        vary(refused.headers_mut());
        return refused;
    }
    let asked = headers
        .get(header::ACCESS_CONTROL_REQUEST_METHOD)
        .and_then(|m| Method::from_bytes(m.as_bytes()).ok());
    let Some(method) = asked.filter(|m| METHODS.contains(m)) else {
        let mut refused = GatewayError::BadRequest(
            "The gateway answers GET, POST, PUT, PATCH and DELETE from web pages.".into(),
        )
        .into_response();
        allow_origin(refused.headers_mut(), origin);
        return refused;
    };
    let mut answer = Response::new(Body::empty());
    *answer.status_mut() = StatusCode::NO_CONTENT;
    let h = answer.headers_mut();
    allow_origin(h, origin);
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_str(method.as_str()).unwrap_or(HeaderValue::from_static("POST")),
    );
    // The page may send any header it asked for: the key check does not depend
    // on them, and the upstream gets only the forwardable ones.
    if let Some(asked) = headers
        .get(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .filter(|v| is_header_list(v.as_bytes()))
    {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static(PREFLIGHT_MAX_AGE),
    );
    answer
}

/// Lets the page of `origin` read `response` if some key lists that origin.
pub async fn expose_to(state: &AppState, origin: &HeaderValue, response: &mut Response) {
    let listed = match origin.to_str() {
        Ok(o) => state.origins.contains(o, state.clock.now_ms()).await,
        Err(_) => false,
    };
    let h = response.headers_mut();
    if listed {
        allow_origin(h, origin);
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED),
        );
    } else {
        vary(h);
    }
}

fn allow_origin(h: &mut HeaderMap, origin: &HeaderValue) {
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    vary(h);
}

fn vary(h: &mut HeaderMap) {
    h.append(header::VARY, HeaderValue::from_static("Origin"));
}

/// A comma-separated list of header names (RFC 9110 tokens), nothing else.
fn is_header_list(v: &[u8]) -> bool {
    v.split(|&b| b == b',').all(|name| {
        let name = name.trim_ascii();
        !name.is_empty()
            && name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::is_header_list;

    #[test]
    fn only_header_name_lists_are_echoed() {
        assert!(is_header_list(b"authorization, content-type"));
        assert!(is_header_list(b"x-stainless-os,x-stainless-lang"));
        assert!(!is_header_list(b""));
        assert!(!is_header_list(b"authorization,,content-type"));
        assert!(!is_header_list(b"content-type\r\nset-cookie: a=b"));
        assert!(!is_header_list(b"a b"));
    }
}
