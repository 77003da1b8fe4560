//! `/v1/*`: verify the key, meter, and forward to the upstream with its key.

pub mod verify;

use crate::error::GatewayError;
use crate::limits::admission::{admit, Ask, Caller};
use crate::metering::meter::{Arrival, Asked, MeteredBody, RequestMeter};
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
use http_body_util::{BodyExt, Full};
use serde_json::Value;
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

/// Routes whose request body is always a JSON object, so it is inspected
/// whatever the request's Content-Type says.
const JSON_ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
];

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
    let response = match handle(&state, peer, &memo, req).await {
        Ok(resp) => resp,
        Err(e) => {
            if e.status() == http::StatusCode::UNAUTHORIZED {
                state.metrics.auth_refusals.inc();
            }
            e.into_response()
        }
    };
    state.metrics.response(response.status().as_u16());
    response
}

/// A request body as the gateway sees it.
enum RequestBody {
    /// No body.
    Empty,
    /// A JSON object, read.
    Json(RequestFacts),
    /// Not JSON (a multipart upload, say): forwarded unread.
    Opaque,
}

/// What the gateway learned from a JSON request body.
struct RequestFacts {
    /// The model named, or empty.
    model: String,
    /// The request's Content-Type did not say JSON: the upstream is told it is,
    /// so that it reads the body as the gateway did.
    relabel: bool,
    stream: bool,
    /// The client asked for the usage chunk itself.
    client_wants_usage: bool,
    /// The output cap the client set.
    requested_output: Option<i64>,
    /// Which top-level members the body has, of those the gateway may set, and
    /// whether it has any at all: where [`prepend_members`] may write.
    members: Members,
}

/// The top-level members of a request body that [`rewrite_body`] needs to know
/// about, noted while the body is deserialized (so it is not walked again).
#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Members {
    /// The object has at least one member.
    any: bool,
    /// A member's name is escaped, so it could spell one of the names below.
    escaped: bool,
    stream_options: bool,
    max_completion_tokens: bool,
    max_tokens: bool,
    max_output_tokens: bool,
}

