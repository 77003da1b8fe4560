//! The server's resistance to resource attacks (issue 15, items 4 and 5): slow
//! and idle connections end, the connection cap holds, shutdown is not held by
//! idle connections, and the unauthenticated GitHub endpoint bounds what it
//! reads, how many it reads at once, and what its refusals write.
//!
//! Timeouts are set short (200 ms) and each test asserts that the server closed
//! the connection (a read returns end-of-stream or a reset); the long guard
//! around each read only turns a hang into a failure, it measures nothing.

use crate::leaks::{post_github, GithubSigner};
use crate::support::{Keyward, Upstream};
use keyward_gateway::GatewayConfig;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Long enough that only a server that never closes the connection reaches it.
const GUARD: Duration = Duration::from_secs(20);
const SHORT: Duration = Duration::from_millis(200);

fn short_timeouts(c: &mut GatewayConfig) {
    c.connections.header_timeout = SHORT;
    c.connections.body_timeout = SHORT;
}

async fn connect(kw: &Keyward) -> TcpStream {
    TcpStream::connect(kw.url.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Reads until the server closes the connection; returns what it sent. A reset
/// counts as closed.
async fn read_until_closed(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(GUARD, read)
        .await
        .expect("the server closed the connection");
    String::from_utf8_lossy(&seen).into_owned()
}

/// Reads one response whose body ends with `end`.
async fn read_response(stream: &mut TcpStream, end: &str) -> String {
    let mut seen = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).ends_with(end) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed before a response: {:?}",
                String::from_utf8_lossy(&seen)
            );
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(GUARD, read).await.expect("a response");
    String::from_utf8_lossy(&seen).into_owned()
}

const HEALTHZ: &[u8] = b"GET /healthz HTTP/1.1\r\nhost: k\r\n\r\n";

#[tokio::test]
async fn slowloris_headers_sent_a_byte_at_a_time_are_cut_off() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), short_timeouts).await;
    let stream = connect(&kw).await;
    let (mut rd, mut wr) = stream.into_split();
    wr.write_all(b"GET /healthz HTTP/1.1\r\nhost: k\r\n")
        .await
        .unwrap();
    // Keeps sending one more header byte now and then: progress must not
    // extend the header timeout.
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(GUARD, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "the server closed the slow connection");
    let seen = String::from_utf8_lossy(&seen);
    assert!(!seen.contains(" 200 "), "no request was served: {seen}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), short_timeouts).await;
    let mut stream = connect(&kw).await;
    stream.write_all(HEALTHZ).await.unwrap();
    let first = read_response(&mut stream, "ok").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    // The client sends nothing more: the server ends the connection.
    let rest = read_until_closed(&mut stream).await;
    assert!(!rest.contains("HTTP/1.1 200"), "{rest}");
}

