//! A simulated OpenAI-compatible upstream, so the whole flow can be tried (and
//! benchmarked) without an OpenAI account. Every answer says it is simulated: the
//! `system_fingerprint`, an `x-keyward-simulated: true` header, and the text
//! (unless `max_tokens` or a short `output_tokens` cuts it before the word).
//!
//! Streams go as a real upstream sends them: each SSE event is its own body
//! frame, and the body is pending between two events (a timer when paced, else a
//! yield), so that hyper writes and flushes each event on its own instead of
//! coalescing them into one write.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::time::Duration;

const REPLY: &str =
    "This is a simulated response from keyward's built-in upstream; no real model was called.";
const FINGERPRINT: &str = "keyward-simulated";

/// How the simulator answers: the pace of its streams and the length of its
/// replies. The default is today's quick start: the reply sentence (one token
/// per word), each event sent as soon as the client can take it.
///
/// Decision: the pace applies to streams only; a non-streaming answer (same text,
/// same usage) comes at once, as a benchmark of held streams needs no slow plain
/// answers and a real upstream's plain latency is not what the pace models.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SimulatorOptions {
    tokens_per_second: Option<f64>,
    output_tokens: Option<usize>,
}

/// A simulator option out of its range.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum InvalidSimulatorOption {
    #[error(
        "tokens per second must be a number from {min} to {max}, not {0}",
        min = SimulatorOptions::MIN_TOKENS_PER_SECOND,
        max = SimulatorOptions::MAX_TOKENS_PER_SECOND
    )]
    /// The pace is not a number in range.
    TokensPerSecond(f64),
    #[error(
        "output tokens must be a whole number from 1 to {max}, not {0}",
        max = SimulatorOptions::MAX_OUTPUT_TOKENS
    )]
    /// The reply length is not in range.
    OutputTokens(usize),
}

impl SimulatorOptions {
    /// The slowest pace: one token every 1,000 seconds.
    pub const MIN_TOKENS_PER_SECOND: f64 = 0.001;
    /// The fastest pace: a benchmark's stream is rarely above a few hundred.
    pub const MAX_TOKENS_PER_SECOND: f64 = 100_000.0;
    /// The longest reply, in content events.
    pub const MAX_OUTPUT_TOKENS: usize = 100_000;

    /// `tokens_per_second`: the pace of each stream, one event every
    /// `1 / tokens_per_second` seconds (`None`: no pacing). `output_tokens`: the
    /// content events of a reply, the reply's words repeated as needed (`None`:
    /// the reply once); a request's `max_tokens` still cuts it.
    pub fn new(
        tokens_per_second: Option<f64>,
        output_tokens: Option<usize>,
    ) -> Result<Self, InvalidSimulatorOption> {
        if let Some(r) = tokens_per_second {
            // NaN fails both comparisons.
            if !(Self::MIN_TOKENS_PER_SECOND..=Self::MAX_TOKENS_PER_SECOND).contains(&r) {
                return Err(InvalidSimulatorOption::TokensPerSecond(r));
            }
        }
        if let Some(n) = output_tokens {
            if !(1..=Self::MAX_OUTPUT_TOKENS).contains(&n) {
                return Err(InvalidSimulatorOption::OutputTokens(n));
            }
        }
        Ok(Self {
            tokens_per_second,
            output_tokens,
        })
    }

    /// The pace of each stream, if paced.
    pub fn tokens_per_second(&self) -> Option<f64> {
        self.tokens_per_second
    }

    /// The content events of a reply, if not the default.
    pub fn output_tokens(&self) -> Option<usize> {
        self.output_tokens
    }

    /// The time between two events of a stream, when paced.
    fn period(&self) -> Option<Duration> {
        self.tokens_per_second
            .map(|r| Duration::from_secs_f64(1.0 / r))
    }

    /// Content events in a full reply.
    fn reply_len(&self) -> usize {
        self.output_tokens
            .unwrap_or_else(|| REPLY.split(' ').count())
    }
}

/// The simulator's routes (`/v1/...`).
pub fn router(options: SimulatorOptions) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            labelled((StatusCode::NOT_FOUND, Json(json!({"error": {"message": "The simulated upstream does not implement this endpoint.", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}))))
        })
        .with_state(options)
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    options: SimulatorOptions,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Each event is a small write of its own: without TCP_NODELAY, Nagle's
    // algorithm holds it until the previous one is acknowledged, and delayed
    // ACKs make that about 40 ms per stream.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(options)).await
}

