//! Notifications of a leak: signed webhooks (with retries, a delivery log and one
//! event id across attempts) and email through an SMTP server on loopback.

use crate::leaks::key_status;
use crate::support::{Keyward, Upstream};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use keyward_gateway::notify::email::{SmtpSecurity, SmtpSettings};
use keyward_gateway::notify::webhook;
use keyward_gateway::notify::RetryPolicy;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// Short retries so tests do not wait long.
fn fast(c: &mut keyward_gateway::GatewayConfig) {
    c.leaks.notify.retry = RetryPolicy {
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(200),
        max_attempts: 100,
        poll_interval: Duration::from_millis(25),
        attempt_timeout: Duration::from_secs(5),
    };
}

const WAIT: Duration = Duration::from_secs(20);

/// A webhook receiver that checks the signature with the secret it is given,
/// processes each event id once, and can fail its first `fail_first` requests.
#[derive(Clone, Default)]
struct Receiver {
    secret: Arc<Mutex<String>>,
    seen_ids: Arc<Mutex<HashSet<String>>>,
    requests: Arc<Mutex<u32>>,
    fail_first: Arc<Mutex<u32>>,
    processed: Option<mpsc::UnboundedSender<Value>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    *r.requests.lock().unwrap() += 1;
    {
        let mut fail = r.fail_first.lock().unwrap();
        if *fail > 0 {
            *fail -= 1;
            return StatusCode::SERVICE_UNAVAILABLE;
        }
    }
    let secret = r.secret.lock().unwrap().clone();
    let sig = headers
        .get(webhook::SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if webhook::verify(&secret, sig, &body).is_none() {
        return StatusCode::UNAUTHORIZED;
    }
    let event_id = headers
        .get(webhook::EVENT_ID_HEADER)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    if r.seen_ids.lock().unwrap().insert(event_id) {
        let v: Value = serde_json::from_slice(&body).unwrap();
        let _ = r.processed.as_ref().unwrap().send(v);
    }
    StatusCode::OK
}

async fn serve_receiver(listener: TcpListener, r: Receiver) {
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(r);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
}

async fn add_webhook(kw: &Keyward, url: &str) -> (String, String) {
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": url, "events": ["key.leaked"], "description": "ops"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    (
        v["id"].as_str().unwrap().to_owned(),
        v["secret"].as_str().unwrap().to_owned(),
    )
}

