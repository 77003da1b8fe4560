//! Leak intake: GitHub's signed partner requests, the admin report endpoint, and
//! what a confirmed leak does (refused at once, audited, recorded, clearable).

use crate::support::{Keyward, Upstream};
use base64::Engine;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::pkcs8::{EncodePublicKey, LineEnding};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

pub struct GithubSigner {
    pub key_id: String,
    key: SigningKey,
}

impl GithubSigner {
    pub fn new(key_id: &str) -> Self {
        let seed = Sha256::digest(keyward_core::base62::random(32).as_bytes());
        Self {
            key_id: key_id.into(),
            key: SigningKey::from_slice(&seed).unwrap(),
        }
    }

    /// GitHub's public-keys document with this key.
    pub fn document(&self) -> String {
        let pem = self
            .key
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        json!({"public_keys": [{"key_identifier": self.key_id, "key": pem, "is_current": true}]})
            .to_string()
    }

    pub fn sign(&self, body: &[u8]) -> String {
        let sig: Signature = self.key.sign(body);
        base64::engine::general_purpose::STANDARD.encode(sig.to_der().as_bytes())
    }
}

pub async fn start_with_github(signer: &GithubSigner) -> (Upstream, Keyward) {
    let upstream = Upstream::start().await;
    let doc = signer.document();
    let kw = Keyward::start_with(&upstream.base_url(), |c| {
        c.leaks.github_keys = keyward_gateway::github::parse_document(&doc).unwrap();
    })
    .await;
    (upstream, kw)
}

pub async fn post_github(
    kw: &Keyward,
    key_id: &str,
    signature: &str,
    body: &[u8],
) -> reqwest::Response {
    kw.http
        .post(format!("{}/leaks/github", kw.url))
        .header("content-type", "application/json")
        .header("Github-Public-Key-Identifier", key_id)
        .header("Github-Public-Key-Signature", signature)
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub async fn key_status(kw: &Keyward, id: &str) -> String {
    let v: Value = kw
        .admin_get(&format!("/api/v1/keys/{id}"))
        .await
        .json()
        .await
        .unwrap();
    v["status"].as_str().unwrap().to_owned()
}

async fn audit_actions(kw: &Keyward, target: &str) -> Vec<String> {
    let v: Value = kw
        .admin_get(&format!("/api/v1/audit?target={target}&limit=100"))
        .await
        .json()
        .await
        .unwrap();
    v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

fn chat_body() -> Value {
    json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
}

#[tokio::test]
async fn a_signed_github_report_disables_the_key_at_once_and_is_audited() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = start_with_github(&signer).await;
    let (id, secret) = kw.create_key("app", "leaky").await;
    assert_eq!(
        kw.chat(&secret, chat_body()).await.status(),
        200,
        "warms the key cache"
    );
    let url = "https://github.com/octo/app/blob/abc/config.js";
    let body = serde_json::to_vec(
        &json!([{"token": secret, "type": "keyward_api_key", "url": url, "source": "content"}]),
    )
    .unwrap();
    let r = post_github(&kw, &signer.key_id, &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    let feedback: Value = r.json().await.unwrap();
    assert_eq!(
        feedback,
        json!([{"token_hash": sha256_hex(&secret), "token_type": "keyward_api_key", "label": "true_positive"}])
    );
    // Refused on the very next request, though the key was cached.
    let r = kw.chat(&secret, chat_body()).await;
    assert_eq!(r.status(), 401);
    let text = r.text().await.unwrap();
    assert!(text.contains("found exposed"), "{text}");
    assert!(!text.contains(&secret));
    assert_eq!(key_status(&kw, &id).await, "leaked");
    let audit: Value = kw
        .admin_get(&format!("/api/v1/audit?target={id}"))
        .await
        .json()
        .await
        .unwrap();
    let leaked = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.leaked")
        .unwrap()
        .clone();
    assert_eq!(
        (
            leaked["actor"].as_str(),
            leaked["detail"]["source"].as_str(),
            leaked["detail"]["url"].as_str()
        ),
        (Some("github"), Some("github"), Some(url))
    );
    assert!(leaked["at"].as_i64().unwrap() > 0);
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"][0]["url"], url);
    assert_eq!(reports["data"][0]["outcome"], "disabled");

    // Replay: GitHub signs only the body, so the same request can be sent again.
    // It is answered identically and changes nothing: no second audit event, no
    // second report, the key stays leaked.
    let r = post_github(&kw, &signer.key_id, &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), feedback);
    let actions = audit_actions(&kw, &id).await;
    assert_eq!(actions.iter().filter(|a| *a == "key.leaked").count(), 1);
    assert_eq!(
        actions.iter().filter(|a| *a == "key.leak_reported").count(),
        0
    );
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"].as_array().unwrap().len(), 1);
    assert_eq!(key_status(&kw, &id).await, "leaked");

    // A leaked key is never re-enabled by revoking or by anything implicit; an
    // admin clears a false report explicitly, with a reason, and it is audited.
    let r = kw
        .admin_post(&format!("/api/v1/keys/{id}/clear-leak"), json!({}))
        .await;
    assert_eq!(r.status(), 400, "a reason is required");
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/clear-leak"),
            json!({"reason": "test fixture, not a real leak"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(key_status(&kw, &id).await, "active");
    assert_eq!(kw.chat(&secret, chat_body()).await.status(), 200);
    assert!(audit_actions(&kw, &id)
        .await
        .contains(&"key.leak_cleared".to_owned()));
    let r = kw
        .admin_post(
            &format!("/api/v1/keys/{id}/clear-leak"),
            json!({"reason": "again"}),
        )
        .await;
    assert_eq!(r.status(), 409, "only a leaked key can be cleared");
}

#[tokio::test]
async fn badly_signed_github_requests_are_refused_change_nothing_and_are_audited() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = start_with_github(&signer).await;
    let (id, secret) = kw.create_key("app", "k").await;
    let value = json!([{"token": secret, "type": "keyward_api_key", "url": "https://x", "source": "content"}]);
    let body = serde_json::to_vec(&value).unwrap();
    let good = signer.sign(&body);
    let other = GithubSigner::new("kid-1");
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("wrong key id", good.clone(), body.clone()),
        ("signed by another key", other.sign(&body), body.clone()),
        ("re-serialized body", good.clone(), pretty),
        (
            "truncated signature",
            good[..good.len() - 8].to_owned(),
            body.clone(),
        ),
        ("not base64", "%%%".into(), body.clone()),
    ];
    for (what, sig, b) in cases {
        let key_id = if what == "wrong key id" {
            "kid-2"
        } else {
            "kid-1"
        };
        let r = post_github(&kw, key_id, &sig, &b).await;
        assert_eq!(r.status(), 401, "{what}");
    }
    let r = kw
        .http
        .post(format!("{}/leaks/github", kw.url))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "unsigned");
    assert_eq!(key_status(&kw, &id).await, "active");
    assert_eq!(kw.chat(&secret, chat_body()).await.status(), 200);
    // Refusals are counted, and folded into one audit event a minute.
    let rejected = audit_actions(&kw, "leaks/github").await;
    assert_eq!(
        rejected
            .iter()
            .filter(|a| *a == "leak_intake.rejected")
            .count(),
        1
    );
    assert_eq!(kw.state.metrics.leak_rejections_total(), 6);
}