impl Members {
    /// Whether the body has a member named `name` (of those tracked).
    fn has(&self, name: &str) -> bool {
        match name {
            "stream_options" => self.stream_options,
            "max_completion_tokens" => self.max_completion_tokens,
            "max_tokens" => self.max_tokens,
            "max_output_tokens" => self.max_output_tokens,
            _ => true,
        }
    }
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
    // From here on, every request leaves a usage event, refused or not.
    match forward_verified(state, peer, &caller, started, at_ms, req).await {
        Ok(response) => Ok(response),
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
        body: &body,
        requested_output: facts.as_ref().and_then(|f| f.requested_output),
        price: asked.price,
    };
    let admitted = admit(&state.limits, caller, &ask).await;
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

/// Applies the gateway's changes to a JSON body: ask a stream for usage, and set
/// the output cap a budget requires. Serializes only when something changed.
fn rewrite_body(
    endpoint: &str,
    facts: Option<&RequestFacts>,
    output_cap: Option<i64>,
    original: Bytes,
) -> Result<Bytes, GatewayError> {
    let Some(facts) = facts else {
        return Ok(original);
    };
    // The Responses API always reports usage in its final event; chat and legacy
    // completions only when asked.
    let ask_usage = facts.stream && !facts.client_wants_usage && endpoint != "/v1/responses";
    if !ask_usage && output_cap.is_none() {
        return Ok(original);
    }
    let cap = output_cap.map(|cap| {
        let field = match endpoint {
            "/v1/completions" => "max_tokens",
            "/v1/responses" => "max_output_tokens",
            _ => "max_completion_tokens",
        };
        (field, cap)
    });
    if let Some(spliced) = prepend_members(&original, &facts.members, ask_usage, cap) {
        return Ok(spliced);
    }
    match reserialize(&original, ask_usage, cap) {
        Some(body) => body.map(Bytes::from),
        None => Ok(original),
    }
}

/// [`rewrite_body`] by parsing and re-serializing; `None` when the body is not
/// a JSON object (it is then forwarded as is).
fn reserialize(
    original: &[u8],
    ask_usage: bool,
    cap: Option<(&str, i64)>,
) -> Option<Result<Vec<u8>, GatewayError>> {
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(original) else {
        return None;
    };
    if ask_usage {
        let options = obj
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(o) = options.as_object_mut() {
            o.insert("include_usage".into(), Value::Bool(true));
        }
    }
    if let Some((field, cap)) = cap {
        obj.insert(field.into(), Value::from(cap));
    }
    Some(serde_json::to_vec(&obj).map_err(|_| GatewayError::Internal))
}

/// The common case of [`rewrite_body`] without parsing again: when the body has
/// none of the members the gateway sets, they are written in front of the
/// client's own, which stay byte for byte as sent. `None` when a member to set
/// is already there (or a name is escaped, so could be one): then the body is
/// parsed and re-serialized. `members` are the body's, as [`inspect_body`]
/// noted them: the body is a JSON object serde accepted.
///
/// Why: re-serializing cost as much as the rest of the request's handling on a
/// streamed chat request, and reorders or reformats the client's JSON; writing
/// in front of the first member needs only the position of the `{`.
fn prepend_members(
    body: &[u8],
    members: &Members,
    ask_usage: bool,
    cap: Option<(&str, i64)>,
) -> Option<Bytes> {
    let taken =
        (ask_usage && members.stream_options) || cap.is_some_and(|(field, _)| members.has(field));
    if taken || members.escaped {
        return None;
    }
    let open = body.iter().position(|&b| b == b'{')?;
    let (head, rest) = body.split_at(open + 1);
    let mut out = Vec::with_capacity(body.len() + 80);
    out.extend_from_slice(head);
    if ask_usage {
        out.extend_from_slice(br#""stream_options":{"include_usage":true}"#);
    }
    if let Some((field, cap)) = cap {
        if ask_usage {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{field}\":{cap}").as_bytes());
    }
    if (ask_usage || cap.is_some()) && members.any {
        out.push(b',');
    }
    out.extend_from_slice(rest);
    Some(Bytes::from(out))
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

/// Is this Content-Type a JSON media type (`application/json`, `…+json`), in
/// any letter case and with any parameters?
fn is_json_media_type(value: &[u8]) -> bool {
    let essence = value.split(|&b| b == b';').next().unwrap_or_default();
    let essence = essence.trim_ascii();
    essence.eq_ignore_ascii_case(b"application/json")
        || (essence.len() > 5
            && essence[essence.len() - 5..].eq_ignore_ascii_case(b"+json")
            && essence.contains(&b'/'))
}

/// The fields the gateway reads from a JSON request; everything else is skipped
/// without building a JSON tree. Deserialized by hand (the same checks and
/// error messages as `#[derive(Deserialize)]`) so that the one pass over the
/// body also notes its top-level member names ([`Members`]).
#[derive(Default)]
struct Peek {
    model: Option<Option<String>>,
    stream: Option<Option<bool>>,
    stream_options: Option<Option<StreamOptions>>,
    max_completion_tokens: Option<Option<i64>>,
    max_tokens: Option<Option<i64>>,
    max_output_tokens: Option<Option<i64>>,
    members: Members,
}

#[derive(serde::Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// A member name, and whether it was written with escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("field identifier")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(v)))
            }
            // serde_json lends the name only when it has no escapes.
            fn visit_str<E>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de> serde::Deserialize<'de> for Peek {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Peek;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("struct Peek")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Peek, A::Error> {
                use serde::de::Error;
                fn once<'de, A: serde::de::MapAccess<'de>, T: serde::Deserialize<'de>>(
                    map: &mut A,
                    slot: &mut Option<T>,
                    name: &'static str,
                ) -> Result<(), A::Error> {
                    if slot.is_some() {
                        return Err(A::Error::duplicate_field(name));
                    }
                    *slot = Some(map.next_value()?);
                    Ok(())
                }
                let mut p = Peek::default();
                while let Some(Key(key)) = map.next_key::<Key<'de>>()? {
                    p.members.any = true;
                    p.members.escaped |= matches!(key, std::borrow::Cow::Owned(_));
                    match &*key {
                        "model" => once(&mut map, &mut p.model, "model")?,
                        "stream" => once(&mut map, &mut p.stream, "stream")?,
                        "stream_options" => {
                            p.members.stream_options = true;
                            once(&mut map, &mut p.stream_options, "stream_options")?
                        }
                        "max_completion_tokens" => {
                            p.members.max_completion_tokens = true;
                            once(
                                &mut map,
                                &mut p.max_completion_tokens,
                                "max_completion_tokens",
                            )?
                        }
                        "max_tokens" => {
                            p.members.max_tokens = true;
                            once(&mut map, &mut p.max_tokens, "max_tokens")?
                        }
                        "max_output_tokens" => {
                            p.members.max_output_tokens = true;
                            once(&mut map, &mut p.max_output_tokens, "max_output_tokens")?
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(p)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads what the gateway needs from a request body.
///
/// Decision: a body is read as JSON when its route always takes JSON
/// ([`JSON_ROUTES`]), when its Content-Type names JSON in any spelling, or when
/// it looks like JSON (starts with `{` or `[`) whatever the header says; it must
/// then be one JSON object, or the request is refused (400). Only a body that
/// is none of these (a multipart upload) is forwarded unread, and admission
/// refuses it under a model restriction, since its model cannot be checked.
fn inspect_body(
    endpoint: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<RequestBody, GatewayError> {
    if body.is_empty() {
        return Ok(RequestBody::Empty);
    }
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    let declared_json = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_json_media_type(v.as_bytes()));
    if !(declared_json || matches!(first, Some(b'{' | b'[')) || JSON_ROUTES.contains(&endpoint)) {
        return Ok(RequestBody::Opaque);
    }
    if first != Some(&b'{') {
        return Err(GatewayError::BadRequest(
            "The request body must be a JSON object.".into(),
        ));
    }
    let peek: Peek = serde_json::from_slice(body).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Data => e.to_string(),
            _ => format!(
                "{}, line {} column {}",
                json_error_kind(&e),
                e.line(),
                e.column()
            ),
        };
        GatewayError::BadRequest(format!(
            "We could not parse the JSON body of your request ({what})."
        ))
    })?;
    let mut requested_output: Option<i64> = None;
    for (field, v) in [
        (
            "max_completion_tokens",
            peek.max_completion_tokens.flatten(),
        ),
        ("max_tokens", peek.max_tokens.flatten()),
        ("max_output_tokens", peek.max_output_tokens.flatten()),
    ] {
        match v {
            None => {}
            Some(n) if n >= 0 => requested_output = Some(requested_output.map_or(n, |r| r.min(n))),
            Some(_) => {
                return Err(GatewayError::BadRequest(format!(
                    "`{field}` must be a non-negative integer."
                )))
            }
        }
    }
    Ok(RequestBody::Json(RequestFacts {
        model: peek.model.flatten().unwrap_or_default(),
        relabel: !declared_json,
        stream: peek.stream.flatten().unwrap_or(false),
        client_wants_usage: peek
            .stream_options
            .flatten()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        requested_output,
        members: peek.members,
    }))
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "unexpected data",
        serde_json::error::Category::Io => "read error",
    }
}

