//! The gateway's request path under attack (issue 15, items 2, 3, 9 and 11): a
//! model restriction holds whatever the Content-Type says and never passes a
//! missing model; a path that could change after decoding never reaches the
//! upstream, and no key reaches the upstream's URL; upstream credential headers
//! never reach the client; a streamed request the upstream refuses costs nothing.
//!
//! Paths are sent over a bare socket (reqwest would normalise them), to an
//! upstream on a bare socket that records every request byte for byte.

use crate::support::*;
use keyward_store::{UsageEvent, UsageFilter};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One request as a [`RawUpstream`] received it.
#[derive(Clone, Debug)]
struct RawSeen {
    /// The request line and headers, as sent.
    head: String,
    body: Vec<u8>,
}

impl RawSeen {
    fn request_line(&self) -> &str {
        self.head.lines().next().unwrap_or("")
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// An HTTP/1.1 upstream on a bare socket: records every request as it arrived
/// (a router would normalise paths, or not record unknown ones) and answers
/// each with the raw response `answer` writes.
struct RawUpstream {
    base_url: String,
    seen: Arc<Mutex<Vec<RawSeen>>>,
}

impl RawUpstream {
    async fn start(answer: impl Fn(&RawSeen) -> String + Send + Sync + 'static) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (log, answer) = (seen.clone(), Arc::new(answer));
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                let (log, answer) = (log.clone(), answer.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let head_end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            if !read_more(&mut socket, &mut buf).await {
                                return;
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end - 4]).into_owned();
                        let len: usize = head
                            .lines()
                            .find_map(|l| {
                                let (n, v) = l.split_once(':')?;
                                n.eq_ignore_ascii_case("content-length").then(|| v.trim())
                            })
                            .map_or(0, |v| v.parse().unwrap());
                        while buf.len() < head_end + len {
                            if !read_more(&mut socket, &mut buf).await {
                                return;
                            }
                        }
                        let seen = RawSeen {
                            head,
                            body: buf[head_end..head_end + len].to_vec(),
                        };
                        buf.drain(..head_end + len);
                        let response = answer(&seen);
                        log.lock().unwrap().push(seen);
                        if socket.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Self { base_url, seen }
    }

    fn seen(&self) -> Vec<RawSeen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_more(socket: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> bool {
    let mut chunk = [0u8; 4096];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

/// A raw HTTP/1.1 response with a body of known length.
fn response(status: &str, content_type: &str, extra_headers: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{extra_headers}\r\n{body}",
        body.len()
    )
}

fn model_list(_: &RawSeen) -> String {
    response(
        "200 OK",
        "application/json",
        "",
        r#"{"object":"list","data":[]}"#,
    )
}

/// Sends one request to the gateway exactly as written, on a connection of its
/// own, with `key` as a bearer token. Returns the status and the body.
async fn raw_call(gateway: &str, request_line: &str, key: &str) -> (u16, String) {
    let addr = gateway.strip_prefix("http://").unwrap();
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{request_line}\r\nhost: keyward\r\nauthorization: Bearer {key}\r\nconnection: close\r\n\r\n"
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    socket.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    (
        status,
        if chunked {
            dechunk(body)
        } else {
            body.to_owned()
        },
    )
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap();
        if size == 0 {
            break;
        }
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    out
}

/// Asserts a 400 in OpenAI's error shape that does not repeat `key`.
fn assert_refused_path(status: u16, body: &str, path: &str, key: &str) {
    assert_eq!(status, 400, "{path}: {body}");
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{path}: {body}"));
    assert_eq!(
        v["error"]["type"], "invalid_request_error",
        "{path}: {body}"
    );
    assert!(v["error"]["message"].is_string() && v["error"].get("param").is_some());
    assert!(!body.contains(key));
}

/// Raw usage events of a key, newest first, once every buffered one is written.
async fn events_of(kw: &Keyward, key_id: &str) -> Vec<UsageEvent> {
    kw.state.usage.flush().await;
    let filter = UsageFilter {
        key: keyward_core::KeyId::parse(key_id),
        ..Default::default()
    };
    kw.state.store.usage_events(&filter, 100).await.unwrap()
}

/// Paths that mean another endpoint once decoded or normalised.
const ESCAPING_PATHS: [&str; 14] = [
    "/v1/models/../files",
    "/v1/models/../../dashboard/billing/usage",
    "/v1/models/./../files",
    "/v1/models/%2e%2e/files",
    "/v1/models/%2E%2E/files",
    "/v1/models/.%2e/files",
    "/v1/models/..%2ffiles",
    "/v1/models/..%2Ffiles",
    "/v1/models/x%2F..%2F..%2Ffiles",
    "/v1/models/%252e%252e/files",
    "/v1/models/x%5C..%5Cfiles",
    "/v1/models/..;/files",
    "/v1/models/%2e%2e%2f%2e%2e%2fdashboard/billing/usage",
    "/v1//files",
];

#[tokio::test]
async fn dot_segments_and_encoded_slashes_are_refused_before_any_policy_and_never_reach_the_upstream(
) {
    let up = RawUpstream::start(model_list).await;
    let kw = Keyward::start(&up.base_url).await;
    let chat_only = kw
        .create_key_with(json!({"policy": {"endpoints": "chat-only"}}))
        .await;
    let chat_only = chat_only["key"].as_str().unwrap();
    let (all_id, all) = kw.create_key("other", "all").await;
    // Refused for a key the policy would stop, and for one it would let through:
    // the refusal comes before the policy.
    for key in [chat_only, all.as_str()] {
        for path in ESCAPING_PATHS {
            let (status, body) = raw_call(&kw.url, &format!("GET {path} HTTP/1.1"), key).await;
            assert_refused_path(status, &body, path, key);
        }
    }
    assert!(
        up.seen().is_empty(),
        "nothing reached the upstream: {:?}",
        up.seen()
    );
    // The refused path is not stored either: it could hold anything.
    let events = events_of(&kw, &all_id).await;
    assert_eq!(events.len(), ESCAPING_PATHS.len());
    assert!(events.iter().all(|e| e.endpoint == "(refused path)"));

    // What the policy allows passes, and the policy still refuses the rest.
    let (status, _) = raw_call(&kw.url, "GET /v1/models/gpt-4o-mini HTTP/1.1", chat_only).await;
    assert_eq!(status, 200);
    let (status, _) = raw_call(&kw.url, "GET /v1/files HTTP/1.1", chat_only).await;
    assert_eq!(status, 403);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].request_line(),
        "GET /v1/models/gpt-4o-mini HTTP/1.1"
    );
}

#[tokio::test]
async fn the_path_the_policy_checked_is_the_path_the_upstream_receives() {
    let up = RawUpstream::start(model_list).await;
    let kw = Keyward::start(&up.base_url).await;
    let chat_only = kw
        .create_key_with(json!({"policy": {"endpoints": "chat-only"}}))
        .await;
    let key = chat_only["key"].as_str().unwrap();
    let paths = [
        "/v1/models/ft:gpt-4o-mini:acme:custom:9abc",
        "/v1/models/ft%3Agpt-4o-mini%3Aacme",
        "/v1/models/",
    ];
    for path in paths {
        let (status, body) = raw_call(&kw.url, &format!("GET {path} HTTP/1.1"), key).await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let lines: Vec<String> = up
        .seen()
        .iter()
        .map(|s| s.request_line().to_owned())
        .collect();
    let want: Vec<String> = paths.iter().map(|p| format!("GET {p} HTTP/1.1")).collect();
    assert_eq!(lines, want);
}

#[tokio::test]
async fn a_key_in_the_query_string_or_the_path_never_reaches_the_upstream() {
    let up = RawUpstream::start(model_list).await;
    let kw = Keyward::start(&up.base_url).await;
    let (_, key) = kw.create_key("app", "k").await;
    let random = &key["kwk_".len()..];
    let cases = [
        (format!("?api_key={key}&limit=2"), "?limit=2"),
        (format!("?key={key}"), ""),
        (format!("?limit=2&q={key}"), "?limit=2"),
        (format!("?API-KEY={key}&order=asc"), "?order=asc"),
        (format!("?access_token={key};limit=1"), "?limit=1"),
        (format!("?q=%6Bwk_{random}"), ""),
        (format!("?api%5Fkey={key}"), ""),
        ("?limit=3&after=file-1".to_owned(), "?limit=3&after=file-1"),
    ];
    for (query, forwarded) in &cases {
        let (status, body) =
            raw_call(&kw.url, &format!("GET /v1/models{query} HTTP/1.1"), &key).await;
        assert_eq!(status, 200, "{query}: {body}");
        assert_eq!(
            up.seen().last().unwrap().request_line(),
            format!("GET /v1/models{forwarded} HTTP/1.1"),
            "{query}"
        );
    }
    // A key in the path is refused, not forwarded.
    let (status, body) = raw_call(&kw.url, &format!("GET /v1/models/{key} HTTP/1.1"), &key).await;
    assert_refused_path(status, &body, "a key in the path", &key);
    let seen = up.seen();
    assert_eq!(seen.len(), cases.len());
    for s in &seen {
        assert!(!s.head.contains(random), "{}", s.head);
    }
}

/// The Content-Type spellings a model restriction must not depend on.
const SPELLINGS: [Option<&str>; 6] = [
    Some("Application/JSON"),
    Some("text/plain"),
    None,
    Some("application/json; charset=utf-8"),
    Some("APPLICATION/JSON;Charset=UTF-8"),
    Some("application/x-www-form-urlencoded"),
];

async fn post(
    kw: &Keyward,
    path: &str,
    key: &str,
    content_type: Option<&str>,
    body: String,
) -> reqwest::Response {
    let mut req = kw
        .http
        .post(format!("{}{path}", kw.url))
        .bearer_auth(key)
        .body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn a_model_restriction_holds_whatever_the_content_type_spelling() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw
        .create_key_with(json!({"policy": {"models": ["gpt-4o-mini*"]}}))
        .await;
    let key = created["key"].as_str().unwrap();
    let msgs = json!([{"role": "user", "content": "hi"}]);
    for ct in SPELLINGS {
        for stream in [false, true] {
            let body = json!({"model": "gpt-4o", "stream": stream, "messages": msgs});
            let r = post(&kw, "/v1/chat/completions", key, ct, body.to_string()).await;
            assert_openai_error(r, 403, Some("model_not_allowed")).await;
        }
    }
    assert!(
        up.seen().is_empty(),
        "no disallowed model reached the upstream"
    );

    // The allowed model works in every spelling, and the upstream is told the
    // body is the JSON the gateway read.
    for ct in SPELLINGS {
        for stream in [false, true] {
            let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": msgs});
            let r = post(&kw, "/v1/chat/completions", key, ct, body.to_string()).await;
            assert_eq!(r.status(), 200, "{ct:?} stream={stream}");
            r.text().await.unwrap();
        }
    }
    let seen = up.seen();
    assert_eq!(seen.len(), 2 * SPELLINGS.len());
    for s in &seen {
        assert_eq!(s.body["model"], "gpt-4o-mini");
        let ct = s.header("content-type").unwrap().to_ascii_lowercase();
        assert!(ct.starts_with("application/json"), "{ct}");
    }
}

#[tokio::test]
async fn a_missing_or_empty_model_never_passes_a_model_restriction() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw
        .create_key_with(json!({"policy": {"models": ["gpt-4o-mini*"]}}))
        .await;
    let key = created["key"].as_str().unwrap();
    for body in [
        r#"{"messages": [{"role": "user", "content": "hi"}]}"#,
        r#"{"model": "", "messages": []}"#,
        r#"{"model": null, "messages": []}"#,
        r#"{"stream": true, "messages": []}"#,
        r#"{"model": "", "stream": true}"#,
        "",
    ] {
        for ct in [Some("application/json"), None] {
            let r = post(&kw, "/v1/chat/completions", key, ct, body.into()).await;
            assert_openai_error(r, 403, Some("model_not_allowed")).await;
        }
    }
    // A body the gateway does not read cannot prove its model.
    let multipart =
        "--b\r\ncontent-disposition: form-data; name=\"model\"\r\n\r\nwhisper-1\r\n--b--\r\n";
    let r = post(
        &kw,
        "/v1/audio/transcriptions",
        key,
        Some("multipart/form-data; boundary=b"),
        multipart.into(),
    )
    .await;
    let msg = assert_openai_error(r, 400, None).await;
    assert!(msg.contains("JSON"), "{msg}");
    // A request that runs no model is not held to the restriction.
    let r = kw
        .http
        .get(format!("{}/v1/models", kw.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].method, "GET");
}

#[tokio::test]
async fn streamed_requests_in_any_content_type_are_metered_with_their_model() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    let spellings = [Some("text/plain"), None, Some("Application/JSON")];
    for ct in spellings {
        for stream in [true, false] {
            let body = json!({"model": "gpt-4o-mini", "stream": stream, "messages": []});
            let r = post(&kw, "/v1/chat/completions", &key, ct, body.to_string()).await;
            assert_eq!(r.status(), 200);
            let text = r.text().await.unwrap();
            assert!(!text.contains("\"usage\"") || !stream, "{text}");
        }
    }
    let events = events_of(&kw, &id).await;
    assert_eq!(events.len(), 2 * spellings.len());
    for e in &events {
        assert_eq!(e.model, "gpt-4o-mini");
        assert!(!e.incomplete);
        assert_eq!(
            (e.input_tokens, e.output_tokens),
            (PROMPT_TOKENS, COMPLETION_TOKENS)
        );
        assert!(e.cost_micros.0 > 0, "{e:?}");
    }
}

#[tokio::test]
async fn a_request_of_an_unpriced_model_is_counted_not_silently_free() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    let r = kw
        .chat(&key, json!({"model": "not-in-the-price-table"}))
        .await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let events = events_of(&kw, &id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].model, "not-in-the-price-table");
    assert_eq!(events[0].cost_micros.0, 0);
    assert_eq!(kw.state.metrics.unpriced_requests.get(), 1);
    assert!(kw
        .state
        .metrics
        .render()
        .contains("keyward_unpriced_requests_total 1"));
    // A priced model is not counted.
    kw.chat(&key, json!({"model": "gpt-4o-mini"}))
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(events_of(&kw, &id).await.len(), 2);
    assert_eq!(kw.state.metrics.unpriced_requests.get(), 1);
}

