//! Issue 15, items 1, 6 and 7: tokens die with the secret they were minted
//! from; admin keys can be contained; minting obeys the parent's restrictions
//! and is audited. Each test is named after the attack it stops.

use crate::leaks::{post_github, start_with_github, GithubSigner};
use crate::support::*;
use keyward_core::Clock;
use serde_json::{json, Value};

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

/// `POST /keyward/v1/tokens` with `key`.
async fn mint(kw: &Keyward, key: &str, body: Value) -> reqwest::Response {
    kw.http
        .post(format!("{}/keyward/v1/tokens", kw.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// A token minted by the holder of `key`.
async fn mint_token(kw: &Keyward, key: &str) -> String {
    let r = mint(kw, key, json!({"ttl_seconds": 3600})).await;
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    v["key"].as_str().unwrap().to_owned()
}

async fn rotate(kw: &Keyward, id: &str, grace_seconds: i64) -> String {
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": grace_seconds}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    v["key"].as_str().unwrap().to_owned()
}

async fn report_leak(kw: &Keyward, as_admin: &str, token: &str) -> Value {
    let r = kw
        .http
        .post(format!("{}/api/v1/leaks", kw.url))
        .bearer_auth(as_admin)
        .json(&json!({"leaks": [{"token": token, "url": "https://example.com/paste"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn audit_of(kw: &Keyward, target: &str) -> Vec<Value> {
    let v: Value = kw
        .admin_get(&format!("/api/v1/audit?target={target}&limit=100"))
        .await
        .json()
        .await
        .unwrap();
    v["data"].as_array().unwrap().clone()
}

async fn assert_refused(kw: &Keyward, token: &str, why: &str) -> String {
    let msg = assert_openai_error(
        kw.chat(token, chat_body()).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(!msg.contains(token), "{msg}");
    assert!(msg.contains(why), "expected {why:?} in {msg:?}");
    msg
}

// Item 1: a token dies with the secret it was minted from.

#[tokio::test]
async fn rotating_a_leaked_key_does_not_revive_its_tokens() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "leaky").await;
    let token = mint_token(&kw, &key).await;
    assert_eq!(kw.chat(&token, chat_body()).await.status(), 200);

    let reported = report_leak(&kw, &kw.admin_key, &key).await;
    assert_eq!(reported["data"][0]["result"], "disabled");
    assert_eq!(kw.chat(&token, chat_body()).await.status(), 401);

    // The documented remedy makes the key active again with a new secret…
    let new_key = rotate(&kw, &id, 86_400).await;
    assert_eq!(kw.chat(&new_key, chat_body()).await.status(), 200);
    // …and the token minted with the leaked secret stays dead.
    assert_refused(&kw, &token, "revoked").await;
    // A token minted with the new secret works.
    let fresh = mint_token(&kw, &new_key).await;
    assert_eq!(kw.chat(&fresh, chat_body()).await.status(), 200);
}

#[tokio::test]
async fn clearing_a_leak_does_not_revive_its_tokens() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "leaky").await;
    let token = mint_token(&kw, &key).await;
    report_leak(&kw, &kw.admin_key, &key).await;
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/clear-leak"),
            json!({"reason": "a test key, not a leak"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(kw.chat(&key, chat_body()).await.status(), 200);
    assert_refused(&kw, &token, "revoked").await;
}

#[tokio::test]
async fn rotating_with_no_grace_ends_the_tokens_of_the_old_secret() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    let by_holder = mint_token(&kw, &key).await;
    // An admin-minted token is bound to the parent's current secret.
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/ephemeral"), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let by_admin = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in [&by_holder, &by_admin] {
        assert_eq!(
            kw.chat(t, chat_body()).await.status(),
            200,
            "warms the caches"
        );
    }

    let new_key = rotate(&kw, &id, 0).await;
    for t in [&by_holder, &by_admin] {
        assert_refused(&kw, t, "revoked").await;
    }
    assert_refused(&kw, &key, "grace period has ended").await;
    let fresh = mint_token(&kw, &new_key).await;
    assert_eq!(kw.chat(&fresh, chat_body()).await.status(), 200);
}

#[tokio::test]
async fn a_token_outlives_a_rotation_only_for_the_grace_period() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let (id, key) = kw.create_key("app", "k").await;
    let before = mint_token(&kw, &key).await;
    assert_eq!(kw.chat(&before, chat_body()).await.status(), 200);

    let new_key = rotate(&kw, &id, 60).await;
    assert_eq!(
        kw.chat(&before, chat_body()).await.status(),
        200,
        "in the grace period"
    );
    // Minted with the old secret during its grace: the token ends with it.
    let r = mint(&kw, &key, json!({"ttl_seconds": 3600})).await;
    assert_eq!(r.status(), 201);
    let during: Value = r.json().await.unwrap();
    assert!(during["expires_at"].as_i64().unwrap() <= clock.now_ms() + 60_000);
    let during = during["key"].as_str().unwrap().to_owned();
    assert_eq!(kw.chat(&during, chat_body()).await.status(), 200);
    let after = mint_token(&kw, &new_key).await;

    clock.advance(60_000);
    assert_refused(&kw, &before, "no longer works").await;
    assert_refused(&kw, &during, "expired").await;
    assert_eq!(kw.chat(&after, chat_body()).await.status(), 200);
    assert_eq!(kw.chat(&new_key, chat_body()).await.status(), 200);
}

#[tokio::test]
async fn revoking_a_key_ends_its_tokens_for_good() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    let token = mint_token(&kw, &key).await;
    assert_eq!(kw.chat(&token, chat_body()).await.status(), 200);
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    assert_refused(&kw, &token, "revoked").await;
    let child = kw
        .state
        .store
        .child_keys(&keyward_core::KeyId::parse(&id).unwrap())
        .await
        .unwrap();
    assert_eq!(child[0].status, keyward_store::KeyStatus::Revoked);
}

// Item 7: minting obeys the parent's restrictions and is audited.

#[tokio::test]
async fn minting_from_a_disallowed_network_mints_nothing() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let parent = kw
        .create_key_with(json!({"policy": {"networks": ["10.0.0.0/8"], "rpm": 1}}))
        .await;
    let key = parent["key"].as_str().unwrap();
    for _ in 0..20 {
        let r = mint(&kw, key, json!({})).await;
        let msg = assert_openai_error(r, 403, Some("ip_not_allowed")).await;
        assert!(msg.contains("127.0.0.1"), "{msg}");
    }
    let children = kw
        .state
        .store
        .child_keys(&keyward_core::KeyId::parse(parent["id"].as_str().unwrap()).unwrap())
        .await
        .unwrap();
    assert_eq!(children.len(), 0, "20 attempts minted nothing");
}

#[tokio::test]
async fn minting_sees_the_client_address_through_trusted_proxies_only() {
    let up = Upstream::start().await;
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let parent = kw
        .create_key_with(json!({"policy": {"networks": ["10.0.0.0/8"]}}))
        .await;
    let key = parent["key"].as_str().unwrap();
    let via = |xff: &'static str| {
        kw.http
            .post(format!("{}/keyward/v1/tokens", kw.url))
            .bearer_auth(key)
            .header("x-forwarded-for", xff)
            .send()
    };
    assert_eq!(via("10.1.2.3").await.unwrap().status(), 201);
    assert_openai_error(
        via("203.0.113.9").await.unwrap(),
        403,
        Some("ip_not_allowed"),
    )
    .await;
}

#[tokio::test]
async fn an_rpm_1_key_mints_once_then_gets_429() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let parent = kw.create_key_with(json!({"policy": {"rpm": 1}})).await;
    let key = parent["key"].as_str().unwrap();
    let r = mint(&kw, key, json!({})).await;
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-ratelimit-limit-requests"], "1");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    let r = mint(&kw, key, json!({})).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert_openai_error(r, 429, Some("rate_limit_exceeded")).await;
    // The mint counted toward the key's limit like any request.
    assert_openai_error(
        kw.chat(key, chat_body()).await,
        429,
        Some("rate_limit_exceeded"),
    )
    .await;
}

#[tokio::test]
async fn a_key_whose_endpoints_exclude_minting_cannot_mint() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    for endpoints in ["chat-only", "all"] {
        let parent = kw
            .create_key_with(json!({"policy": {"endpoints": endpoints}}))
            .await;
        let msg = assert_openai_error(
            mint(&kw, parent["key"].as_str().unwrap(), json!({})).await,
            403,
            Some("permission_denied"),
        )
        .await;
        assert!(msg.contains("POST /keyward/v1/tokens"), "{msg}");
    }
    let parent = kw
        .create_key_with(json!({"policy": {"endpoints": "chat-only, POST /keyward/v1/tokens"}}))
        .await;
    assert_eq!(
        mint(&kw, parent["key"].as_str().unwrap(), json!({}))
            .await
            .status(),
        201
    );
}