#[tokio::test]
async fn a_batch_of_5000_mixed_matches_is_answered_correctly() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = start_with_github(&signer).await;
    let mut expected: HashMap<String, &str> = HashMap::new();
    let mut matches = Vec::new();
    let mut live_ids = Vec::new();
    for i in 0..20 {
        let (id, secret) = kw.create_key("app", &format!("live{i}")).await;
        live_ids.push(id);
        expected.insert(sha256_hex(&secret), "true_positive");
        matches.push(json!({"token": secret, "type": "keyward_api_key", "url": format!("https://github.com/o/r/blob/1/f{i}"), "source": "content"}));
    }
    let mut revoked_ids = Vec::new();
    for i in 0..20 {
        let (id, secret) = kw.create_key("app", &format!("revoked{i}")).await;
        assert_eq!(
            kw.admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
                .await
                .status(),
            200
        );
        revoked_ids.push(id);
        expected.insert(sha256_hex(&secret), "false_positive");
        matches.push(json!({"token": secret, "type": "keyward_api_key", "url": "https://github.com/o/r", "source": "content"}));
    }
    let format = keyward_core::KeyFormat::default();
    for i in 0..4_960 {
        let token = match i % 4 {
            // Well-formed keyward keys that do not exist.
            0 => format
                .generate(keyward_core::KeyKind::Standard)
                .expose()
                .to_owned(),
            // Bad checksum.
            1 => format!("kwk_{}", "A".repeat(38)),
            // Other providers.
            2 => format!("ghp_{:036}", i),
            _ => format!("sk-proj-{i:040}"),
        };
        expected.insert(sha256_hex(&token), "false_positive");
        matches.push(json!({"token": token, "type": "other", "url": "https://github.com/o/r", "source": "content"}));
    }
    assert_eq!(matches.len(), 5_000);
    let body = serde_json::to_vec(&Value::Array(matches)).unwrap();
    let r = post_github(&kw, &signer.key_id, &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    let feedback: Vec<Value> = r.json().await.unwrap();
    assert_eq!(feedback.len(), 5_000);
    for f in &feedback {
        let hash = f["token_hash"].as_str().unwrap();
        assert_eq!(
            Some(f["label"].as_str().unwrap()),
            expected.get(hash).copied(),
            "{f}"
        );
    }
    for id in &live_ids {
        assert_eq!(key_status(&kw, id).await, "leaked");
    }
    for id in &revoked_ids {
        assert_eq!(
            key_status(&kw, id).await,
            "revoked",
            "a revoked key stays revoked"
        );
    }
}

