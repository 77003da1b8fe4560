//! Attacks on the management API and on what the server keeps at rest: stored
//! webhook secrets, file modes, key listing by organization, oversize bodies,
//! invisible characters in names, budgets finer than a micro-dollar.

use crate::support::{Keyward, Upstream};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use keyward_core::{Clock, EventId, Secret, WebhookId};
use keyward_gateway::notify::{webhook, Event};
use keyward_gateway::sealing::{self, SealingKey, SealingKeySource};
use keyward_gateway::serve::StartError;
use keyward_gateway::{GatewayConfig, Server, UpstreamConfig};
use keyward_store::{Channel, ChannelScope, NewWebhook, SharedStore};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

// --- Secrets at rest -------------------------------------------------------

/// Every file of the SQLite database, concatenated.
fn database_bytes(dir: &Path) -> Vec<u8> {
    let mut all = Vec::new();
    for name in ["keyward.db", "keyward.db-wal", "keyward.db-shm"] {
        if let Ok(bytes) = std::fs::read(dir.join(name)) {
            all.extend(bytes);
        }
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// A webhook receiver that reports, for each delivery, whether its signature
/// verifies with `secret`.
async fn signed_receiver(secret: String) -> (String, mpsc::UnboundedReceiver<bool>) {
    async fn receive(
        State((secret, tx)): State<(String, mpsc::UnboundedSender<bool>)>,
        headers: HeaderMap,
        body: Bytes,
    ) -> StatusCode {
        let signature = headers
            .get(webhook::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let _ = tx.send(webhook::verify(&secret, signature, &body).is_some());
        StatusCode::OK
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state((secret, tx));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, rx)
}

/// Sends a test event to `hook` through the server's own notifier and returns
/// whether the receiver found it signed with the secret it expects.
async fn deliver_test_event(
    state: &keyward_gateway::state::SharedState,
    hook: &str,
    rx: &mut mpsc::UnboundedReceiver<bool>,
) -> bool {
    let event = Event {
        id: EventId::generate(),
        event_type: "webhook.test".into(),
        created_at: 1,
        org_id: None,
        project_id: None,
        data: json!({}),
        summary: "test".into(),
    };
    let notifier = &state.leaks.notifier;
    notifier
        .publish_to(&event, Channel::Webhook, hook)
        .await
        .unwrap();
    notifier.deliver_due().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("the receiver got the delivery")
        .unwrap()
}

#[tokio::test]
async fn a_copied_database_file_does_not_hold_webhook_signing_secrets() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": "https://hooks.example.test/kw"}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    let random_part = secret.strip_prefix("whsec_").unwrap();

    let bytes = database_bytes(kw.data_dir());
    assert!(!bytes.is_empty());
    assert!(
        !contains(&bytes, random_part),
        "the database files hold the webhook secret"
    );
    let stored = kw.state.store.list_webhooks().await.unwrap();
    assert!(sealing::is_sealed(&stored[0].secret));
    assert!(!stored[0].secret.expose().contains(random_part));
    assert!(
        !contains(
            &std::fs::read(kw.data_dir().join(sealing::DEFAULT_KEY_FILE)).unwrap(),
            random_part
        ),
        "the key file holds a key, not secrets"
    );
}

#[tokio::test]
async fn deliveries_are_signed_with_the_secret_shown_at_creation() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    // Learn the secret first (on a webhook to nowhere), then check that a
    // webhook's deliveries verify with its own secret and no other.
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/unused"}),
        )
        .await;
    let other: Value = r.json().await.unwrap();
    let secret_slot = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, mut rx) = mpsc::unbounded_channel::<bool>();
    let slot = secret_slot.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let slot = slot.clone();
            let tx = tx.clone();
            async move {
                let secret = slot.lock().unwrap().clone();
                let signature = headers
                    .get(webhook::SIGNATURE_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                let _ = tx.send(webhook::verify(&secret, signature, &body).is_some());
                StatusCode::OK
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let r = kw.admin_post("/api/v1/webhooks", json!({"url": url})).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let hook: Value = r.json().await.unwrap();
    let id = hook["id"].as_str().unwrap();

    *secret_slot.lock().unwrap() = other["secret"].as_str().unwrap().to_owned();
    assert!(
        !deliver_test_event(&kw.state, id, &mut rx).await,
        "verifies with another webhook's secret"
    );
    *secret_slot.lock().unwrap() = hook["secret"].as_str().unwrap().to_owned();
    assert!(
        deliver_test_event(&kw.state, id, &mut rx).await,
        "a delivery is signed with the webhook's own secret"
    );
}

async fn sqlite_store(dir: &Path) -> SharedStore {
    keyward_store::open(&format!("sqlite://{}", dir.join("keyward.db").display()))
        .await
        .unwrap()
}

fn config_in(dir: &Path, upstream: &str) -> GatewayConfig {
    GatewayConfig::new(
        UpstreamConfig {
            base_url: upstream.parse().unwrap(),
            api_key: None,
        },
        dir.to_owned(),
    )
}

/// A webhook as an earlier version stored it: the secret in plaintext.
async fn plaintext_webhook(store: &SharedStore, url: &str, secret: &str) -> WebhookId {
    let id = WebhookId::generate();
    store
        .create_webhook(&NewWebhook {
            id: id.clone(),
            url: url.into(),
            secret: Secret::new(secret),
            scope: ChannelScope {
                events: vec!["*".into()],
                org_id: None,
                project_id: None,
            },
            description: String::new(),
            created_by: "key_admin".into(),
            created_at: 1,
        })
        .await
        .unwrap();
    id
}

#[tokio::test]
async fn a_plaintext_webhook_secret_from_before_is_sealed_at_start_and_still_signs() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    let old_secret = "whsec_fromAnEarlierVersion0123456789";
    let (url, mut rx) = signed_receiver(old_secret.into()).await;
    let id = plaintext_webhook(&store, &url, old_secret).await;

    let server = Server::new(
        config_in(dir.path(), "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .unwrap();
    let stored = store.list_webhooks().await.unwrap();
    assert!(
        sealing::is_sealed(&stored[0].secret),
        "sealed at start: {:?}",
        stored[0].secret.expose().get(..5)
    );
    assert!(!stored[0].secret.expose().contains("fromAnEarlierVersion"));
    assert!(
        deliver_test_event(&server.state(), id.as_str(), &mut rx).await,
        "deliveries are still signed with the same secret"
    );
    // A second start seals nothing again and keeps the sealed value.
    Server::new(
        config_in(dir.path(), "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .unwrap();
    assert_eq!(
        store.list_webhooks().await.unwrap()[0].secret,
        stored[0].secret
    );
}

#[tokio::test]
async fn starting_with_the_wrong_secrets_key_fails_clearly_and_drops_no_webhook() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path()).await;
    plaintext_webhook(&store, "https://hooks.example.test/a", "whsec_a").await;
    Server::new(
        config_in(dir.path(), "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .unwrap();
    let sealed = store.list_webhooks().await.unwrap();

    // Another key, given in the environment.
    let mut config = config_in(dir.path(), "http://127.0.0.1:9/v1");
    config.sealing_key = SealingKeySource::Key(SealingKey::generate());
    let err = Server::new(config, store.clone(), Clock::system())
        .await
        .err()
        .expect("a wrong key refuses to start");
    assert!(matches!(err, StartError::Sealing(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("do not open") && message.contains("KEYWARD_SECRETS_KEY"),
        "{message}"
    );

    // The key file lost: refused too, and no new key file is made up.
    let key_file = dir.path().join(sealing::DEFAULT_KEY_FILE);
    std::fs::remove_file(&key_file).unwrap();
    let err = Server::new(
        config_in(dir.path(), "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .err()
    .expect("a missing key file refuses to start");
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert!(!key_file.exists());

    // A key file holding something else than a key.
    std::fs::write(&key_file, "not a key\n").unwrap();
    let err = Server::new(
        config_in(dir.path(), "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .err()
    .expect("a malformed key file refuses to start");
    assert!(err.to_string().contains("not a valid secrets key"), "{err}");
    assert!(!err.to_string().contains("not a key"), "{err}");

    let after: Vec<(WebhookId, Secret)> = store
        .list_webhooks()
        .await
        .unwrap()
        .into_iter()
        .map(|w| (w.id, w.secret))
        .collect();
    let before: Vec<(WebhookId, Secret)> = sealed.into_iter().map(|w| (w.id, w.secret)).collect();
    assert_eq!(after, before, "nothing was dropped or changed");
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn the_data_dir_database_files_and_key_file_are_private_to_the_owner() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    assert_eq!(keyward_gateway::data_dir::prepare(&dir).unwrap(), None);
    assert_eq!(mode(&dir), 0o700);
    let store = sqlite_store(&dir).await;
    Server::new(
        config_in(&dir, "http://127.0.0.1:9/v1"),
        store.clone(),
        Clock::system(),
    )
    .await
    .unwrap();
    for name in [
        "keyward.db",
        "keyward.db-wal",
        "keyward.db-shm",
        "secrets.key",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    assert!(keyward_store::sqlite::files_open_to_others(&dir.join("keyward.db")).is_empty());
}

#[cfg(unix)]
#[tokio::test]
async fn a_data_dir_and_database_open_to_others_are_reported() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("keyward.db");
    std::fs::write(&db, b"").unwrap();
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(
        keyward_gateway::data_dir::prepare(&dir).unwrap(),
        Some(0o755)
    );
    let _store = sqlite_store(&dir).await;
    let wide = keyward_store::sqlite::files_open_to_others(&db);
    assert!(wide.contains(&(db.clone(), 0o644)), "{wide:?}");
    assert_eq!(mode(&db), 0o644, "reported, not changed");
}

// --- Listing keys by organization ------------------------------------------

#[tokio::test]
async fn listing_keys_of_one_org_does_not_return_every_orgs_keys() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    for org in ["acme", "globex"] {
        let r = kw.admin_post("/api/v1/orgs", json!({"name": org})).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        let r = kw
            .admin_post(
                "/api/v1/keys",
                json!({"org": org, "project": "web", "name": format!("{org}-key"), "create_project": true}),
            )
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    let r = kw.admin_get("/api/v1/keys?org=acme").await;
    assert_eq!(r.status(), StatusCode::OK);
    let listed: Value = r.json().await.unwrap();
    let names: Vec<&str> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme-key"]);

    let r = kw.admin_get("/api/v1/keys?org=initech").await;
    assert_eq!(
        r.status(),
        StatusCode::NOT_FOUND,
        "an unknown org is not everything"
    );
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "not_found");

    let all: Value = kw.admin_get("/api/v1/keys").await.json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 2);
}

// --- Oversize bodies --------------------------------------------------------

#[tokio::test]
async fn oversize_bodies_get_a_json_413_on_every_management_route() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        // The bulk routes' own limits, below the body sent.
        c.max_body_bytes = 1024 * 1024;
        c.leaks.watchers.max_upload_bytes = 1024 * 1024;
    })
    .await;
    let (key_id, key) = kw.create_key("app", "k").await;
    let project: Value = kw.admin_get("/api/v1/projects").await.json().await.unwrap();
    let project_id = project["data"][0]["id"].as_str().unwrap().to_owned();
    // Just over the management limit: a JSON string, so that only its size is wrong.
    let mut body = String::from("{\"name\": \"");
    body.push_str(&"x".repeat(keyward_gateway::management::MAX_BODY_BYTES));
    body.push_str("\"}");
    let routes: Vec<(&str, String, &str)> = vec![
        ("POST", "/api/v1/orgs".into(), "admin"),
        ("POST", "/api/v1/projects".into(), "admin"),
        ("POST", "/api/v1/keys".into(), "admin"),
        ("POST", format!("/api/v1/keys/{key_id}/rotate"), "admin"),
        ("POST", format!("/api/v1/keys/{key_id}/ephemeral"), "admin"),
        ("POST", format!("/api/v1/keys/{key_id}/clear-leak"), "admin"),
        ("POST", "/keyward/v1/tokens".into(), "key"),
        ("PUT", "/api/v1/budgets".into(), "admin"),
        ("DELETE", "/api/v1/budgets".into(), "admin"),
        (
            "PUT",
            format!("/api/v1/projects/{project_id}/policy"),
            "admin",
        ),
        ("POST", "/api/v1/webhooks".into(), "admin"),
        ("POST", "/api/v1/email-recipients".into(), "admin"),
        ("POST", "/api/v1/leaks".into(), "admin"),
        ("POST", "/api/v1/scan-uploads".into(), "admin"),
    ];
    for (method, path, auth) in routes {
        // A client per request: a connection that answered 413 is closed.
        let r = reqwest::Client::new()
            .request(method.parse().unwrap(), format!("{}{path}", kw.url))
            .bearer_auth(if auth == "admin" { &kw.admin_key } else { &key })
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE, "{method} {path}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{method} {path}"
        );
        let v: Value = r.json().await.unwrap();
        assert_eq!(
            v["error"]["code"], "payload_too_large",
            "{method} {path}: {v}"
        );
        assert!(v["error"]["message"].is_string(), "{method} {path}: {v}");
    }
    // Nothing was created by the refused requests.
    let orgs: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/orgs", kw.url))
        .bearer_auth(&kw.admin_key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(orgs["data"].as_array().unwrap().len(), 1);
}

// --- Invisible characters and sub-micro-dollar budgets ------------------------

#[tokio::test]
async fn names_with_zero_width_or_bidi_characters_are_refused() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let attempts = [
        ("/api/v1/orgs", json!({"name": "ac\u{200B}me"}), "U+200B"),
        ("/api/v1/projects", json!({"name": "\u{202E}bew"}), "U+202E"),
        (
            "/api/v1/keys",
            json!({"project": "app", "name": "prod\u{2066}", "create_project": true}),
            "U+2066",
        ),
        (
            "/api/v1/keys",
            json!({"project": "pr\u{200D}od", "name": "k", "create_project": true}),
            "U+200D",
        ),
        (
            "/api/v1/keys",
            json!({"project": "app", "name": "k", "tags": ["\u{FEFF}team"], "create_project": true}),
            "U+FEFF",
        ),
        ("/api/v1/orgs", json!({"name": "a\u{00A0}b"}), "U+00A0"),
    ];
    for (path, body, code_point) in attempts {
        let r = kw.admin_post(path, body.clone()).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{body}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "bad_request");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(code_point), "{message}");
    }
    let keys: Value = kw.admin_get("/api/v1/keys").await.json().await.unwrap();
    assert!(keys["data"].as_array().unwrap().is_empty());
    let projects: Value = kw.admin_get("/api/v1/projects").await.json().await.unwrap();
    assert!(projects["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn a_budget_finer_than_a_micro_dollar_is_refused_never_stored_as_zero() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (key_id, _) = kw.create_key("app", "k").await;
    for usd in [
        json!(1e-7),
        json!(0.0000005),
        json!(1.0000001),
        json!(-1),
        json!(-0.5),
    ] {
        let r = kw
            .admin_put("/api/v1/budgets", json!({"org": "default", "usd": usd}))
            .await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{usd}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["error"]["message"].as_str().unwrap().contains("budget"),
            "{v}"
        );
    }
    // Infinity cannot be written in JSON; the nearest is a number out of range.
    let r = kw
        .http
        .put(format!("{}/api/v1/budgets", kw.url))
        .bearer_auth(&kw.admin_key)
        .header("content-type", "application/json")
        .body(r#"{"org": "default", "usd": 1e999}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = kw
        .admin_post(
            "/api/v1/keys",
            json!({"project": "app", "name": "k2", "budget": {"usd": 1e-7}}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{key_id}/ephemeral"),
            json!({"budget_usd": 1e-7}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let budgets: Value = kw.admin_get("/api/v1/budgets").await.json().await.unwrap();
    assert!(
        budgets["data"].as_array().unwrap().is_empty(),
        "nothing stored: {budgets}"
    );
    // A micro-dollar itself is a budget.
    let r = kw
        .admin_put(
            "/api/v1/budgets",
            json!({"org": "default", "usd": 0.000001}),
        )
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["amount_micros"], 1, "{v}");
}