fn build_upstream_request(
    state: &AppState,
    parts: &http::request::Parts,
    path_and_query: &PathAndQuery,
    body: Bytes,
    relabel: bool,
) -> Result<http::Request<Full<Bytes>>, GatewayError> {
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
    req.body(Full::new(body))
        .map_err(|_| GatewayError::Internal)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// JSON objects with the members the gateway reads or sets, mostly of the
    /// types inspection accepts (a body it refuses is never rewritten), and a
    /// name that is escaped.
    fn body() -> impl Strategy<Value = serde_json::Map<String, Value>> {
        let any_value = || {
            prop_oneof![
                Just(Value::Null),
                any::<i32>().prop_map(Value::from),
                "[ -~\\\\\"]{0,8}".prop_map(Value::String),
                Just(serde_json::json!([{"role": "user", "content": "}{\\\"["}])),
                Just(serde_json::json!({"include_usage": false, "x": 1})),
            ]
        };
        let member = prop_oneof![
            (Just("model"), "[ -~]{0,8}".prop_map(Value::String)),
            (Just("stream"), any::<bool>().prop_map(Value::from)),
            (
                Just("stream_options"),
                prop_oneof![
                    Just(Value::Null),
                    Just(serde_json::json!({"include_usage": false, "x": 1})),
                ]
            ),
            (Just("max_tokens"), (0..100_000i64).prop_map(Value::from)),
            (
                Just("max_completion_tokens"),
                (0..100_000i64).prop_map(Value::from)
            ),
            (Just("messages"), any_value()),
            (Just("temperature"), any_value()),
            (Just("stream\\u005foptions"), any_value()),
            (Just("model"), any_value()),
        ];
        proptest::collection::vec(member, 0..6)
            .prop_map(|m| m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    proptest! {
        /// Prepending members, where it applies, gives the document that parsing
        /// and re-serializing gives.
        #[test]
        fn prepending_agrees_with_reserializing(
            obj in body(),
            ask_usage in any::<bool>(),
            cap in proptest::option::of(0i64..100_000),
            field in proptest::sample::select(vec!["max_tokens", "max_completion_tokens"]),
            pretty in any::<bool>(),
        ) {
            let json = if pretty {
                serde_json::to_vec_pretty(&obj).unwrap()
            } else {
                serde_json::to_vec(&obj).unwrap()
            };
            let cap = cap.map(|c| (field, c));
            let want: Value = serde_json::from_slice(&reserialize(&json, ask_usage, cap).unwrap().unwrap()).unwrap();
            // A body inspection refuses (a member of the wrong type) is never
            // rewritten.
            let Ok(RequestBody::Json(facts)) =
                inspect_body("/v1/chat/completions", &HeaderMap::new(), &json)
            else {
                return Ok(());
            };
            let members = facts.members;
            if let Some(got) = prepend_members(&json, &members, ask_usage, cap) {
                let got: Value = serde_json::from_slice(&got).unwrap();
                prop_assert_eq!(got, want);
                prop_assert!(!obj.contains_key("stream\\u005foptions") || !ask_usage);
            } else {
                prop_assert!(
                    (ask_usage && obj.contains_key("stream_options"))
                        || cap.is_some_and(|(f, _)| obj.contains_key(f))
                        || obj.keys().any(|k| k.contains('\\'))
                );
            }
        }
    }

    /// What [`inspect_body`] reads from `json`, a JSON object.
    fn facts(json: &[u8]) -> RequestFacts {
        match inspect_body("/v1/chat/completions", &HeaderMap::new(), json) {
            Ok(RequestBody::Json(facts)) => facts,
            _ => panic!("not a JSON object"),
        }
    }

    /// The body through [`prepend_members`], with the members inspection noted.
    fn prepend(json: &[u8], ask_usage: bool, cap: Option<(&str, i64)>) -> Option<Bytes> {
        prepend_members(json, &facts(json).members, ask_usage, cap)
    }

    #[test]
    fn prepends_in_front_of_the_clients_members() {
        let got = prepend(br#" {"model": "m", "stream": true} "#, true, None).unwrap();
        assert_eq!(
            &got[..],
            br#" {"stream_options":{"include_usage":true},"model": "m", "stream": true} "#
        );
        let got = prepend(b"{ }", true, Some(("max_tokens", 5))).unwrap();
        assert_eq!(
            &got[..],
            br#"{"stream_options":{"include_usage":true},"max_tokens":5 }"#
        );
        assert_eq!(prepend(br#"{"stream_options": {}}"#, true, None), None);
        assert_eq!(prepend(br#"{"x\u0079": 1}"#, true, None), None);
        // A malformed object never gets this far: inspection refuses it.
        assert!(inspect_body("/v1/chat/completions", &HeaderMap::new(), br#"{"a": 1"#).is_err());
    }
}