#[tokio::test]
async fn mints_appear_in_the_audit_list_folded_per_key() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let (id, key) = kw.create_key("app", "k").await;
    for _ in 0..5 {
        mint_token(&kw, &key).await;
    }
    let minted = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["action"] == "token.minted")
            .collect()
    };
    let events = minted(audit_of(&kw, &id).await);
    assert_eq!(events.len(), 1, "a flood of mints is one event per window");
    assert_eq!(events[0]["actor"], id);
    assert_eq!(events[0]["detail"]["folded"], 0);
    assert!(events[0]["detail"]["token_id"].is_string());

    clock.advance(60_000);
    mint_token(&kw, &key).await;
    let events = minted(audit_of(&kw, &id).await);
    assert_eq!(events.len(), 2);
    assert_eq!(
        events[0]["detail"]["folded"], 4,
        "the four folded mints are counted"
    );

    // Admin-minted tokens are audited one by one, with the admin as actor.
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/ephemeral"), json!({}))
        .await;
    assert_eq!(r.status(), 201);
    let events = minted(audit_of(&kw, &id).await);
    assert_eq!(events.len(), 3);
    assert!(events[0]["actor"].as_str().unwrap().starts_with("key_"));
    assert_ne!(events[0]["actor"], id);
}

#[tokio::test]
async fn a_mint_by_a_revoked_or_rotated_out_key_says_the_key_is_invalid() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, key) = kw.create_key("app", "k").await;
    rotate(&kw, &id, 0).await;
    let msg = assert_openai_error(
        mint(&kw, &key, json!({})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(msg.contains("grace period has ended"), "{msg}");
    assert!(!msg.contains("admin"), "{msg}");

    let (id, key) = kw.create_key("app", "k2").await;
    kw.admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await;
    let msg = assert_openai_error(
        mint(&kw, &key, json!({})).await,
        401,
        Some("invalid_api_key"),
    )
    .await;
    assert!(msg.contains("revoked") && !msg.contains(&key), "{msg}");
    let r = kw
        .http
        .post(format!("{}/keyward/v1/tokens", kw.url))
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 401, Some("invalid_api_key")).await;
}

