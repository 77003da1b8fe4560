//! Test fixtures: a recording upstream and a running keyward server.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use keyward_core::Clock;
use keyward_gateway::state::SharedState;
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Notify;

pub const UPSTREAM_KEY: &str = "sk-upstream-SECRET-0123456789";

/// Usage the test upstream reports for every plain or completed request.
pub const PROMPT_TOKENS: i64 = 11;
pub const CACHED_TOKENS: i64 = 3;
pub const COMPLETION_TOKENS: i64 = 7;
/// Prompt tokens the metered models report.
pub const METERED_PROMPT: i64 = 10;

/// What gpt-4o-mini charges for (prompt, completion) tokens, rounded up as keyward does.
pub fn mini_cost(prompt: i64, completion: i64) -> i64 {
    (prompt * 150_000 + completion * 600_000 + 999_999) / 1_000_000
}

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[derive(Default)]
pub struct UpstreamLog {
    pub seen: Mutex<Vec<Seen>>,
    /// (prompt, completion) tokens of every response the `metered`/`greedy` models served.
    pub served: Mutex<Vec<(i64, i64)>>,
    /// Set when an endless stream's body was dropped (its client went away).
    pub stream_dropped: AtomicBool,
    pub dropped: Notify,
}

/// A fake OpenAI-compatible upstream that records requests. Behaviour by model
/// name suffix (so a priced prefix like `gpt-4o-mini-` can be put in front):
/// `slow` waits 5 s before answering; `endless` streams forever; `cutoff` streams
/// three chunks and then breaks the connection; anything else answers at once.
pub struct Upstream {
    pub addr: SocketAddr,
    pub log: Arc<UpstreamLog>,
}

impl Upstream {
    pub async fn start() -> Self {
        let log = Arc::new(UpstreamLog::default());
        let app = Router::new()
            .route("/v1/models", get(models))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(chat))
            .with_state(log.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { addr, log }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.log.seen.lock().unwrap().clone()
    }
}

fn record(log: &UpstreamLog, method: &str, path: &str, headers: &HeaderMap, body: &[u8]) -> Value {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    log.seen.lock().unwrap().push(Seen {
        method: method.into(),
        path: path.into(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: body.clone(),
    });
    body
}

async fn models(State(log): State<Arc<UpstreamLog>>, headers: HeaderMap) -> Response {
    record(&log, "GET", "/v1/models", &headers, b"");
    let mut r = Json(json!({"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model"}]}))
        .into_response();
    r.headers_mut().insert(
        "openai-organization",
        "org-upstream-secret".parse().unwrap(),
    );
    r
}

fn usage() -> Value {
    json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": COMPLETION_TOKENS, "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
           "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS}})
}

fn chunk(content: &str) -> String {
    format!(
        "data: {}\n\n",
        json!({"object": "chat.completion.chunk", "model": "gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": content}}]})
    )
}