#[tokio::test]
async fn bad_input_to_the_github_endpoint() {
    let signer = GithubSigner::new("kid-1");
    let (_up, kw) = start_with_github(&signer).await;
    let (id, secret) = kw.create_key("app", "k").await;
    // Signed but not JSON, or not an array.
    for body in [&b"not json"[..], b"{\"token\": 1}"] {
        let r = post_github(&kw, "kid-1", &signer.sign(body), body).await;
        assert_eq!(r.status(), 400);
    }
    // Larger than the endpoint's cap: refused before the body is read, so a
    // client still sending may see the connection cut rather than the 413
    // (security_server::an_oversized_github_report_is_refused_without_reading_it
    // reads the 413 from a socket).
    let huge = vec![b' '; kw.state.config.max_body_bytes + 1];
    let r = kw
        .http
        .post(format!("{}/leaks/github", kw.url))
        .header("Github-Public-Key-Identifier", "kid-1")
        .header("Github-Public-Key-Signature", signer.sign(&huge))
        .body(huge)
        .send()
        .await;
    assert!(r.map_or(true, |r| r.status() == 413));
    // The two malformed bodies above, and this one.
    assert_eq!(kw.state.metrics.leak_rejections_total(), 3);
    // Other providers' tokens, and a near-miss of ours: false positives, nothing changes.
    // The last character changed to another one, whatever it was.
    let last = if secret.ends_with('x') { 'y' } else { 'x' };
    let near_miss = format!("{}{last}", &secret[..secret.len() - 1]);
    let body = serde_json::to_vec(&json!([
        {"token": "ghp_0123456789abcdefghijABCDEFGHIJ012345", "type": "github_pat", "url": "u", "source": "content"},
        {"token": near_miss, "type": "keyward_api_key", "url": "u", "source": "content"},
        {"type": "no token at all"}
    ]))
    .unwrap();
    let r = post_github(&kw, "kid-1", &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    let feedback: Vec<Value> = r.json().await.unwrap();
    assert_eq!(feedback.len(), 3);
    assert!(feedback.iter().all(|f| f["label"] == "false_positive"));
    assert_eq!(key_status(&kw, &id).await, "active");
    let reports: Value = kw.admin_get("/api/v1/leaks").await.json().await.unwrap();
    assert_eq!(reports["data"], json!([]));
}

#[tokio::test]
async fn github_keys_are_fetched_from_the_configured_url_when_unknown() {
    let signer = GithubSigner::new("kid-remote");
    let doc = signer.document();
    let app = axum::Router::new().route("/keys", axum::routing::get(move || async move { doc }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let keys_url = format!("http://{}/keys", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let upstream = Upstream::start().await;
    let kw = Keyward::start_with(&upstream.base_url(), |c| {
        c.leaks.github_keys_url = Some(keys_url)
    })
    .await;
    let (id, secret) = kw.create_key("app", "k").await;
    let body = serde_json::to_vec(
        &json!([{"token": secret, "type": "t", "url": "u", "source": "content"}]),
    )
    .unwrap();
    let r = post_github(&kw, "kid-remote", &signer.sign(&body), &body).await;
    assert_eq!(r.status(), 200);
    assert_eq!(key_status(&kw, &id).await, "leaked");
}

#[tokio::test]
async fn the_report_endpoint_takes_hashes_or_tokens_and_says_what_it_did() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    let (live_id, live) = kw.create_key("app", "live").await;
    let (rev_id, revoked) = kw.create_key("app", "old").await;
    kw.admin_post(&format!("/api/v1/keys/{rev_id}/revoke"), json!({}))
        .await;
    let unknown = keyward_core::KeyFormat::default().generate(keyward_core::KeyKind::Standard);
    let body = json!({"leaks": [
        {"token_hash": sha256_hex(&live), "url": "file:///src/app.py", "location": "src/app.py:3", "source": "scan"},
        {"token": revoked, "location": "b.py:1"},
        {"token": unknown.expose()},
        {"token": "sk-not-ours"},
    ]});
    let r = kw
        .http
        .post(format!("{}/api/v1/leaks", kw.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "an admin key is required");
    assert_eq!(key_status(&kw, &live_id).await, "active");
    let r = kw.admin_post("/api/v1/leaks", body).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let results: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["disabled", "inactive", "unknown", "not_keyward"]);
    assert_eq!(v["data"][0]["key_id"], live_id);
    assert!(!v.to_string().contains(&live) && !v.to_string().contains(&revoked));
    assert_eq!(kw.chat(&live, chat_body()).await.status(), 401);
    let reports: Value = kw
        .admin_get(&format!("/api/v1/leaks?key={live_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(reports["data"][0]["location"], "src/app.py:3");
    assert_eq!(reports["data"][0]["source"], "scan");
    let r = kw
        .admin_post("/api/v1/leaks", json!({"leaks": [{"token_hash": "zz"}]}))
        .await;
    assert_eq!(r.status(), 400);
    let r = kw.admin_post("/api/v1/leaks", json!({"leaks": [{}]})).await;
    assert_eq!(r.status(), 400);
}
