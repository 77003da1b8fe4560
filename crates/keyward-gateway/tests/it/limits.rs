//! Rate limits, restrictions, rotation, expiry and ephemeral tokens.

use crate::support::*;
use keyward_core::Clock;
use serde_json::{json, Value};

fn mini() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn requests_per_minute_are_exact_with_openai_headers() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let created = kw
        .create_key_with(json!({"policy": {"rpm": 3, "tpm": 10000}}))
        .await;
    let key = created["key"].as_str().unwrap();
    for remaining in ["2", "1", "0"] {
        let r = kw.chat(key, mini()).await;
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["x-ratelimit-limit-requests"], "3");
        assert_eq!(r.headers()["x-ratelimit-remaining-requests"], remaining);
        assert!(r.headers().contains_key("x-ratelimit-reset-requests"));
        assert_eq!(r.headers()["x-ratelimit-limit-tokens"], "10000");
        assert!(r.headers().contains_key("x-ratelimit-remaining-tokens"));
    }
    let r = kw.chat(key, mini()).await;
    assert_eq!(r.headers()["retry-after"], "20");
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(r.headers()["x-ratelimit-reset-requests"], "1m0s");
    assert_openai_error(r, 429, Some("rate_limit_exceeded")).await;
    assert_eq!(
        up.seen().len(),
        3,
        "refused requests never reach the upstream"
    );
    clock.advance(20_000);
    assert_eq!(
        kw.chat(key, mini()).await.status(),
        200,
        "one request refills after 20 s"
    );
    assert_eq!(kw.chat(key, mini()).await.status(), 429);
}

#[tokio::test]
async fn tokens_per_minute_and_project_limits() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock, "127.0.0.1:0").await;
    // Each request is admitted against its bound (24 input tokens, no cap) and
    // then charged what it used (18): with 50 tokens per minute, two fit.
    let created = kw.create_key_with(json!({"policy": {"tpm": 50}})).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(kw.chat(key, mini()).await.status(), 200);
    assert_eq!(kw.chat(key, mini()).await.status(), 200);
    let r = kw.chat(key, mini()).await;
    let msg = assert_openai_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(msg.contains("tokens per minute"), "{msg}");

    let other = kw
        .create_key_with(json!({"project": "shared", "name": "a"}))
        .await;
    let second = kw
        .create_key_with(json!({"project": "shared", "name": "b"}))
        .await;
    let project = other["project_id"].as_str().unwrap();
    let r = kw
        .admin_put(
            &format!("/api/v1/projects/{project}/policy"),
            json!({"rpm": 2}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        kw.chat(other["key"].as_str().unwrap(), mini())
            .await
            .status(),
        200
    );
    assert_eq!(
        kw.chat(second["key"].as_str().unwrap(), mini())
            .await
            .status(),
        200
    );
    let r = kw.chat(other["key"].as_str().unwrap(), mini()).await;
    let msg = assert_openai_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(
        msg.contains("project"),
        "the project limit holds across its keys: {msg}"
    );
}

#[tokio::test]
async fn concurrent_request_limit_holds() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw
        .create_key_with(json!({"policy": {"max_concurrent": 2}}))
        .await;
    let key = created["key"].as_str().unwrap();
    let endless = json!({"model": "gpt-4o-mini-endless", "stream": true, "messages": []});
    let a = kw.chat(key, endless.clone()).await;
    let b = kw.chat(key, endless.clone()).await;
    assert_eq!((a.status().as_u16(), b.status().as_u16()), (200, 200));
    let r = kw.chat(key, mini()).await;
    let msg = assert_openai_error(r, 429, Some("rate_limit_exceeded")).await;
    assert!(msg.contains("concurrent"), "{msg}");
    let dropped = up.log.dropped.notified();
    drop(a);
    tokio::time::timeout(std::time::Duration::from_secs(30), dropped)
        .await
        .unwrap();
    assert_eq!(
        kw.chat(key, mini()).await.status(),
        200,
        "a finished request frees its slot"
    );
    drop(b);
}