#[tokio::test]
async fn a_slow_body_is_cut_off_and_never_reaches_the_upstream() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), short_timeouts).await;
    let (_, key) = kw.create_key("app", "k").await;
    let stream = connect(&kw).await;
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: k\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{"
    );
    wr.write_all(head.as_bytes()).await.unwrap();
    let drip = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if wr.write_all(b" ").await.is_err() {
                return;
            }
        }
    });
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(GUARD, async {
        let mut buf = [0u8; 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    drip.abort();
    assert!(closed.is_ok(), "the server closed the connection");
    let seen = String::from_utf8_lossy(&seen);
    assert!(seen.starts_with("HTTP/1.1 4"), "refused: {seen}");
    assert!(up.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn a_connection_flood_over_the_cap_is_closed_at_once() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.connections.max_connections = 3;
        c.workers = 1;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = connect(&kw).await;
        s.write_all(HEALTHZ).await.unwrap();
        read_response(&mut s, "ok").await;
        held.push(s);
    }
    // Over the cap: accepted and closed without an answer.
    let mut extra = connect(&kw).await;
    let _ = extra.write_all(HEALTHZ).await;
    let seen = read_until_closed(&mut extra).await;
    assert_eq!(seen, "", "no answer over the cap");
    assert!(kw.state.metrics.connections_refused.get() >= 1);
    assert!(kw
        .state
        .metrics
        .render()
        .contains("keyward_connections_refused_total 1"));
    // A held connection closes: its place is free again.
    drop(held.pop());
    let served = tokio::time::timeout(GUARD, async {
        loop {
            let mut s = connect(&kw).await;
            if s.write_all(HEALTHZ).await.is_ok() {
                let mut buf = vec![0u8; 256];
                if let Ok(n) = s.read(&mut buf).await {
                    if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
                        return;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "a freed place serves a new connection");
}

#[tokio::test]
async fn idle_connections_do_not_hold_shutdown() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        // Only a connection holding shutdown could make it wait this long.
        c.shutdown_grace = Duration::from_secs(3600);
        c.connections.header_timeout = Duration::from_secs(3600);
    })
    .await;
    // Idle between requests.
    let mut keep_alive = connect(&kw).await;
    keep_alive.write_all(HEALTHZ).await.unwrap();
    read_response(&mut keep_alive, "ok").await;
    // Connected, sent nothing; and sent half of its first request's headers.
    let mut silent = connect(&kw).await;
    let mut half = connect(&kw).await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nhost:")
        .await
        .unwrap();
    // Both are being served (the acceptor has handed them to a worker) once a
    // later connection is answered: the acceptor takes connections in order.
    let mut probe = connect(&kw).await;
    probe.write_all(HEALTHZ).await.unwrap();
    read_response(&mut probe, "ok").await;

    tokio::time::timeout(GUARD, kw.shutdown())
        .await
        .expect("shutdown finished without waiting for idle connections");
    for s in [&mut keep_alive, &mut silent, &mut half, &mut probe] {
        read_until_closed(s).await;
    }
}

async fn github_with(
    signer: &GithubSigner,
    tweak: impl FnOnce(&mut GatewayConfig),
    clock: keyward_core::Clock,
) -> (Upstream, Keyward) {
    let up = Upstream::start().await;
    let doc = signer.document();
    let kw = Keyward::start_full(
        &up.base_url(),
        |c| {
            c.leaks.github_keys = keyward_gateway::github::parse_document(&doc).unwrap();
            tweak(c);
        },
        clock,
        "127.0.0.1:0",
    )
    .await;
    (up, kw)
}

fn github_head(signer: &GithubSigner, length: &str) -> String {
    format!(
        "POST /leaks/github HTTP/1.1\r\nhost: k\r\ncontent-type: application/json\r\ngithub-public-key-identifier: {}\r\ngithub-public-key-signature: {}\r\n{length}\r\n",
        signer.key_id,
        signer.sign(b"[]")
    )
}

#[tokio::test]
async fn an_oversized_github_report_is_refused_without_reading_it() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = github_with(
        &signer,
        |c| c.leaks.github_max_body_bytes = 1024,
        keyward_core::Clock::system(),
    )
    .await;
    // A declared length over the cap: refused with nothing of the body sent.
    let mut s = connect(&kw).await;
    s.write_all(github_head(&signer, "content-length: 104857600\r\n").as_bytes())
        .await
        .unwrap();
    let seen = read_until_closed(&mut s).await;
    assert!(seen.starts_with("HTTP/1.1 413"), "{seen}");
    // A chunked body: cut once past the cap, though it never ends.
    let mut s = connect(&kw).await;
    s.write_all(github_head(&signer, "transfer-encoding: chunked\r\n").as_bytes())
        .await
        .unwrap();
    let chunk = format!("200\r\n{}\r\n", " ".repeat(0x200));
    for _ in 0..3 {
        s.write_all(chunk.as_bytes()).await.unwrap();
    }
    let seen = read_until_closed(&mut s).await;
    assert!(seen.starts_with("HTTP/1.1 413"), "{seen}");
    assert_eq!(
        kw.state.metrics.leak_rejections_total(),
        2,
        "both refusals counted"
    );
}

#[tokio::test]
async fn half_sent_github_reports_beyond_the_bound_are_refused_at_once() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = github_with(
        &signer,
        |c| c.leaks.github_concurrent_bodies = 2,
        keyward_core::Clock::system(),
    )
    .await;
    let mut half_sent = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&kw).await;
        let head = github_head(&signer, "content-length: 1000\r\n");
        s.write_all(format!("{head}[").as_bytes()).await.unwrap();
        half_sent.push(s);
    }
    let permits = || kw.state.leaks.github_bodies.available_permits();
    let waited = tokio::time::timeout(GUARD, async {
        while permits() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "both half-sent bodies are being read");
    let r = post_github(&kw, "kid-1", "bad", b"[]").await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "5");
    // One gives up: its place is free again.
    drop(half_sent.pop());
    let freed = tokio::time::timeout(GUARD, async {
        while permits() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(freed.is_ok());
    let r = post_github(&kw, "kid-1", "bad", b"[]").await;
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn a_flood_of_badly_signed_github_reports_writes_a_handful_of_audit_rows() {
    let signer = GithubSigner::new("kid-1");
    let clock = keyward_core::Clock::manual(1_700_000_000_000);
    let (_up, kw) = github_with(&signer, |_| {}, clock.clone()).await;
    let attacker_text = "kid-<script>alert(1)</script> ../../%0d%0aINJECTED";
    for i in 0..500 {
        let key_id = if i % 2 == 0 { "kid-1" } else { attacker_text };
        let r = kw
            .http
            .post(format!("{}/leaks/github", kw.url))
            .header("github-public-key-identifier", key_id)
            .header("github-public-key-signature", signer.sign(b"other"))
            .body("[]")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    assert_eq!(kw.state.metrics.leak_rejections_total(), 500);
    let rows = rejected_rows(&kw).await;
    assert_eq!(rows.len(), 1, "one row for the window: {rows:?}");
    // The next window's first refusal reports the ones folded before it.
    clock.advance(61_000);
    let r = post_github(&kw, attacker_text, "bad", b"[]").await;
    assert_eq!(r.status(), 401);
    let rows = rejected_rows(&kw).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows[0]["detail"]["folded_since_last"], 499);
    let written = rows[0]["detail"]["key_identifier"].as_str().unwrap();
    assert!(
        written.chars().all(|c| c.is_ascii_alphanumeric()),
        "sanitised: {written:?}"
    );
    assert_eq!(kw.state.metrics.leak_rejections_total(), 501);
}

async fn rejected_rows(kw: &Keyward) -> Vec<serde_json::Value> {
    let v: serde_json::Value = kw
        .admin_get("/api/v1/audit?target=leaks/github&limit=1000")
        .await
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "leak_intake.rejected")
        .cloned()
        .collect()
}