async fn chat(
    State(log): State<Arc<UpstreamLog>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = record(&log, "POST", &uri.to_string(), &headers, &body);
    let model = body["model"].as_str().unwrap_or("").to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let cap = body["max_completion_tokens"]
        .as_i64()
        .or(body["max_tokens"].as_i64());
    match model.as_str() {
        // `gpt-4o-mini`-priced answers: 10 prompt tokens; `metered` writes up to 40
        // tokens, `greedy` uses its whole cap (1,000 without one).
        "gpt-4o-mini-metered" | "gpt-4o-mini-greedy" => {
            let out = if model.ends_with("greedy") { cap.unwrap_or(1_000) } else { cap.unwrap_or(40).min(40) };
            log.served.lock().unwrap().push((METERED_PROMPT, out));
            let usage = json!({"prompt_tokens": METERED_PROMPT, "completion_tokens": out, "total_tokens": METERED_PROMPT + out});
            if stream {
                let mut sse = chunk("x");
                if body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
                    sse.push_str(&format!("data: {}\n\n", json!({"choices": [], "usage": usage})));
                }
                sse.push_str("data: [DONE]\n\n");
                ([("content-type", "text/event-stream")], sse).into_response()
            } else {
                Json(json!({"object": "chat.completion", "model": model, "choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}}], "usage": usage})).into_response()
            }
        }
        m if m.ends_with("slow") => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Json(json!({"usage": usage()})).into_response()
        }
        m if m.ends_with("endless") => {
            struct Guard(Arc<UpstreamLog>);
            impl Drop for Guard {
                fn drop(&mut self) {
                    self.0.stream_dropped.store(true, Ordering::SeqCst);
                    self.0.dropped.notify_waiters();
                    self.0.dropped.notify_one();
                }
            }
            let guard = Guard(log.clone());
            let s = futures_util::stream::unfold((0u64, guard), |(i, g)| async move {
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Some((Ok::<_, std::io::Error>(Bytes::from(chunk("tok"))), (i + 1, g)))
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
        m if m.ends_with("cutoff") => {
            // Three chunks, then (after they have surely been flushed) a broken connection.
            let s = futures_util::stream::unfold(0u32, |i| async move {
                match i {
                    0..=2 => Some((Ok(Bytes::from(chunk("x"))), i + 1)),
                    3 => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Some((Err(std::io::Error::other("upstream broke off")), i + 1))
                    }
                    _ => None,
                }
            });
            ([("content-type", "text/event-stream")], Body::from_stream(s)).into_response()
        }
        _ if stream => {
            let mut sse = String::new();
            for piece in ["Hel", "lo", "!"] {
                sse.push_str(&chunk(piece));
            }
            sse.push_str(&format!("data: {}\n\n", json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
            if body.pointer("/stream_options/include_usage").and_then(Value::as_bool) == Some(true) {
                sse.push_str(&format!("data: {}\n\n", json!({"object": "chat.completion.chunk", "choices": [], "usage": usage()})));
            }
            sse.push_str("data: [DONE]\n\n");
            ([("content-type", "text/event-stream")], sse).into_response()
        }
        _ => Json(json!({"object": "chat.completion", "model": model,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
                         "usage": usage()}))
        .into_response(),
    }
}

/// A running keyward server on a temporary SQLite store.
pub struct Keyward {
    pub url: String,
    pub admin_key: String,
    pub state: SharedState,
    pub http: reqwest::Client,
    _dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Keyward {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, |_| {}).await
    }

    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut GatewayConfig)) -> Self {
        Self::start_full(upstream, tweak, Clock::system(), "127.0.0.1:0").await
    }

    /// A server with a given clock, listening on `listen`.
    pub async fn start_full(
        upstream: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
        clock: Clock,
        listen: &str,
    ) -> Self {
        let listener = TcpListener::bind(listen).await.unwrap();
        Self::start_on(listener, upstream, tweak, clock).await
    }

    /// A server on a socket bound beforehand, so that its address can be in
    /// the config (a public URL with the real port, registered elsewhere).
    pub async fn start_on(
        listener: TcpListener,
        upstream: &str,
        tweak: impl FnOnce(&mut GatewayConfig),
        clock: Clock,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = keyward_store::open(&format!(
            "sqlite://{}",
            dir.path().join("keyward.db").display()
        ))
        .await
        .unwrap();
        let mut config = GatewayConfig::new(
            UpstreamConfig {
                base_url: upstream.parse().unwrap(),
                api_key: Some(keyward_core::Secret::new(UPSTREAM_KEY)),
            },
            dir.path().to_owned(),
        );
        tweak(&mut config);
        let server = Server::new(config, store, clock).await.unwrap();
        let state = server.state();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.run(listener, None, async move {
            let _ = stopped.await;
        }));
        let admin_key = std::fs::read_to_string(dir.path().join("initial-admin-key"))
            .unwrap()
            .trim()
            .to_owned();
        Self {
            url,
            admin_key,
            state,
            http: reqwest::Client::new(),
            _dir: dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    /// Creates a key through the management API; returns (id, secret).
    pub async fn create_key(&self, project: &str, name: &str) -> (String, String) {
        let r = self
            .admin_post(
                "/api/v1/keys",
                json!({"project": project, "name": name, "create_project": true}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let v: Value = r.json().await.unwrap();
        (
            v["id"].as_str().unwrap().to_owned(),
            v["key"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn admin_post(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Creates a key with extra fields (policy, budget…); returns the response body.
    pub async fn create_key_with(&self, fields: Value) -> Value {
        let mut body = json!({"project": "app", "name": "k", "create_project": true});
        for (k, v) in fields.as_object().unwrap() {
            body[k] = v.clone();
        }
        let r = self.admin_post("/api/v1/keys", body).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        r.json().await.unwrap()
    }

    pub async fn admin_put(&self, path: &str, body: Value) -> reqwest::Response {
        self.http
            .put(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn admin_get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.admin_key)
            .send()
            .await
            .unwrap()
    }

    /// Usage totals of a key, after every buffered event is written.
    pub async fn usage_of(&self, key_id: &str) -> Value {
        self.state.usage.flush().await;
        let r = self.admin_get(&format!("/api/v1/usage?key={key_id}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        r.json().await.unwrap()
    }

    /// Usage totals of a key once it counts `requests` requests. A client's
    /// hang-up reaches the server only when it next touches the socket, so the
    /// charge for a dropped stream lands a moment after the drop: this asks
    /// again until it has (no time limit; the test runner's is the bound).
    pub async fn usage_once(&self, key_id: &str, requests: i64) -> Value {
        loop {
            let u = self.usage_of(key_id).await;
            if u["requests"] == requests {
                return u;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The newest usage event written.
    pub async fn latest_usage_event(&self) -> keyward_store::UsageEvent {
        self.state.usage.flush().await;
        let mut events = self
            .state
            .store
            .usage_events(&keyward_store::UsageFilter::default(), 1)
            .await
            .unwrap();
        events.pop().expect("a usage event")
    }

    /// A chat completion with `key`.
    pub async fn chat(&self, key: &str, body: Value) -> reqwest::Response {
        self.http
            .post(format!("{}/v1/chat/completions", self.url))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// `GET /v1/models` with `key`.
    pub async fn models(&self, key: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/v1/models", self.url))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn shutdown(mut self) {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

/// Asserts an OpenAI-shaped error with this status and code.
pub async fn assert_openai_error(r: reqwest::Response, status: u16, code: Option<&str>) -> String {
    assert_eq!(r.status().as_u16(), status);
    let v: Value = r.json().await.unwrap();
    let err = &v["error"];
    assert!(err["message"].is_string(), "error body: {v}");
    assert!(err["type"].is_string(), "error body: {v}");
    assert!(err.get("param").is_some(), "error body: {v}");
    assert_eq!(err["code"].as_str(), code, "error body: {v}");
    err["message"].as_str().unwrap().to_owned()
}

/// Where the shared-counter (Redis) tests connect; unset means they are
/// skipped, except under `CI=true`, where a missing Redis fails the run
/// instead of letting the cluster tests pass vacuously.
pub const REDIS_URL_VAR: &str = "KEYWARD_TEST_REDIS_URL";

/// The Redis URL to test against, or `None` (after saying so) to skip.
pub fn redis_url() -> Option<String> {
    match std::env::var(REDIS_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{REDIS_URL_VAR} is not set, and CI=true: the shared-counter tests must run in CI (.ci/run sets it)")
        }
        _ => {
            println!("skipping: {REDIS_URL_VAR} is not set");
            None
        }
    }
}
