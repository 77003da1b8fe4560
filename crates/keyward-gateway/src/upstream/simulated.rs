//! A simulated OpenAI-compatible upstream, so the whole flow can be tried (and
//! benchmarked) without an OpenAI account. Every answer says it is simulated: the
//! text, the `system_fingerprint`, and an `x-keyward-simulated: true` header.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

const REPLY: &str =
    "This is a simulated response from keyward's built-in upstream; no real model was called.";
const FINGERPRINT: &str = "keyward-simulated";

/// The simulator's routes (`/v1/...`).
pub fn router() -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .fallback(|| async {
            labelled((StatusCode::NOT_FOUND, Json(json!({"error": {"message": "The simulated upstream does not implement this endpoint.", "type": "invalid_request_error", "param": null, "code": "unknown_url"}}))))
        })
}

/// Serves the simulator on `listener` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener) -> std::io::Result<()> {
    axum::serve(listener, router()).await
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

/// The reply's tokens (one per word), cut to the request's output cap.
fn reply_tokens(max: Option<i64>) -> Vec<String> {
    let words: Vec<String> = REPLY
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let n = max.map_or(words.len(), |m| (m.max(0) as usize).min(words.len()));
    words.into_iter().take(n).collect()
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

async fn chat(body: axum::body::Bytes) -> Response {
    let Some(body) = parse(&body) else {
        return bad_json();
    };
    let input = tokens_in(&text_of(body.get("messages").unwrap_or(&Value::Null)));
    generate(ask(&body, input), "chat.completion")
}

async fn completions(body: axum::body::Bytes) -> Response {
    let Some(body) = parse(&body) else {
        return bad_json();
    };
    let input = tokens_in(&text_of(body.get("prompt").unwrap_or(&Value::Null)));
    generate(ask(&body, input), "text_completion")
}

fn generate(a: Ask, object: &str) -> Response {
    let tokens = reply_tokens(a.max_tokens);
    let output = tokens.len() as i64;
    let finish = if output < reply_tokens(None).len() as i64 {
        "length"
    } else {
        "stop"
    };
    let usage = json!({"prompt_tokens": a.input_tokens, "completion_tokens": output, "total_tokens": a.input_tokens + output});
    let chat = object == "chat.completion";
    let id = format!("sim-{}", keyward_core::base62::random(12));
    if !a.stream {
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": tokens.concat()}, "finish_reason": finish, "logprobs": null})
        } else {
            json!({"index": 0, "text": tokens.concat(), "finish_reason": finish, "logprobs": null})
        };
        return labelled(Json(json!({
            "id": id, "object": object, "created": 0, "model": a.model, "system_fingerprint": FINGERPRINT,
            "choices": [choice], "usage": usage,
        })));
    }
    let chunk_object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choices: Value| json!({"id": id, "object": chunk_object, "created": 0, "model": a.model, "system_fingerprint": FINGERPRINT, "choices": choices});
    let mut events = Vec::new();
    if chat {
        events.push(chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])));
    }
    for t in &tokens {
        let choice = if chat {
            json!({"index": 0, "delta": {"content": t}, "finish_reason": null})
        } else {
            json!({"index": 0, "text": t, "finish_reason": null})
        };
        events.push(chunk(json!([choice])));
    }
    let last = if chat {
        json!({"index": 0, "delta": {}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": "", "finish_reason": finish})
    };
    events.push(chunk(json!([last])));
    if a.include_usage {
        let mut u = chunk(json!([]));
        u["usage"] = usage;
        events.push(u);
    }
    let mut sse = String::new();
    for e in events {
        sse.push_str("data: ");
        sse.push_str(&e.to_string());
        sse.push_str("\n\n");
    }
    sse.push_str("data: [DONE]\n\n");
    labelled((
        [(header::CONTENT_TYPE, "text/event-stream")],
        Body::from(sse),
    ))
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