// Item 6: admin keys are keys.

async fn admin_request(
    kw: &Keyward,
    key: &str,
    method: reqwest::Method,
    path: &str,
) -> reqwest::Response {
    kw.http
        .request(method, format!("{}{path}", kw.url))
        .bearer_auth(key)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
}

/// Creates an admin key as `as_admin`; returns (id, secret).
async fn create_admin_key(kw: &Keyward, as_admin: &str, name: &str) -> (String, String) {
    let r = kw
        .http
        .post(format!("{}/api/v1/admin-keys", kw.url))
        .bearer_auth(as_admin)
        .json(&json!({"name": name}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let v: Value = r.json().await.unwrap();
    let secret = v["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kwa_"));
    (v["id"].as_str().unwrap().to_owned(), secret)
}

async fn lists(kw: &Keyward, key: &str) -> reqwest::StatusCode {
    admin_request(kw, key, reqwest::Method::GET, "/api/v1/admin-keys")
        .await
        .status()
}

#[tokio::test]
async fn a_leaked_admin_key_reported_via_the_api_is_refused_on_the_next_request() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": format!("{}/hook", up.base_url())}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let (id, leaked) = create_admin_key(&kw, &kw.admin_key, "ci").await;
    assert_eq!(lists(&kw, &leaked).await, 200);

    let reported = report_leak(&kw, &kw.admin_key, &leaked).await;
    let result = &reported["data"][0];
    assert_eq!(
        (
            result["result"].as_str(),
            result["key_id"].as_str(),
            result["key_kind"].as_str()
        ),
        (Some("disabled"), Some(id.as_str()), Some("admin"))
    );
    assert_eq!(lists(&kw, &leaked).await, 401);
    let listed: Value = kw
        .admin_get("/api/v1/admin-keys")
        .await
        .json()
        .await
        .unwrap();
    let record = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(record["status"], "leaked");
    let actions: Vec<Value> = audit_of(&kw, &id)
        .await
        .into_iter()
        .map(|e| e["action"].clone())
        .collect();
    assert!(actions.contains(&json!("admin_key.leaked")), "{actions:?}");
    let deliveries = kw.state.store.list_deliveries(None, 10).await.unwrap();
    assert!(
        deliveries
            .iter()
            .any(|d| d.event_type == "key.leaked" && d.payload["data"]["key_kind"] == "admin"),
        "the leak is notified like a key's"
    );

    // Rotating it (with another admin key) gives a working secret again.
    let r = admin_request(
        &kw,
        &kw.admin_key,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{id}/rotate"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    assert_eq!(rotated["status"], "active");
    assert_eq!(lists(&kw, rotated["key"].as_str().unwrap()).await, 200);
    assert_eq!(lists(&kw, &leaked).await, 401);
}

#[tokio::test]
async fn a_leaked_admin_key_reported_via_github_is_refused_on_the_next_request() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = start_with_github(&signer).await;
    let (id, leaked) = create_admin_key(&kw, &kw.admin_key, "laptop").await;
    assert_eq!(lists(&kw, &leaked).await, 200);
    let body = serde_json::to_vec(&json!([{"token": leaked, "type": "keyward_admin_key",
        "url": "https://github.com/octo/app/blob/abc/.env", "source": "content"}]))
    .unwrap();
    let r = post_github(&kw, &signer.key_id, &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    let feedback: Value = r.json().await.unwrap();
    assert_eq!(feedback[0]["label"], "true_positive");
    assert_eq!(lists(&kw, &leaked).await, 401);
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"][0]["outcome"], "disabled");
    // A replay is answered the same and changes nothing.
    let r = post_github(&kw, &signer.key_id, &signer.sign(&body), &body).await;
    assert_eq!(r.json::<Value>().await.unwrap(), feedback);
}

#[tokio::test]
async fn admin_keys_are_listed_created_rotated_and_revoked_and_every_change_is_audited() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (id, first) = create_admin_key(&kw, &kw.admin_key, "ops").await;
    let listed = kw
        .admin_get("/api/v1/admin-keys")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        listed.contains("\"ops\"") && listed.contains("\"initial\""),
        "{listed}"
    );
    assert!(
        !listed.contains(&first) && !listed.contains(&kw.admin_key),
        "no secrets"
    );

    let r = admin_request(
        &kw,
        &first,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{id}/rotate"),
    )
    .await;
    assert_eq!(r.status(), 200);
    let second = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        lists(&kw, &first).await,
        401,
        "the old secret stops at once"
    );
    assert_eq!(lists(&kw, &second).await, 200);

    let r = admin_request(
        &kw,
        &kw.admin_key,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{id}/revoke"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["status"], "revoked");
    assert_eq!(lists(&kw, &second).await, 401);
    let r = admin_request(
        &kw,
        &kw.admin_key,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{id}/rotate"),
    )
    .await;
    assert_eq!(r.status(), 409, "a revoked admin key stays revoked");

    let actions: Vec<Value> = audit_of(&kw, &id)
        .await
        .into_iter()
        .map(|e| e["action"].clone())
        .collect();
    for a in [
        "admin_key.created",
        "admin_key.rotated",
        "admin_key.revoked",
    ] {
        assert!(actions.contains(&json!(a)), "{a} in {actions:?}");
    }
}

