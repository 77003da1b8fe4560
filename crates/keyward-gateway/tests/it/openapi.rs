//! The OpenAPI document served at `GET /api/v1/openapi.json` against the routes
//! the server really answers: every documented operation reaches its handler (an
//! unauthenticated call is refused by the handler's admin check with a 401, not
//! by the router with a 404 or 405). The other direction — no route registered
//! without a document entry — holds because management routes are registered
//! only through `utoipa_axum::routes!` (checked in keyward's tidy test).

use crate::support::*;
use serde_json::Value;

#[tokio::test]
async fn every_documented_operation_is_a_registered_route() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let r = kw
        .http
        .get(format!("{}/api/v1/openapi.json", kw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    let doc: Value = r.json().await.unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = Vec::new();
    for (path, item) in paths {
        for method in ["get", "put", "post", "delete", "patch"] {
            if item.get(method).is_some() {
                operations.push((method, path.clone()));
            }
        }
    }
    // The routes docs/api.md lists, at least: a document that lost some would
    // pass the loop below vacuously.
    for expected in [
        ("get", "/api/v1/orgs"),
        ("post", "/api/v1/keys"),
        ("put", "/api/v1/budgets"),
        ("delete", "/api/v1/budgets"),
        ("post", "/api/v1/keys/{id}/clear-leak"),
        ("post", "/api/v1/scan-uploads"),
        ("post", "/keyward/v1/tokens"),
        ("delete", "/api/v1/email-recipients/{id}"),
        ("get", "/api/v1/openapi.json"),
        ("get", "/api/v1/audit/verify"),
    ] {
        assert!(
            operations.iter().any(|(m, p)| (*m, p.as_str()) == expected),
            "{expected:?} is not documented"
        );
    }
    assert_eq!(operations.len(), 40, "{operations:?}");
    for (method, path) in &operations {
        if path.contains("{id}") {
            let params = &paths[path.as_str()][*method]["parameters"];
            assert_eq!(params[0]["name"], "id", "{method} {path}: {params}");
            assert_eq!(params[0]["in"], "path", "{method} {path}: {params}");
        }
        let url = format!("{}{}", kw.url, path.replace("{id}", "x"));
        let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
        let r = kw.http.request(method.clone(), url).send().await.unwrap();
        let expected = if path == "/api/v1/openapi.json" {
            200
        } else {
            401
        };
        assert_eq!(
            r.status().as_u16(),
            expected,
            "{method} {path}: {}",
            r.text().await.unwrap()
        );
    }
}