async fn report(kw: &Keyward, secret: &str) {
    let r = kw
        .admin_post(
            "/api/v1/leaks",
            json!({"leaks": [{"token": secret, "url": "https://pastebin.example/x"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
}

async fn deliveries(kw: &Keyward, hook: &str) -> Vec<Value> {
    let v: Value = kw
        .admin_get(&format!("/api/v1/webhooks/{hook}/deliveries"))
        .await
        .json()
        .await
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

/// The delivery log once its newest delivery is delivered (bounded wait).
async fn delivered_log(kw: &Keyward, hook: &str) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = deliveries(kw, hook).await;
        if log.first().is_some_and(|d| d["status"] == "delivered") {
            return log;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not delivered: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_leak_is_delivered_to_the_webhook_signed_and_logged_and_its_secret_shown_once() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), fast).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        processed: Some(tx),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    serve_receiver(listener, receiver.clone()).await;
    let (hook, secret) = add_webhook(&kw, &url).await;
    *receiver.secret.lock().unwrap() = secret.clone();
    let listed = kw.admin_get("/api/v1/webhooks").await.text().await.unwrap();
    assert!(
        listed.contains(&hook) && !listed.contains(&secret),
        "the secret is shown only at creation"
    );

    let (key_id, key) = kw.create_key("app", "leaky").await;
    report(&kw, &key).await;
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("webhook delivered")
        .unwrap();
    assert_eq!(event["type"], "key.leaked");
    assert_eq!(event["data"]["key_id"], key_id);
    assert_eq!(event["data"]["url"], "https://pastebin.example/x");
    assert!(
        !event.to_string().contains(&key),
        "the key itself is never sent"
    );
    // The receiver may answer before the attempt is recorded: wait (bounded).
    let log = delivered_log(&kw, &hook).await;
    assert_eq!(log.len(), 1);
    assert_eq!(log[0]["event_id"], event["id"]);
    assert_eq!(log[0]["last_status"], 200);

    // A second report of the same key (it is already leaked) notifies no one.
    report(&kw, &key).await;
    let r = kw
        .admin_post(&format!("/api/v1/webhooks/{hook}/test"), json!({}))
        .await;
    assert_eq!(r.status(), 202);
    let test = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        test["type"], "webhook.test",
        "the next event is the test, not a duplicate leak"
    );
    assert_eq!(deliveries(&kw, &hook).await.len(), 2);
}

#[tokio::test]
async fn a_receiver_that_is_down_then_up_gets_the_event_exactly_once() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), fast).await;
    // Reserve a port, then free it: nothing listens there for now.
    let addr: SocketAddr = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (hook, secret) = add_webhook(&kw, &format!("http://{addr}/hook")).await;
    let (_id, key) = kw.create_key("app", "k").await;
    report(&kw, &key).await;
    // Wait (bounded) until at least two attempts have failed.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let log = deliveries(&kw, &hook).await;
        if log
            .first()
            .is_some_and(|d| d["attempts"].as_i64().unwrap() >= 2)
        {
            assert_eq!(log[0]["status"], "pending");
            assert!(log[0]["last_error"].as_str().is_some());
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no failed attempts recorded: {log:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Up again, and failing its first answer with 503 for good measure.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        processed: Some(tx),
        ..Default::default()
    };
    *receiver.secret.lock().unwrap() = secret;
    *receiver.fail_first.lock().unwrap() = 1;
    serve_receiver(TcpListener::bind(addr).await.unwrap(), receiver.clone()).await;
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("delivered after the receiver came back")
        .unwrap();
    assert_eq!(event["type"], "key.leaked");
    let log = delivered_log(&kw, &hook).await;
    assert!(log[0]["attempts"].as_i64().unwrap() >= 4);
    assert_eq!(receiver.seen_ids.lock().unwrap().len(), 1, "one event id");
    assert!(rx.try_recv().is_err(), "processed exactly once");
    assert_eq!(
        *receiver.requests.lock().unwrap(),
        2,
        "one 503, then one success; no attempt after"
    );
}

/// A minimal SMTP server: accepts every message and hands over its DATA.
pub async fn smtp_server() -> (u16, mpsc::UnboundedReceiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (socket, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            tokio::spawn(async move {
                let (read, mut write) = socket.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 test ESMTP\r\n").await.unwrap();
                while let Ok(Some(line)) = lines.next_line().await {
                    let cmd = line.to_ascii_uppercase();
                    let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                        b"250 test\r\n"
                    } else if cmd.starts_with("DATA") {
                        write.write_all(b"354 go ahead\r\n").await.unwrap();
                        let mut data = String::new();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                            data.push_str(&l);
                            data.push('\n');
                        }
                        let _ = tx.send(data);
                        b"250 queued\r\n"
                    } else if cmd.starts_with("QUIT") {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        break;
                    } else {
                        b"250 ok\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (port, rx)
}

#[tokio::test]
async fn a_leak_is_emailed_to_the_projects_recipients() {
    let (port, mut mail) = smtp_server().await;
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), |c| {
        fast(c);
        c.leaks.notify.smtp = Some(SmtpSettings {
            host: "127.0.0.1".into(),
            port,
            security: SmtpSecurity::None,
            sender: "keyward <keyward@example.com>".into(),
            credentials: None,
        });
    })
    .await;
    let (key_id, key) = kw.create_key("payments", "checkout").await;
    kw.create_key("other", "x").await;
    let r = kw
        .admin_post(
            "/api/v1/email-recipients",
            json!({"address": "owner@example.com", "project": "payments"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let owner: Value = r.json().await.unwrap();
    let r = kw
        .admin_post(
            "/api/v1/email-recipients",
            json!({"address": "other@example.com", "project": "other"}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let r = kw
        .admin_post(
            "/api/v1/email-recipients",
            json!({"address": "not an address"}),
        )
        .await;
    assert_eq!(r.status(), 400);
    report(&kw, &key).await;
    let message = tokio::time::timeout(WAIT, mail.recv())
        .await
        .expect("email sent")
        .unwrap();
    assert!(message.contains("owner@example.com"), "{message}");
    assert!(message.contains("checkout"), "{message}");
    assert!(message.contains("pastebin.example"), "{message}");
    assert!(message.contains(&key_id), "{message}");
    assert!(!message.contains(&key));
    assert_eq!(key_status(&kw, &key_id).await, "leaked");
    // The other project's recipient hears nothing: publishing queues every
    // delivery of an event at once, before any is sent, so once the owner's
    // mail has arrived the outbox holds all there will ever be for this leak.
    let queued = kw.state.store.list_deliveries(None, 100).await.unwrap();
    let emails: Vec<_> = queued
        .iter()
        .filter(|d| d.channel == keyward_store::Channel::Email)
        .collect();
    assert_eq!(
        emails.len(),
        1,
        "only the key's project is told: {emails:?}"
    );
    assert_eq!(emails[0].target_id, owner["id"].as_str().unwrap());
    assert!(mail.try_recv().is_err(), "only the key's project is told");
}

#[tokio::test]
async fn a_budget_threshold_is_delivered_to_subscribed_webhooks() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), fast).await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        processed: Some(tx),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    serve_receiver(listener, receiver.clone()).await;
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": url, "events": ["budget.threshold_crossed"]}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let hook: Value = r.json().await.unwrap();
    *receiver.secret.lock().unwrap() = hook["secret"].as_str().unwrap().to_owned();

    // 100 micro-dollars with an alert at 10%: one request (26) crosses it.
    let created = kw
        .create_key_with(json!({"budget": {"usd": 0.0001, "soft": [10]}}))
        .await;
    let key = created["key"].as_str().unwrap();
    let ask = json!({"model": "gpt-4o-mini-metered", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
    assert_eq!(kw.chat(key, ask.clone()).await.status(), 200);
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the alert is delivered")
        .unwrap();
    assert_eq!(event["type"], "budget.threshold_crossed");
    assert_eq!(event["data"]["threshold_percent"], 10);
    assert_eq!(event["data"]["scope"], "key");
    // Crossing no new threshold sends nothing more.
    assert_eq!(kw.chat(key, ask).await.status(), 200);
    kw.state.usage.flush().await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), rx.recv())
            .await
            .is_err(),
        "one alert per threshold and period"
    );
}

/// Issue 17, item 13: a key's budget alert carries the key's org and project,
/// so a webhook scoped to that project receives it (and one scoped to another
/// project does not).
#[tokio::test]
async fn a_key_budget_alert_reaches_a_webhook_scoped_to_the_keys_project() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), fast).await;
    // The key first, so that its project exists for the webhook to name.
    let created = kw
        .create_key_with(json!({"project": "payments", "budget": {"usd": 0.0001, "soft": [10]}}))
        .await;
    kw.create_key_with(json!({"project": "other", "name": "o"}))
        .await;
    let (tx, mut rx) = mpsc::unbounded_channel();
    let receiver = Receiver {
        processed: Some(tx),
        ..Default::default()
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    serve_receiver(listener, receiver.clone()).await;
    let mut hooks = Vec::new();
    for project in ["other", "payments"] {
        let r = kw
            .admin_post(
                "/api/v1/webhooks",
                json!({"url": url, "events": ["budget.threshold_crossed"], "project": project}),
            )
            .await;
        assert_eq!(r.status(), 201);
        let hook: Value = r.json().await.unwrap();
        hooks.push(hook);
    }
    // Only the "payments" hook's signature verifies at the receiver.
    *receiver.secret.lock().unwrap() = hooks[1]["secret"].as_str().unwrap().to_owned();

    let key = created["key"].as_str().unwrap();
    let ask = json!({"model": "gpt-4o-mini-metered", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
    assert_eq!(kw.chat(key, ask).await.status(), 200);
    let event = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("the project-scoped webhook receives the key's budget alert")
        .unwrap();
    assert_eq!(event["type"], "budget.threshold_crossed");
    assert_eq!(event["data"]["scope"], "key");
    assert_eq!(event["data"]["threshold_percent"], 10);
    let other = hooks[0]["id"].as_str().unwrap();
    assert!(
        deliveries(&kw, other).await.is_empty(),
        "the other project's webhook is not told"
    );
}