#[tokio::test]
async fn the_last_active_admin_key_cannot_be_revoked() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let listed: Value = kw
        .admin_get("/api/v1/admin-keys")
        .await
        .json()
        .await
        .unwrap();
    let initial = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let revoke = format!("/api/v1/admin-keys/{initial}/revoke");
    let r = admin_request(&kw, &kw.admin_key, reqwest::Method::POST, &revoke).await;
    assert_eq!(r.status(), 409);
    assert_eq!(lists(&kw, &kw.admin_key).await, 200);

    let (_, other) = create_admin_key(&kw, &kw.admin_key, "successor").await;
    let r = admin_request(&kw, &other, reqwest::Method::POST, &revoke).await;
    assert_eq!(r.status(), 200);
    assert_eq!(lists(&kw, &kw.admin_key).await, 401);
}

#[tokio::test]
async fn the_initial_key_file_is_removed_once_another_admin_key_is_used() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let file = kw.data_dir().join("initial-admin-key");
    let (_, other) = create_admin_key(&kw, &kw.admin_key, "ops").await;
    assert!(file.exists(), "created but not yet used");
    assert_eq!(lists(&kw, &kw.admin_key).await, 200);
    assert!(file.exists(), "the bootstrap key itself keeps it");
    assert_eq!(lists(&kw, &other).await, 200);
    assert!(!file.exists(), "a second admin has taken over");
    assert_eq!(
        lists(&kw, &kw.admin_key).await,
        200,
        "the key itself still works"
    );
    let listed: Value = kw
        .admin_get("/api/v1/admin-keys")
        .await
        .json()
        .await
        .unwrap();
    let initial = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let actions: Vec<Value> = audit_of(&kw, &initial)
        .await
        .into_iter()
        .map(|e| e["action"].clone())
        .collect();
    assert!(
        actions.contains(&json!("admin_key.initial_file_removed")),
        "{actions:?}"
    );
}