/// Answers like an upstream that leaks: it echoes the key it was sent, and sends
/// every kind of credential-bearing header along with its informational ones.
fn leaky(seen: &RawSeen) -> String {
    let auth = seen.header("authorization").unwrap_or("").to_owned();
    let headers = format!(
        "authorization: {auth}\r\nproxy-authorization: {auth}\r\nset-cookie: __session=upstream; HttpOnly\r\n\
         www-authenticate: Bearer realm=\"upstream\"\r\nx-api-key: {auth}\r\napi-key: {auth}\r\n\
         openai-organization: org-upstream\r\nopenai-project: proj_upstream\r\nx-debug-echo: {auth}\r\n\
         x-ratelimit-limit-requests: 10000\r\nx-ratelimit-remaining-requests: 9999\r\n\
         x-request-id: req_123\r\nopenai-processing-ms: 12\r\nopenai-version: 2020-10-01\r\n"
    );
    if seen.json()["stream"] == true {
        let body =
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"x\"}}]}\n\ndata: [DONE]\n\n";
        response("200 OK", "text/event-stream", &headers, body)
    } else {
        response("200 OK", "application/json", &headers, r#"{"choices":[]}"#)
    }
}

#[tokio::test]
async fn credential_headers_from_the_upstream_never_reach_the_client() {
    let up = RawUpstream::start(leaky).await;
    let kw = Keyward::start(&up.base_url).await;
    let limited = kw.create_key_with(json!({"policy": {"rpm": 7}})).await;
    let limited = limited["key"].as_str().unwrap();
    let (_, unlimited) = kw.create_key("other", "k").await;
    for (key, our_limit) in [(limited, Some("7")), (unlimited.as_str(), None)] {
        for stream in [false, true] {
            let r = kw
                .chat(key, json!({"model": "gpt-4o-mini", "stream": stream}))
                .await;
            assert_eq!(r.status(), 200);
            let h = r.headers().clone();
            r.text().await.unwrap();
            for name in [
                "authorization",
                "proxy-authorization",
                "set-cookie",
                "www-authenticate",
                "x-api-key",
                "api-key",
                "openai-organization",
                "openai-project",
                "x-debug-echo",
            ] {
                assert!(h.get(name).is_none(), "{name} reached the client");
            }
            assert!(
                !format!("{h:?}").contains("upstream"),
                "nothing of the upstream's credentials: {h:?}"
            );
            assert_eq!(h["x-request-id"], "req_123");
            assert_eq!(h["openai-processing-ms"], "12");
            assert_eq!(h["openai-version"], "2020-10-01");
            // The client's allowance is the gateway's, never the upstream account's.
            assert_eq!(
                h.get("x-ratelimit-limit-requests")
                    .map(|v| v.to_str().unwrap()),
                our_limit,
                "stream={stream}"
            );
            assert_ne!(
                h.get("x-ratelimit-remaining-requests")
                    .map(|v| v.to_str().unwrap()),
                Some("9999")
            );
        }
    }
    assert_eq!(up.seen().len(), 4);
}

/// Answers every request with an error, 429 for `gpt-4o-mini-busy`, else 400.
fn refusing(seen: &RawSeen) -> String {
    let body = r#"{"error":{"message":"refused","type":"invalid_request_error","param":null,"code":null}}"#;
    if seen.json()["model"] == "gpt-4o-mini-busy" {
        response(
            "429 Too Many Requests",
            "application/json",
            "retry-after: 1\r\n",
            body,
        )
    } else {
        response("400 Bad Request", "application/json", "", body)
    }
}

#[tokio::test]
async fn a_streamed_request_the_upstream_refuses_costs_nothing() {
    let up = RawUpstream::start(refusing).await;
    let kw = Keyward::start(&up.base_url).await;
    let (id, key) = kw.create_key("app", "k").await;
    // A large prompt: the cut-off estimate would charge its size.
    let prompt = "x".repeat(20_000);
    for (model, status) in [("gpt-4o-mini", 400), ("gpt-4o-mini-busy", 429)] {
        let r = kw
            .chat(
                &key,
                json!({"model": model, "stream": true, "messages": [{"role": "user", "content": prompt}]}),
            )
            .await;
        assert_eq!(r.status(), status);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["message"], "refused");
    }
    let events = events_of(&kw, &id).await;
    assert_eq!(events.len(), 2);
    for e in &events {
        assert!(e.status >= 400, "{e:?}");
        assert_eq!(
            (
                e.input_tokens,
                e.output_tokens,
                e.cost_micros.0,
                e.incomplete
            ),
            (0, 0, 0, false),
            "{e:?}"
        );
    }
    let u = kw.usage_of(&id).await;
    assert_eq!(
        (u["cost_micros"].as_i64(), u["errors"].as_i64()),
        (Some(0), Some(2))
    );
}
