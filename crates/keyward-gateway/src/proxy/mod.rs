//! `/v1/*`: verify the key, meter, and forward to the upstream with its key.

pub mod body;
pub mod cors;
pub mod verify;

use crate::error::GatewayError;
use crate::limits::admission::{admit, Ask, Caller};
use crate::metering::meter::{Arrival, Asked, MeteredBody, RequestMeter};
use crate::proxy::body::{inspect_body, rewrite_body, RequestBody};
use crate::proxy::verify::{verify_caller, ParseMemo};
use crate::rate_headers::write_headers as write_rate_headers;
use crate::request;
use crate::request::credentials::{forwardable_query, presented_key, KEY_HEADERS};
use crate::state::{AppState, SharedState};
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http_body_util::BodyExt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// Headers that describe one hop and must not be forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// Headers that name the upstream account: a client may not choose it.
const UPSTREAM_ACCOUNT_HEADERS: [&str; 3] = ["openai-organization", "openai-project", "set-cookie"];

/// The usage event's endpoint for a request whose path was refused: the path
/// itself may hold a key, so it is not stored.
const REFUSED_PATH: &str = "(refused path)";

/// The `/v1/*` handler; `memo` is the connection's.
pub async fn forward(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    memo: Arc<ParseMemo>,
    req: Request,
) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    if let Some(origin) = &origin {
        if cors::is_preflight(req.method(), req.headers()) {
            let answer = cors::preflight(&state, origin, req.headers()).await;
            state.metrics.response(answer.status().as_u16());
            return answer;
        }
    }
    let mut response = match handle(&state, peer, &memo, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status() == http::StatusCode::UNAUTHORIZED {
                state.metrics.auth_refusals.inc();
            }
            e.into_response()
        }
    };
    if let Some(origin) = &origin {
        cors::expose_to(&state, origin, &mut response).await;
    }
    state.metrics.response(response.status().as_u16());
    response
}

async fn handle(
    state: &SharedState,
    peer: SocketAddr,
    memo: &ParseMemo,
    req: Request,
) -> Result<Response, GatewayError> {
    let started = Instant::now();
    let at_ms = state.clock.now_ms();
    let caller = verify_caller(
        state,
        presented_key(req.headers()).ok_or(GatewayError::MissingKey)?,
        Some(memo),
    )
    .await?;
    // From here on, every request leaves a usage event, refused or not, but
    // one refused because usage cannot be stored: its event would grow the
    // very backlog that refused it (the 503s are in the metrics).
    match forward_verified(state, peer, &caller, started, at_ms, req).await {
        Ok(response) => Ok(response),
        Err(Refusal {
            error: GatewayError::UsageBacklog,
            ..
        }) => Err(GatewayError::UsageBacklog),
        Err(Refusal { meter, error }) => {
            meter.refused(error.status().as_u16());
            Err(error)
        }
    }
}

/// A request refused before the upstream answered, with the meter that writes
/// its usage event: [`handle`] is the one place that writes it.
struct Refusal {
    meter: RequestMeter,
    error: GatewayError,
}

