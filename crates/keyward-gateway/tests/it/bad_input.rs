//! Bad input gets a precise OpenAI-shaped error, the right status, and no panic.

use crate::support::*;
use serde_json::json;
use std::time::Duration;

async fn setup() -> (Upstream, Keyward, String) {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.max_body_bytes = 64 * 1024;
        c.upstream_timeout = Duration::from_millis(500);
    })
    .await;
    let (_, key) = kw.create_key("app", "k").await;
    (up, kw, key)
}

#[tokio::test]
async fn malformed_json_is_a_400_and_is_not_forwarded() {
    let (up, kw, key) = setup().await;
    let r = kw
        .http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body("{\"model\": \"gpt-4o-mini\", ")
        .send()
        .await
        .unwrap();
    let msg = assert_openai_error(r, 400, None).await;
    assert!(msg.contains("JSON"), "{msg}");
    let r = kw
        .http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(&key)
        .json(&json!([1, 2]))
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 400, None).await;
    let r = kw.chat(&key, json!({"model": 42})).await;
    assert_openai_error(r, 400, None).await;
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn oversized_body_is_a_413_with_or_without_content_length() {
    let (up, kw, key) = setup().await;
    let big = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(100 * 1024)}]});
    let r = kw.chat(&key, big.clone()).await;
    // The unread body makes the connection unusable: the client is told so,
    // and its next request (below) goes on a new connection.
    assert_eq!(
        r.headers().get("connection").and_then(|v| v.to_str().ok()),
        Some("close")
    );
    assert_openai_error(r, 413, Some("request_too_large")).await;
    // Chunked, so the limit is enforced while reading rather than from the header.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = vec![Ok(serde_json::to_vec(&big).unwrap())];
    let r = kw
        .http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(&key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 413, Some("request_too_large")).await;
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn missing_unknown_and_mistyped_keys_are_401_without_echoing_the_key() {
    let (up, kw, key) = setup().await;
    let url = format!("{}/v1/chat/completions", kw.url);
    let r = kw
        .http
        .post(&url)
        .json(&json!({"model": "m"}))
        .send()
        .await
        .unwrap();
    let msg = assert_openai_error(r, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("didn't provide"), "{msg}");

    // A well-formed key with a valid checksum that was never issued.
    let unknown = keyward_core::KeyFormat::default().generate(keyward_core::KeyKind::Standard);
    let msg = assert_openai_error(
        kw.chat(unknown.expose(), json!({"model": "m"})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(
        msg.contains("no such key") && !msg.contains(unknown.expose()),
        "{msg}"
    );

    // One character changed: the checksum catches it without a lookup.
    let mut typo = key.clone().into_bytes();
    typo[10] = if typo[10] == b'a' { b'b' } else { b'a' };
    let typo = String::from_utf8(typo).unwrap();
    let msg = assert_openai_error(
        kw.chat(&typo, json!({"model": "m"})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(msg.contains("checksum") && !msg.contains(&typo), "{msg}");

    // An upstream provider key is refused, not forwarded.
    let msg = assert_openai_error(
        kw.chat("sk-proj-abcdef0123456789", json!({"model": "m"}))
            .await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(!msg.contains("sk-proj-abcdef"), "{msg}");
    assert!(up.seen().is_empty());
}

#[tokio::test]
async fn upstream_down_is_a_502() {
    // Bind then drop a listener: nothing listens on that port afterwards.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let kw = Keyward::start(&format!("http://127.0.0.1:{port}/v1")).await;
    let (id, key) = kw.create_key("app", "k").await;
    assert_openai_error(
        kw.chat(&key, json!({"model": "gpt-4o-mini"})).await,
        502,
        Some("upstream_unreachable"),
    )
    .await;
    let u = kw.usage_of(&id).await;
    assert_eq!(
        (
            u["requests"].as_i64(),
            u["errors"].as_i64(),
            u["cost_micros"].as_i64()
        ),
        (Some(1), Some(1), Some(0))
    );
}

#[tokio::test]
async fn upstream_slow_is_a_504() {
    let (_up, kw, key) = setup().await;
    assert_openai_error(
        kw.chat(&key, json!({"model": "slow"})).await,
        504,
        Some("upstream_timeout"),
    )
    .await;
}

#[tokio::test]
async fn unknown_management_route_and_bad_admin_key_are_json_errors() {
    let (_up, kw, key) = setup().await;
    let r = kw
        .http
        .get(format!("{}/api/v1/keys", kw.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "a gateway key is not an admin key");
    let r = kw
        .http
        .get(format!("{}/api/v1/keys", kw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    let r = kw.admin_get("/api/v1/nope").await;
    assert_eq!(r.status(), 404);
    let r = kw.admin_post("/api/v1/keys", json!({"project": "p"})).await;
    assert_eq!(r.status(), 400, "missing name");
    let r = kw
        .admin_post(
            "/api/v1/keys",
            json!({"project": "p", "name": "n", "expires_in_seconds": -5, "create_project": true}),
        )
        .await;
    assert_eq!(r.status(), 400);
    let r = kw
        .admin_post(
            "/api/v1/keys",
            json!({"project": "does-not-exist", "name": "n"}),
        )
        .await;
    assert_eq!(r.status(), 404, "projects are only created when asked");
    let r = kw.admin_get("/api/v1/keys/key_doesnotexist").await;
    assert_eq!(r.status(), 404);
    let r = kw.admin_get("/api/v1/usage?bucket=fortnight").await;
    assert_eq!(r.status(), 400);
}