fn labelled(r: impl IntoResponse) -> Response {
    let mut r = r.into_response();
    r.headers_mut()
        .insert("x-keyward-simulated", HeaderValue::from_static("true"));
    r
}

async fn models() -> Response {
    let data: Vec<Value> = [
        "keyward-simulated",
        "gpt-4o-mini",
        "gpt-4o",
        "text-embedding-3-small",
    ]
    .iter()
    .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "keyward-simulated"}))
    .collect();
    labelled(Json(json!({"object": "list", "data": data})))
}

/// What every generating endpoint reads from the request.
struct Ask {
    model: String,
    input_tokens: i64,
    max_tokens: Option<i64>,
    stream: bool,
    include_usage: bool,
}

fn ask(body: &Value, input: i64) -> Ask {
    Ask {
        model: body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("keyward-simulated")
            .to_owned(),
        input_tokens: input,
        max_tokens: body
            .get("max_completion_tokens")
            .or_else(|| body.get("max_tokens"))
            .and_then(Value::as_i64),
        stream: body.get("stream").and_then(Value::as_bool).unwrap_or(false),
        include_usage: body
            .pointer("/stream_options/include_usage")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// About four characters per token, at least one token.
fn tokens_in(text: &str) -> i64 {
    ((text.len() as i64 + 3) / 4).max(1)
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(" "),
        Value::Object(o) => o
            .get("content")
            .or_else(|| o.get("text"))
            .map(text_of)
            .unwrap_or_default(),
        _ => String::new(),
    }
}

/// The number of tokens of a reply `len` tokens long, cut to the request's
/// output cap.
fn reply_count(len: usize, max: Option<i64>) -> usize {
    max.map_or(len, |m| {
        usize::try_from(m.max(0)).map_or(len, |m| m.min(len))
    })
}

/// The reply's `i`th token: its words one per token, repeated as needed.
fn reply_token(i: usize) -> String {
    let words = REPLY.split(' ').count();
    let w = REPLY.split(' ').nth(i % words).unwrap_or(REPLY);
    if i == 0 {
        w.to_owned()
    } else {
        format!(" {w}")
    }
}

fn parse(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

fn bad_json() -> Response {
    labelled((
        StatusCode::BAD_REQUEST,
        Json(
            json!({"error": {"message": "invalid JSON", "type": "invalid_request_error", "param": null, "code": null}}),
        ),
    ))
}

async fn chat(State(options): State<SimulatorOptions>, body: Bytes) -> Response {
    let Some(body) = parse(&body) else {
        return bad_json();
    };
    let input = tokens_in(&text_of(body.get("messages").unwrap_or(&Value::Null)));
    generate(&options, ask(&body, input), Kind::Chat)
}

async fn completions(State(options): State<SimulatorOptions>, body: Bytes) -> Response {
    let Some(body) = parse(&body) else {
        return bad_json();
    };
    let input = tokens_in(&text_of(body.get("prompt").unwrap_or(&Value::Null)));
    generate(&options, ask(&body, input), Kind::Completion)
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

fn generate(options: &SimulatorOptions, a: Ask, kind: Kind) -> Response {
    let tokens = reply_count(options.reply_len(), a.max_tokens);
    let finish = if tokens < options.reply_len() {
        "length"
    } else {
        "stop"
    };
    let output = tokens as i64;
    let usage = json!({"prompt_tokens": a.input_tokens, "completion_tokens": output, "total_tokens": a.input_tokens + output});
    let chat = kind == Kind::Chat;
    let id = format!("sim-{}", keyward_core::base62::random(12));
    if !a.stream {
        let object = if chat {
            "chat.completion"
        } else {
            "text_completion"
        };
        let text: String = (0..tokens).map(reply_token).collect();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": text, "finish_reason": finish, "logprobs": null})
        };
        return labelled(Json(json!({
            "id": id, "object": object, "created": 0, "model": a.model, "system_fingerprint": FINGERPRINT,
            "choices": [choice], "usage": usage,
        })));
    }
    let head = json!({"id": id, "object": if chat { "chat.completion.chunk" } else { "text_completion" },
                      "created": 0, "model": a.model, "system_fingerprint": FINGERPRINT});
    // The members after `choices` (and `usage`), written once: `"created":0,…}`.
    let mut tail = head.to_string();
    tail.remove(0);
    tail.push_str("\n\n");
    let stream = SimulatedStream {
        kind,
        tail,
        tokens,
        finish,
        usage: a.include_usage.then(|| usage.to_string()),
        next: 0,
    };
    let pace = options.period();
    let events = futures_util::stream::unfold(
        (stream, None::<tokio::time::Instant>),
        move |(mut s, start)| async move {
            let event = s.next_event()?;
            let start = match start {
                None => tokio::time::Instant::now(),
                // Pending between two events, so that each is written and
                // flushed on its own instead of coalesced with the next. When
                // paced, event k is due at start + k/rate: a stream held back by
                // a slow reader catches up, as a real upstream's buffered tokens
                // would, instead of drifting later and later.
                Some(start) => {
                    let due = pace.map(|p| start + p.mul_f64((s.next - 1) as f64));
                    match due {
                        Some(due) if due > tokio::time::Instant::now() => {
                            tokio::time::sleep_until(due).await;
                        }
                        _ => tokio::task::yield_now().await,
                    }
                    start
                }
            };
            // A paced event says when it was written, in an SSE comment line
            // (which clients ignore): the benchmark's many-slow-streams cells
            // read it to measure the delay a proxy adds to each event.
            let event = match pace {
                Some(_) => {
                    let mut stamped = format!(": sent_us={}\n", now_us()).into_bytes();
                    stamped.extend_from_slice(event.as_ref());
                    Bytes::from(stamped)
                }
                None => Bytes::from(event),
            };
            Some((Ok::<_, std::convert::Infallible>(event), (s, Some(start))))
        },
    );
    labelled((
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from_stream(events),
    ))
}

/// The events of one streamed answer, made one at a time (a long reply held open
/// by many streams at once is never built whole): for chat a role chunk, then a
/// chunk per token, the finish chunk, the usage chunk when asked for, and
/// `[DONE]`; each `data: …\n\n`.
struct SimulatedStream {
    kind: Kind,
    /// Every chunk's members after `choices`, as JSON without the opening brace,
    /// and the event's end.
    tail: String,
    tokens: usize,
    finish: &'static str,
    /// The usage object, as JSON, when the client asked for it.
    usage: Option<String>,
    /// The index of the next event.
    next: usize,
}

impl SimulatedStream {
    fn next_event(&mut self) -> Option<String> {
        let chat = self.kind == Kind::Chat;
        let mut i = self.next;
        self.next += 1;
        let event = |choices: &str, usage: Option<&str>| {
            let mut e = String::with_capacity(64 + choices.len() + self.tail.len());
            e.push_str("data: {\"choices\":");
            e.push_str(choices);
            if let Some(u) = usage {
                e.push_str(",\"usage\":");
                e.push_str(u);
            }
            e.push(',');
            e.push_str(&self.tail);
            e
        };
        if chat {
            if i == 0 {
                return Some(event(
                    r#"[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]"#,
                    None,
                ));
            }
            i -= 1;
        }
        if i < self.tokens {
            let token = Value::String(reply_token(i));
            let choices = if chat {
                format!(r#"[{{"index":0,"delta":{{"content":{token}}},"finish_reason":null}}]"#)
            } else {
                format!(r#"[{{"index":0,"text":{token},"finish_reason":null}}]"#)
            };
            return Some(event(&choices, None));
        }
        i -= self.tokens;
        if i == 0 {
            let choices = if chat {
                format!(
                    r#"[{{"index":0,"delta":{{}},"finish_reason":"{}"}}]"#,
                    self.finish
                )
            } else {
                format!(
                    r#"[{{"index":0,"text":"","finish_reason":"{}"}}]"#,
                    self.finish
                )
            };
            return Some(event(&choices, None));
        }
        i -= 1;
        if let Some(usage) = &self.usage {
            if i == 0 {
                return Some(event("[]", Some(usage)));
            }
            i -= 1;
        }
        (i == 0).then(|| "data: [DONE]\n\n".to_owned())
    }
}

async fn embeddings(body: axum::body::Bytes) -> Response {
    let Some(body) = parse(&body) else {
        return bad_json();
    };
    let model = body
        .get("model")
        .and_then(Value::as_str)
        .unwrap_or("text-embedding-3-small");
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::Array(items)) => items.iter().map(text_of).collect(),
        Some(v) => vec![text_of(v)],
        None => vec![],
    };
    let tokens: i64 = inputs.iter().map(|s| tokens_in(s)).sum();
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let seed = crc(s);
            let v: Vec<f64> = (0..8)
                .map(|j| f64::from((seed >> (j * 4)) & 0xF) / 15.0 - 0.5)
                .collect();
            json!({"object": "embedding", "index": i, "embedding": v})
        })
        .collect();
    labelled(Json(
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    ))
}

fn crc(s: &str) -> u32 {
    s.bytes().fold(0x811C_9DC5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Now, in microseconds since the epoch.
fn now_us() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}