/// The part of [`handle`] after the key is verified.
async fn forward_verified(
    state: &SharedState,
    peer: SocketAddr,
    caller: &Caller,
    started: Instant,
    at_ms: i64,
    req: Request,
) -> Result<Response, Refusal> {
    let (parts, body) = req.into_parts();
    let stem = state.config.key_format.stem();
    let path_refusal = request::path::check(parts.uri.path(), stem).err();
    let endpoint = match path_refusal {
        None => parts.uri.path().to_owned(),
        Some(_) => REFUSED_PATH.to_owned(),
    };
    let client_ip = state.config.client_ip.client_ip(peer.ip(), &parts.headers);
    let arrival = Arrival {
        key: caller.key.clone(),
        endpoint,
        at_ms,
        started,
        client_ip: Some(crate::request::client_ip::text(client_ip)),
    };

    let read = read_request(state, &arrival.endpoint, path_refusal, &parts, body).await;
    let (path_and_query, body, inspected) = match read {
        Ok(read) => read,
        Err(error) => {
            let meter = RequestMeter::new(state.metering.clone(), arrival, Asked::default(), None);
            return Err(Refusal { meter, error });
        }
    };
    let (facts, uninspected_body) = match inspected {
        RequestBody::Json(f) => (Some(f), false),
        RequestBody::Empty => (None, false),
        RequestBody::Opaque => (None, true),
    };
    let asked = match &facts {
        Some(f) => Asked {
            model: f.model.clone(),
            price: state.config.prices.get(&f.model).copied(),
            stream: f.stream,
            input_estimate: body.len() as i64,
        },
        None => Asked {
            input_estimate: body.len() as i64,
            ..Asked::default()
        },
    };

    let method = parts.method.as_str();
    let ask = Ask {
        method,
        path: &arrival.endpoint,
        // A bodiless request that cannot run a model names none; a bodiless
        // POST names the empty model, which no model restriction allows.
        model: match &facts {
            Some(f) => Some(f.model.as_str()),
            None if uninspected_body || crate::limits::admission::costs_nothing(method) => None,
            None => Some(""),
        },
        uninspected_body,
        client_ip,
        origin: parts
            .headers
            .get(header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("")),
        body: &body,
        requested_output: facts.as_ref().and_then(|f| f.requested_output),
        price: asked.price,
    };
    let admitted = if refused_while_redis_is_down(state) {
        Err(GatewayError::LimitsUnavailable)
    } else {
        admit(&state.limits, caller, &ask).await
    };
    let endpoint = arrival.endpoint.clone();
    let metering = state.metering.clone();
    let (mut meter, rate_headers, output_cap) = match admitted {
        Ok(a) => {
            let (headers, cap) = (a.headers, a.output_cap);
            (
                RequestMeter::new(metering, arrival, asked, Some(a)),
                headers,
                cap,
            )
        }
        Err(error) => {
            let meter = RequestMeter::new(metering, arrival, asked, None);
            return Err(Refusal { meter, error });
        }
    };
    let body = rewrite_body(&endpoint, facts.as_ref(), output_cap, body);
    let relabel = facts.as_ref().is_some_and(|f| f.relabel);
    let upstream_req = match body
        .and_then(|b| build_upstream_request(state, &parts, &path_and_query, b, relabel))
    {
        Ok(r) => r,
        Err(error) => return Err(Refusal { meter, error }),
    };
    if let Some(p) = meter.admission_mut().and_then(|a| a.permit.as_mut()) {
        p.commit();
    }
    let upstream_resp = match state.upstream.send(upstream_req).await {
        Ok(r) => r,
        Err(error) => {
            state.metrics.upstream_failures.inc();
            return Err(Refusal { meter, error });
        }
    };
    meter.answered(
        upstream_resp.status().as_u16(),
        started.elapsed().as_millis() as i64,
    );

    let (mut resp_parts, upstream_body) = upstream_resp.into_parts();
    clean_response_headers(&mut resp_parts.headers);
    write_rate_headers(&mut resp_parts.headers, &rate_headers);
    let is_sse = resp_parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let body = if is_sse {
        let strip = facts
            .as_ref()
            .is_some_and(|f| f.stream && !f.client_wants_usage);
        // Chunks may be removed, so the length is no longer known.
        resp_parts.headers.remove(header::CONTENT_LENGTH);
        Body::new(MeteredBody::sse(upstream_body, meter, strip))
    } else {
        Body::new(MeteredBody::json(upstream_body, meter))
    };
    Ok(Response::from_parts(resp_parts, body))
}

/// Checks the path and reads the body: the target to forward to, the body, and
/// what it says.
async fn read_request(
    state: &AppState,
    endpoint: &str,
    path_refusal: Option<request::path::PathRefusal>,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(PathAndQuery, Bytes, RequestBody), GatewayError> {
    // Before any policy check: the policy matches the path the upstream gets.
    if let Some(refusal) = path_refusal {
        return Err(refusal.into());
    }
    let path_and_query = forwarded_target(&parts.uri, state.config.key_format.stem())?;
    let body = read_body(
        body,
        parts.headers.get(header::CONTENT_LENGTH),
        state.config.max_body_bytes,
    )
    .await?;
    let inspected = inspect_body(endpoint, &parts.headers, &body)?;
    Ok((path_and_query, body, inspected))
}

async fn read_body(
    mut body: Body,
    declared: Option<&HeaderValue>,
    limit: usize,
) -> Result<Bytes, GatewayError> {
    let declared = declared
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(GatewayError::TooLarge { limit });
    }
    let unreadable = || GatewayError::BadRequest("The request body could not be read.".into());
    let mut collected = bytes::BytesMut::new();
    let mut first: Option<Bytes> = None;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(|_| unreadable())?.into_data() else {
            continue;
        };
        if collected.len() + first.as_ref().map_or(0, Bytes::len) + data.len() > limit {
            drain_briefly(body).await;
            return Err(GatewayError::TooLarge { limit });
        }
        // A body that arrives in one frame (the usual case) is kept without a copy.
        match first.take() {
            None if collected.is_empty() => first = Some(data),
            None => collected.extend_from_slice(&data),
            Some(f) => {
                collected.extend_from_slice(&f);
                collected.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| collected.freeze()))
}