#[tokio::test]
async fn the_initial_key_file_is_removed_once_its_key_is_rotated() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let file = kw.data_dir().join("initial-admin-key");
    let listed: Value = kw
        .admin_get("/api/v1/admin-keys")
        .await
        .json()
        .await
        .unwrap();
    let initial = listed["data"][0]["id"].as_str().unwrap().to_owned();
    let r = admin_request(
        &kw,
        &kw.admin_key,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{initial}/rotate"),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(!file.exists());
    let new = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(lists(&kw, &kw.admin_key).await, 401);
    assert_eq!(lists(&kw, &new).await, 200);
}

#[tokio::test]
async fn a_restart_removes_a_dead_key_file_and_recovers_from_a_leaked_last_admin_key() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let file = kw.data_dir().join("initial-admin-key");
    let (format, clock) = (keyward_core::KeyFormat::default(), Clock::system());
    let bootstrap =
        || keyward_gateway::bootstrap::bootstrap(&kw.state.store, kw.data_dir(), &format, &clock);
    // The only admin key leaks: it is disabled even though it is the last one.
    let reported = report_leak(&kw, &kw.admin_key, &kw.admin_key).await;
    assert_eq!(reported["data"][0]["result"], "disabled");
    assert_eq!(lists(&kw, &kw.admin_key).await, 401);
    assert!(!file.exists(), "the file held the leaked key");

    // A restart writes a new initial key: the way back in.
    let again = bootstrap().await.unwrap();
    let (path, reason) = again.written.unwrap();
    assert_eq!(reason, "no active admin key");
    let new = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    assert_eq!(lists(&kw, &new).await, 200);

    // A key file whose key was revoked elsewhere is removed at start.
    let (_, other) = create_admin_key(&kw, &new, "ops").await;
    let listed: Value = admin_request(&kw, &other, reqwest::Method::GET, "/api/v1/admin-keys")
        .await
        .json()
        .await
        .unwrap();
    let newest_initial = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["status"] == "active" && k["name"] == "initial")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin_request(
        &kw,
        &other,
        reqwest::Method::POST,
        &format!("/api/v1/admin-keys/{newest_initial}/revoke"),
    )
    .await;
    assert_eq!(r.status(), 200);
    std::fs::write(&file, format!("{new}\n")).unwrap();
    let again = bootstrap().await.unwrap();
    assert!(again.written.is_none());
    assert!(!file.exists(), "the file held a revoked key");
}

/// Issue 17, item 14: minting with a revoked or rotated-out key says what is
/// wrong with that key, not that an admin key is required.
#[tokio::test]
async fn minting_with_a_revoked_or_rotated_out_key_says_so() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let revoked = kw.create_key_with(json!({})).await;
    let id = revoked["id"].as_str().unwrap();
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
        .await;
    assert_eq!(r.status(), 200);
    let r = mint(&kw, revoked["key"].as_str().unwrap(), json!({})).await;
    let msg = assert_openai_error(r, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("revoked"), "{msg}");
    assert!(!msg.contains("admin key"), "{msg}");

    let rotated = kw.create_key_with(json!({})).await;
    let old = rotated["key"].as_str().unwrap();
    let new = rotate(&kw, rotated["id"].as_str().unwrap(), 0).await;
    let r = mint(&kw, old, json!({})).await;
    let msg = assert_openai_error(r, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("rotated"), "{msg}");
    assert!(!msg.contains("admin key"), "{msg}");
    assert_eq!(mint(&kw, &new, json!({})).await.status(), 201);
}
