//! The management API: first start, keys, projects, audit.

use crate::support::*;
use serde_json::{json, Value};

#[tokio::test]
async fn first_start_writes_a_private_admin_key_once() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let path = kw.data_dir().join("initial-admin-key");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert!(kw.admin_key.starts_with("kwa_"));
    assert!(keyward_core::KeyFormat::default()
        .parse(&kw.admin_key)
        .is_ok());
    // A second bootstrap on the same store issues no new key.
    let again = keyward_gateway::bootstrap::bootstrap(
        &kw.state.store,
        kw.data_dir(),
        &Default::default(),
        &Default::default(),
    )
    .await
    .unwrap();
    assert!(again.written.is_none());
    assert_eq!(kw.state.store.count_admin_keys().await.unwrap(), 1);
}

#[tokio::test]
async fn keys_are_created_listed_revoked_deleted_and_audited() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let r = kw.admin_post("/api/v1/keys", json!({"project": "web", "name": "frontend", "tags": ["team:web"], "create_project": true})).await;
    assert_eq!(r.status(), 201);
    let created: Value = r.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["key"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("kwk_") && secret.len() == 42);
    assert_eq!(created["status"], "active");
    assert_eq!(created["tags"], json!(["team:web"]));
    assert!(created["hint"]
        .as_str()
        .unwrap()
        .ends_with(&secret[secret.len() - 4..]));

    // The secret is shown once: never in get or list.
    let got = kw
        .admin_get(&format!("/api/v1/keys/{id}"))
        .await
        .text()
        .await
        .unwrap();
    let listed = kw
        .admin_get("/api/v1/keys?project=web")
        .await
        .text()
        .await
        .unwrap();
    assert!(!got.contains(&secret) && !listed.contains(&secret));
    let listed: Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    // Only its SHA-256 is stored.
    let hash = keyward_core::KeyHash::of(&secret);
    assert_eq!(
        kw.state
            .store
            .key_by_hash(&hash)
            .await
            .unwrap()
            .unwrap()
            .id
            .as_str(),
        id
    );

    let projects: Value = kw.admin_get("/api/v1/projects").await.json().await.unwrap();
    assert_eq!(projects["data"][0]["name"], "web");

    assert_eq!(
        kw.admin_post(&format!("/api/v1/keys/{id}/revoke"), json!({}))
            .await
            .status(),
        200
    );
    let r = kw
        .http
        .delete(format!("{}/api/v1/keys/{id}", kw.url))
        .bearer_auth(&kw.admin_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    assert_eq!(
        kw.admin_get(&format!("/api/v1/keys/{id}")).await.status(),
        404
    );

    let audit: Value = kw
        .admin_get(&format!("/api/v1/audit?target={id}"))
        .await
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.deleted", "key.revoked", "key.created"]);
    assert!(!audit.to_string().contains(&secret));
}

#[tokio::test]
async fn orgs_and_projects() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    assert_eq!(
        kw.admin_post("/api/v1/orgs", json!({"name": "acme"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        kw.admin_post("/api/v1/orgs", json!({"name": "acme"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        kw.admin_post("/api/v1/projects", json!({"name": "p", "org": "acme"}))
            .await
            .status(),
        201
    );
    assert_eq!(
        kw.admin_post("/api/v1/projects", json!({"name": "p", "org": "acme"}))
            .await
            .status(),
        409
    );
    assert_eq!(
        kw.admin_post("/api/v1/projects", json!({"name": "p"}))
            .await
            .status(),
        201,
        "same name in another org"
    );
    assert_eq!(
        kw.admin_post("/api/v1/projects", json!({"name": " bad"}))
            .await
            .status(),
        400
    );
    let orgs: Value = kw.admin_get("/api/v1/orgs").await.json().await.unwrap();
    assert_eq!(orgs["data"].as_array().unwrap().len(), 2);
    let acme: Value = kw
        .admin_get("/api/v1/projects?org=acme")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(acme["data"].as_array().unwrap().len(), 1);
}