/// Reads and discards what is left of an oversized body, up to a bound, so
/// that the client (still sending) reads the 413 instead of a connection reset:
/// a socket closed with unread data answers the sender with a reset.
async fn drain_briefly(mut body: Body) {
    const MAX_BYTES: usize = 4 << 20;
    const MAX_TIME: std::time::Duration = std::time::Duration::from_secs(1);
    let drain = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, Bytes::len);
            if seen > MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(MAX_TIME, drain).await;
}

/// The path and query sent upstream: the path exactly as checked, the query
/// without credentials ([`forwardable_query`]). No copy unless a parameter is
/// removed.
fn forwarded_target(uri: &Uri, stem: &str) -> Result<PathAndQuery, GatewayError> {
    let Some(pq) = uri.path_and_query() else {
        return Ok(PathAndQuery::from_static("/"));
    };
    let Some(query) = pq.query() else {
        return Ok(pq.clone());
    };
    let target = match forwardable_query(query, stem) {
        None => return Ok(pq.clone()),
        Some(q) if q.is_empty() => PathAndQuery::try_from(pq.path()),
        Some(q) => PathAndQuery::try_from(format!("{}?{q}", pq.path())),
    };
    target.map_err(|_| GatewayError::BadRequest("The request path is not valid.".into()))
}

fn build_upstream_request(
    state: &AppState,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    body: Bytes,
    relabel: bool,
) -> Result<http::Request<Bytes>, GatewayError> {
    let uri = state.upstream.url_for(path_and_query)?;
    let mut req = http::Request::builder()
        .method(parts.method.clone())
        .uri(uri);
    let headers = req.headers_mut().ok_or(GatewayError::Internal)?;
    for (name, value) in &parts.headers {
        if forwardable_request_header(name) {
            headers.append(name.clone(), value.clone());
        }
    }
    // Ask for an identity body so usage can be read from it.
    headers.remove(header::ACCEPT_ENCODING);
    if relabel {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    if let Some(v) = state.upstream.authorization() {
        headers.insert(header::AUTHORIZATION, v.clone());
    }
    // Set here so the HTTP client does not format it for every request.
    headers.insert(header::HOST, state.upstream.host().clone());
    req.body(body).map_err(|_| GatewayError::Internal)
}

fn forwardable_request_header(name: &HeaderName) -> bool {
    let n = name.as_str();
    !(HOP_BY_HOP.contains(&n)
        || KEY_HEADERS.contains(&n)
        || n == "host"
        || n == "content-length"
        || n == "cookie"
        || UPSTREAM_ACCOUNT_HEADERS.contains(&n))
}

/// May an upstream response header reach the client?
///
/// Decision: an allowlist. Only headers that describe the body, its caching,
/// when to retry, and OpenAI's informational request id, version and timing
/// pass (the `openai` SDKs read `x-request-id`, `retry-after(-ms)` and
/// `x-should-retry`); everything else (authorization echoes,
/// `www-authenticate`, cookies, account and project ids, `x-api-key`-like
/// headers, CDN and server details) is dropped, so a header an upstream
/// invents tomorrow is not leaked either.
/// The upstream's own `x-ratelimit-*` headers describe the upstream account
/// (shared by every key), not the client's allowance: they are dropped, and the
/// gateway's own are written instead. A static `match` on the name: no
/// allocation, no hashing.
fn forwardable_response_header(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-type"
            | "content-length"
            | "content-encoding"
            | "content-language"
            | "content-disposition"
            | "cache-control"
            | "expires"
            | "etag"
            | "last-modified"
            | "date"
            | "retry-after"
            | "retry-after-ms"
            | "x-should-retry"
            | "x-request-id"
            | "openai-processing-ms"
            | "openai-version"
            | "x-keyward-simulated"
    )
}

/// Keeps only [`forwardable_response_header`]s. One pass finds whether anything
/// must go (usually nothing for a JSON answer); a `remove` per listed name
/// looked each one up by hashing, about 3 % of a proxied request's
/// instructions.
fn clean_response_headers(headers: &mut HeaderMap) {
    let unwanted = |name: &HeaderName| !forwardable_response_header(name);
    if !headers.keys().any(unwanted) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| unwanted(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// Whether this node refuses every request now: its operator chose
/// `--redis-down refuse-all` and the invalidation bus is not subscribed
/// (Redis is out of reach).
fn refused_while_redis_is_down(state: &AppState) -> bool {
    state.config.redis.as_ref().is_some_and(|r| {
        r.when_down == crate::config::WhenRedisDown::RefuseAll && !state.bus.is_subscribed()
    })
}