#[tokio::test]
async fn every_restriction_refuses_with_its_code_and_nothing_reaches_the_upstream() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let chat_only = kw
        .create_key_with(json!({"policy": {"endpoints": "chat-only", "models": ["gpt-4o-mini*"]}}))
        .await;
    let key = chat_only["key"].as_str().unwrap();
    let r = kw
        .http
        .post(format!("{}/v1/embeddings", kw.url))
        .bearer_auth(key)
        .json(&json!({"model": "gpt-4o-mini", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 403, Some("permission_denied")).await;
    let r = kw
        .chat(key, json!({"model": "gpt-4o", "messages": []}))
        .await;
    assert_openai_error(r, 403, Some("model_not_allowed")).await;
    let elsewhere = kw
        .create_key_with(json!({"policy": {"networks": ["10.0.0.0/8", "2001:db8::/32"]}}))
        .await;
    let r = kw.chat(elsewhere["key"].as_str().unwrap(), mini()).await;
    let msg = assert_openai_error(r, 403, Some("ip_not_allowed")).await;
    assert!(msg.contains("127.0.0.1"), "{msg}");
    assert!(
        up.seen().is_empty(),
        "denied requests never reach the upstream"
    );
    assert_eq!(
        kw.chat(key, mini()).await.status(),
        200,
        "what is allowed still works"
    );
    let read_only = kw
        .create_key_with(json!({"policy": {"endpoints": "read-only"}}))
        .await;
    let r = kw
        .http
        .get(format!("{}/v1/models", kw.url))
        .bearer_auth(read_only["key"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = kw.chat(read_only["key"].as_str().unwrap(), mini()).await;
    assert_openai_error(r, 403, Some("permission_denied")).await;
}

#[tokio::test]
async fn ipv6_networks_are_matched() {
    let up = Upstream::start().await;
    let kw = Keyward::start_full(&up.base_url(), |_| {}, Clock::system(), "[::1]:0").await;
    let v6 = kw
        .create_key_with(json!({"policy": {"networks": ["::1/128"]}}))
        .await;
    let v4 = kw
        .create_key_with(json!({"policy": {"networks": ["127.0.0.0/8"]}}))
        .await;
    assert_eq!(
        kw.chat(v6["key"].as_str().unwrap(), mini()).await.status(),
        200
    );
    assert_openai_error(
        kw.chat(v4["key"].as_str().unwrap(), mini()).await,
        403,
        Some("ip_not_allowed"),
    )
    .await;
}

#[tokio::test]
async fn forwarding_headers_count_only_from_trusted_proxies() {
    let up = Upstream::start().await;
    let network = json!({"policy": {"networks": ["203.0.113.0/24"]}});
    // Not trusted: a client cannot claim an address.
    let kw = Keyward::start(&up.base_url()).await;
    let created = kw.create_key_with(network.clone()).await;
    let r = kw
        .http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(created["key"].as_str().unwrap())
        .header("x-forwarded-for", "203.0.113.5")
        .json(&mini())
        .send()
        .await
        .unwrap();
    assert_openai_error(r, 403, Some("ip_not_allowed")).await;
    // Behind a trusted proxy (this test client plays the proxy).
    let kw = Keyward::start_with(&up.base_url(), |c| {
        c.client_ip.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()]
    })
    .await;
    let created = kw.create_key_with(network).await;
    let r = kw
        .http
        .post(format!("{}/v1/chat/completions", kw.url))
        .bearer_auth(created["key"].as_str().unwrap())
        .header("x-forwarded-for", "203.0.113.5")
        .json(&mini())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_period_only() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let created = kw.create_key_with(json!({"policy": {"rpm": 100}})).await;
    let (id, old) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 3600}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let rotated: Value = r.json().await.unwrap();
    let new = rotated["key"].as_str().unwrap();
    assert_eq!(rotated["id"], id, "same key record");
    assert_eq!(rotated["policy"]["rpm"], 100, "same limits");
    assert_ne!(new, old);
    assert_eq!(
        kw.chat(old, mini()).await.status(),
        200,
        "old secret works during the grace period"
    );
    assert_eq!(kw.chat(new, mini()).await.status(), 200);
    clock.advance(3_600_000);
    let msg = assert_openai_error(kw.chat(old, mini()).await, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("rotated"), "{msg}");
    assert_eq!(kw.chat(new, mini()).await.status(), 200);
    assert_eq!(
        kw.usage_of(id).await["requests"],
        3,
        "usage history stays on the same key"
    );
    // Grace 0 ends the old secret at once.
    let r: Value = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": 0}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kw.chat(new, mini()).await.status(), 401);
    assert_eq!(
        kw.chat(r["key"].as_str().unwrap(), mini()).await.status(),
        200
    );
    assert_eq!(
        kw.admin_post(
            &format!("/api/v1/keys/{id}/rotate"),
            json!({"grace_seconds": -1})
        )
        .await
        .status(),
        400
    );
}

#[tokio::test]
async fn expired_keys_say_so_and_old_keys_are_flagged_for_rotation() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let created = kw.create_key_with(json!({"expires_in_seconds": 60})).await;
    let key = created["key"].as_str().unwrap();
    assert_eq!(kw.chat(key, mini()).await.status(), 200);
    let project = created["project_id"].as_str().unwrap();
    kw.admin_put(
        &format!("/api/v1/projects/{project}/policy"),
        json!({"max_key_age_days": 1}),
    )
    .await;
    clock.advance(61_000);
    let msg = assert_openai_error(kw.chat(key, mini()).await, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("expired"), "{msg}");
    let fresh = kw.create_key_with(json!({})).await;
    clock.advance(2 * 86_400_000);
    let listed: Value = kw.admin_get("/api/v1/keys").await.json().await.unwrap();
    let due: Vec<_> = listed["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["rotation_due"] == true)
        .map(|k| k["id"].clone())
        .collect();
    assert_eq!(
        due,
        vec![fresh["id"].clone()],
        "active keys past the project's maximum age are flagged"
    );
}

#[tokio::test]
async fn ephemeral_tokens_expire_cannot_exceed_their_parent_and_die_with_it() {
    let up = Upstream::start().await;
    let clock = Clock::manual(1_800_000_000_000);
    let kw = Keyward::start_full(&up.base_url(), |_| {}, clock.clone(), "127.0.0.1:0").await;
    let parent = kw
        .create_key_with(json!({"policy": {"models": ["gpt-4o*"]}}))
        .await;
    let (pid, pkey) = (
        parent["id"].as_str().unwrap(),
        parent["key"].as_str().unwrap(),
    );

    // Asked for "*" models: the parent's restriction still applies.
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{pid}/ephemeral"),
            json!({"ttl_seconds": 300, "policy": {"models": ["*"]}}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let token: Value = r.json().await.unwrap();
    let t = token["key"].as_str().unwrap();
    assert!(t.starts_with("kwe_") && token["ephemeral"] == true);
    assert_eq!(kw.chat(t, mini()).await.status(), 200);
    assert_openai_error(
        kw.chat(t, json!({"model": "o3", "messages": []})).await,
        403,
        Some("model_not_allowed"),
    )
    .await;

    // The key holder asks for a narrower token itself.
    let r = kw
        .http
        .post(format!("{}/keyward/v1/tokens", kw.url))
        .bearer_auth(pkey)
        .json(&json!({"policy": {"endpoints": "read-only"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let narrow: Value = r.json().await.unwrap();
    let n = narrow["key"].as_str().unwrap();
    assert_openai_error(kw.chat(n, mini()).await, 403, Some("permission_denied")).await;
    let r = kw
        .http
        .post(format!("{}/keyward/v1/tokens", kw.url))
        .bearer_auth(n)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a token cannot mint tokens");
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{pid}/ephemeral"),
            json!({"ttl_seconds": 86_401}),
        )
        .await;
    assert_eq!(r.status(), 400, "at most 24 hours");

    // TTL.
    clock.advance(301_000);
    let msg = assert_openai_error(kw.chat(t, mini()).await, 401, Some("invalid_api_key")).await;
    assert!(msg.contains("expired"), "{msg}");

    // Parent revocation.
    let r: Value = kw
        .admin_post(&format!("/api/v1/keys/{pid}/ephemeral"), json!({}))
        .await
        .json()
        .await
        .unwrap();
    let live = r["key"].as_str().unwrap();
    assert_eq!(kw.chat(live, mini()).await.status(), 200);
    kw.admin_post(&format!("/api/v1/keys/{pid}/revoke"), json!({}))
        .await;
    assert_eq!(
        kw.chat(live, mini()).await.status(),
        401,
        "revoking the parent revokes its tokens"
    );
}

#[tokio::test]
async fn an_ephemeral_token_spends_its_own_budget_and_its_parents() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let parent = kw
        .create_key_with(json!({"budget": {"usd": 0.001, "period": "none"}}))
        .await;
    let pid = parent["id"].as_str().unwrap();
    let token: Value = kw
        .admin_post(
            &format!("/api/v1/keys/{pid}/ephemeral"),
            json!({"budget_usd": 0.00003}),
        )
        .await
        .json()
        .await
        .unwrap();
    let t = token["key"].as_str().unwrap();
    let ask = json!({"model": "gpt-4o-mini-metered", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40});
    assert_eq!(kw.chat(t, ask.clone()).await.status(), 200);
    let msg = assert_openai_error(
        kw.chat(t, ask.clone()).await,
        429,
        Some("insufficient_quota"),
    )
    .await;
    assert!(
        msg.contains(token["id"].as_str().unwrap()),
        "the token's own budget: {msg}"
    );
    let budgets: Value = kw.admin_get("/api/v1/budgets").await.json().await.unwrap();
    assert_eq!(budgets["data"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn malformed_restrictions_are_refused_and_nothing_is_stored() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    for policy in [
        json!({"endpoints": "everything"}),
        json!({"endpoints": "GET v1/models"}),
        json!({"networks": ["10.0.0.0/33"]}),
        json!({"networks": ["not-an-ip"]}),
        json!({"rpm": 0}),
        json!({"allow_ip": ["10.0.0.0/8"]}),
    ] {
        let r = kw
            .admin_post(
                "/api/v1/keys",
                json!({"project": "p", "name": "n", "create_project": true, "policy": policy}),
            )
            .await;
        assert_eq!(r.status(), 400, "{policy}");
    }
    let keys: Value = kw.admin_get("/api/v1/keys").await.json().await.unwrap();
    assert!(keys["data"].as_array().unwrap().is_empty());
    let projects: Value = kw.admin_get("/api/v1/projects").await.json().await.unwrap();
    assert!(
        projects["data"].as_array().unwrap().is_empty(),
        "no project was created for a refused key"
    );
}
