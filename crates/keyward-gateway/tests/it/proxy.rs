//! Forwarding: the upstream sees only the upstream key, clients never do, and a
//! revoked key is refused on the very next request without reaching the upstream.

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test]
async fn upstream_sees_only_the_upstream_key_and_client_never_sees_it() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (_, key) = kw.create_key("app", "k1").await;

    let r = kw
        .chat(
            &key,
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let headers = format!("{:?}", r.headers());
    let body = r.text().await.unwrap();
    assert!(!headers.contains(UPSTREAM_KEY) && !body.contains(UPSTREAM_KEY));

    let models = kw
        .http
        .get(format!("{}/v1/models", kw.url))
        .header("x-api-key", &key)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    assert!(
        models.headers().get("openai-organization").is_none(),
        "upstream account headers are stripped"
    );

    let seen = up.seen();
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
        assert!(s.header("x-api-key").is_none() && s.header("api-key").is_none());
        assert!(
            !format!("{:?}", s.headers).contains(&key),
            "the client's key never reaches the upstream"
        );
    }
    assert_eq!(seen[0].body["messages"][0]["content"], "hi");
    assert_eq!(
        (seen[0].method.as_str(), seen[0].path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        (seen[1].method.as_str(), seen[1].path.as_str()),
        ("GET", "/v1/models")
    );
}

#[tokio::test]
async fn query_strings_and_other_v1_paths_pass_through() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (_, key) = kw.create_key("app", "k1").await;
    let r = kw
        .http
        .post(format!("{}/v1/embeddings?trace=1", kw.url))
        .bearer_auth(&key)
        .json(&json!({"model": "text-embedding-3-small", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(up.seen()[0].path, "/v1/embeddings?trace=1");
}

#[tokio::test]
async fn accepts_the_key_in_each_supported_header() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (_, key) = kw.create_key("app", "k1").await;
    for (name, value) in [
        ("authorization", format!("Bearer {key}")),
        ("api-key", key.clone()),
        ("x-api-key", key.clone()),
    ] {
        let r = kw
            .http
            .get(format!("{}/v1/models", kw.url))
            .header(name, value)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "key in {name}");
    }
    assert_eq!(up.seen().len(), 3);
}

#[tokio::test]
async fn revoked_key_is_refused_on_the_next_request_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k1").await;
    let (_, other) = kw.create_key("app", "k2").await;
    let body = json!({"model": "gpt-4o-mini", "messages": []});
    // Warm the cache so the revoke must invalidate it.
    for _ in 0..3 {
        assert_eq!(kw.chat(&key, body.clone()).await.status(), 200);
    }
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "revoked");
    let before = up.seen().len();

    let msg = assert_openai_error(
        kw.chat(&key, body.clone()).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(msg.contains("revoked"), "{msg}");
    assert!(!msg.contains(&key));
    assert_eq!(
        up.seen().len(),
        before,
        "a refused request never reaches the upstream"
    );
    // Other keys are unaffected.
    assert_eq!(kw.chat(&other, body).await.status(), 200);
}

#[tokio::test]
async fn deleted_key_is_refused() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k1").await;
    assert_eq!(kw.chat(&key, json!({"model": "m"})).await.status(), 200);
    let r = kw
        .http
        .delete(format!("{}/api/v1/keys/{id}", kw.url))
        .bearer_auth(&kw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_openai_error(
        kw.chat(&key, json!({"model": "m"})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
}

#[tokio::test]
async fn admin_keys_cannot_call_the_gateway() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let msg = assert_openai_error(
        kw.chat(&kw.admin_key, json!({"model": "m"})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(msg.contains("Admin keys"), "{msg}");
    assert!(up.seen().is_empty());
}

/// A bare HTTP/1.1 upstream on a socket that counts its connections and, when
/// `close_after_each` is set, closes every connection right after its response
/// without saying so (as an upstream whose keep-alive timeout just ran out).
/// With `chunked`, answers an event stream in chunked transfer encoding.
async fn counting_upstream(
    close_after_each: bool,
    chunked: bool,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then `content-length` bytes.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .map_or(0, |v| v.trim().parse().unwrap());
                    while buf.len() < head_end + len {
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..head_end + len);
                    let resp = if chunked {
                        let events = ["data: {\"choices\":[]}\n\n", "data: [DONE]\n\n"];
                        let mut r = String::from(
                            "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n",
                        );
                        for e in events {
                            r.push_str(&format!("{:x}\r\n{e}\r\n", e.len()));
                        }
                        r.push_str("0\r\n\r\n");
                        r
                    } else {
                        let body = r#"{"object":"list","data":[]}"#;
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        )
                    };
                    if socket.write_all(resp.as_bytes()).await.is_err() {
                        return;
                    }
                    if close_after_each {
                        return;
                    }
                }
            });
        }
    });
    (format!("http://{addr}/v1"), connections)
}

/// Five calls through keyward to a [`counting_upstream`]: the connections the
/// upstream saw and the bodies the client got.
async fn five_calls(close_after_each: bool, chunked: bool) -> (usize, Vec<String>) {
    let (base, connections) = counting_upstream(close_after_each, chunked).await;
    let kw = Keyward::start(&base).await;
    let (_, key) = kw.create_key("app", "k1").await;
    let mut bodies = Vec::new();
    for _ in 0..5 {
        let r = kw.models(&key).await;
        let status = r.status();
        let body = r.text().await.unwrap();
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    (
        connections.load(std::sync::atomic::Ordering::SeqCst),
        bodies,
    )
}

#[tokio::test]
async fn upstream_connections_are_reused_between_requests() {
    assert_eq!(five_calls(false, false).await.0, 1);
}

#[tokio::test]
async fn an_idle_connection_closed_by_the_upstream_is_replaced_not_an_error() {
    assert_eq!(five_calls(true, false).await.0, 5);
}

/// A chunked body never says it has ended before its last frame is read; its
/// connection must still go back to the pool (streams are chunked).
#[tokio::test]
async fn upstream_connections_are_reused_after_chunked_streams() {
    let (connections, bodies) = five_calls(false, true).await;
    assert_eq!(connections, 1);
    assert!(bodies.iter().all(|b| b.ends_with("data: [DONE]\n\n")));
}
