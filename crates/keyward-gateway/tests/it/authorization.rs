//! Every `/api/v1` route, for every role of another organization: nothing of
//! organization A is seen or changed by anyone in organization B. The routes
//! come from the OpenAPI document, so a new route is covered the day it is
//! added.

use crate::accounts::{create_user, Browser, PASSWORD};
use crate::support::{Keyward, Upstream};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Organization A's objects, created with the bootstrap key.
struct OrgA {
    org: String,
    project: String,
    key: String,
    admin_key: String,
    webhook: String,
    recipient: String,
    user: String,
}

async fn post(kw: &Keyward, path: &str, body: Value) -> Value {
    let r = kw.admin_post(path, body).await;
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

async fn org_a(kw: &Keyward) -> OrgA {
    let org = post(kw, "/api/v1/orgs", json!({"name": "org-a"})).await;
    let org_id = org["id"].as_str().unwrap().to_owned();
    let project = post(
        kw,
        "/api/v1/projects",
        json!({"org": org_id, "name": "app-a"}),
    )
    .await;
    let key = post(
        kw,
        "/api/v1/keys",
        json!({"org": org_id, "project": "app-a", "name": "ka"}),
    )
    .await;
    let key_id = key["id"].as_str().unwrap().to_owned();
    let r = kw
        .admin_put(
            "/api/v1/budgets",
            json!({"key": key_id, "usd": 5, "period": "month"}),
        )
        .await;
    assert!(r.status().is_success());
    let admin = post(
        kw,
        "/api/v1/admin-keys",
        json!({"name": "a-admin", "org": org_id}),
    )
    .await;
    let hook = post(
        kw,
        "/api/v1/webhooks",
        json!({"url": "http://127.0.0.1:9/hook", "org": org_id}),
    )
    .await;
    let rcp = post(
        kw,
        "/api/v1/email-recipients",
        json!({"address": "ops@a.example", "org": org_id}),
    )
    .await;
    let user = create_user(kw, "alice@a.example", &org_id, "owner").await;
    OrgA {
        org: org_id,
        project: project["id"].as_str().unwrap().to_owned(),
        key: key_id,
        admin_key: admin["id"].as_str().unwrap().to_owned(),
        webhook: hook["webhook"]["id"]
            .as_str()
            .or(hook["id"].as_str())
            .unwrap()
            .to_owned(),
        recipient: rcp["id"].as_str().unwrap().to_owned(),
        user,
    }
}

impl OrgA {
    fn ids(&self) -> [&str; 7] {
        [
            &self.org,
            &self.project,
            &self.key,
            &self.admin_key,
            &self.webhook,
            &self.recipient,
            &self.user,
        ]
    }

    /// The path with A's object in place of `{id}`, and a query aimed at A.
    fn path(&self, route: &str) -> String {
        let id = if route.starts_with("/api/v1/admin-keys") {
            &self.admin_key
        } else if route.starts_with("/api/v1/webhooks") {
            &self.webhook
        } else if route.starts_with("/api/v1/email-recipients") {
            &self.recipient
        } else if route.starts_with("/api/v1/projects") {
            &self.project
        } else if route.starts_with("/api/v1/users") {
            &self.user
        } else {
            &self.key
        };
        let path = route.replace("{id}", id);
        match route {
            "/api/v1/keys" | "/api/v1/projects" | "/api/v1/users" => {
                format!("{path}?org={}", self.org)
            }
            "/api/v1/usage" => format!("{path}?key={}", self.key),
            "/api/v1/leaks" => format!("{path}?key={}", self.key),
            "/api/v1/audit" => format!("{path}?target={}", self.key),
            _ => path,
        }
    }

    /// A request body that would act on A's objects.
    fn body(&self, method: &Method, route: &str) -> Value {
        let org = &self.org;
        match (method.as_str(), route) {
            ("POST", "/api/v1/keys") => json!({"org": org, "project": "app-a", "name": "x"}),
            ("PUT", "/api/v1/budgets") => json!({"key": self.key, "usd": 1000, "period": "month"}),
            ("DELETE", "/api/v1/budgets") => json!({"key": self.key}),
            ("POST", "/api/v1/projects") => json!({"org": org, "name": "intruder"}),
            ("PUT", "/api/v1/projects/{id}/policy") => json!({"rpm": 1}),
            ("POST", "/api/v1/webhooks") => json!({"url": "http://127.0.0.1:9/x", "org": org}),
            ("POST", "/api/v1/email-recipients") => json!({"address": "x@b.example", "org": org}),
            ("POST", "/api/v1/admin-keys") => json!({"name": "x", "org": org}),
            ("POST", "/api/v1/users") => {
                json!({"email": "mallory@b.example", "org": org, "role": "owner", "password": PASSWORD})
            }
            ("PATCH", "/api/v1/users/{id}") => json!({"role": "viewer", "disabled": true}),
            ("POST", "/api/v1/keys/{id}/clear-leak") => json!({"reason": "mine now"}),
            ("POST", "/api/v1/leaks") => {
                json!({"leaks": [{"token": "kwk_notarealkey", "source": "test"}]})
            }
            ("POST", "/api/v1/orgs") => json!({"name": "another"}),
            _ => json!({}),
        }
    }
}

/// Every (method, route) of the management API, from its OpenAPI document.
async fn routes(kw: &Keyward) -> Vec<(Method, String)> {
    let doc: Value = kw
        .admin_get("/api/v1/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        if !path.starts_with("/api/v1/") || path == "/api/v1/openapi.json" {
            continue;
        }
        for method in item.as_object().unwrap().keys() {
            out.push((method.to_uppercase().parse().unwrap(), path.clone()));
        }
    }
    assert!(
        out.len() >= 30,
        "the document lists the routes: {}",
        out.len()
    );
    out
}

#[tokio::test]
async fn no_role_of_another_organization_sees_or_changes_anything_on_any_route() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    let a = org_a(&kw).await;
    let routes = routes(&kw).await;
    for role in ["owner", "admin", "member", "viewer"] {
        let email = format!("{role}@b.example");
        create_user(&kw, &email, "org-b", role).await;
        let mut b = Browser::new(&kw);
        b.sign_in(&email, PASSWORD).await;
        for (method, route) in &routes {
            let path = a.path(route);
            let body = (*method != Method::GET).then(|| a.body(method, route));
            let (status, _, answer) = b.send(method.clone(), &path, body).await;
            let text = answer.to_string();
            for id in a.ids() {
                assert!(
                    !text.contains(id),
                    "{role} {method} {path} ({status}) showed {id}: {text:.300}"
                );
            }
            if status.is_success() && *method != Method::GET {
                // Reporting a token, or scanning an upload, acts only on what the
                // caller sends (it holds the secret); neither names an object.
                let harmless = matches!(route.as_str(), "/api/v1/leaks" | "/api/v1/scan-uploads");
                assert!(harmless, "{role} {method} {path} succeeded: {text:.300}");
            }
        }
    }
    // Nothing of A changed.
    let store = &kw.state.store;
    let key = store
        .get_key(&keyward_core::KeyId::parse(&a.key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(key.status.as_str(), "active");
    let budgets = store.list_budgets().await.unwrap();
    assert!(budgets
        .iter()
        .any(|b| b.scope.id() == a.key && b.amount_micros.0 == 5_000_000));
    let admin = store
        .get_admin_key(&keyward_core::KeyId::parse(&a.admin_key).unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(admin.status.as_str(), "active");
    assert!(store
        .list_webhooks()
        .await
        .unwrap()
        .iter()
        .any(|w| w.id.as_str() == a.webhook));
    assert!(store
        .list_recipients()
        .await
        .unwrap()
        .iter()
        .any(|r| r.id.as_str() == a.recipient));
    let alice = store
        .user_by_email("alice@a.example")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((alice.role.as_str(), alice.disabled_at), ("owner", None));
    let projects = store
        .list_projects(Some(&keyward_core::OrgId::parse(&a.org).unwrap()))
        .await
        .unwrap();
    assert_eq!(projects.len(), 1, "no project was added to A");
    assert_eq!(projects[0].policy.rpm, None);
}

#[tokio::test]
async fn a_viewer_reads_but_cannot_create_or_revoke_and_a_member_only_in_their_projects() {
    let upstream = Upstream::start().await;
    let kw = Keyward::start(&upstream.base_url()).await;
    create_user(&kw, "owner@b.example", "org-b", "owner").await;
    create_user(&kw, "viewer@b.example", "org-b", "viewer").await;
    let member_id = create_user(&kw, "member@b.example", "org-b", "member").await;
    let mut owner = Browser::new(&kw);
    owner.sign_in("owner@b.example", PASSWORD).await;
    let (s, key) = owner
        .post(
            "/api/v1/keys",
            json!({"project": "app", "name": "k", "create_project": true}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{key}");
    let key_id = key["id"].as_str().unwrap().to_owned();

    let mut viewer = Browser::new(&kw);
    viewer.sign_in("viewer@b.example", PASSWORD).await;
    let (s, list) = viewer.get("/api/v1/keys").await;
    assert_eq!(s, StatusCode::OK);
    assert!(list.to_string().contains(&key_id));
    let (s, v) = viewer
        .post(&format!("/api/v1/keys/{key_id}/revoke"), json!({}))
        .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let (s, _) = viewer
        .post("/api/v1/keys", json!({"project": "app", "name": "v"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);

    let mut member = Browser::new(&kw);
    member.sign_in("member@b.example", PASSWORD).await;
    let (s, _) = member
        .post(&format!("/api/v1/keys/{key_id}/revoke"), json!({}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not a member of the project");
    let project = keyward_core::ProjectId::parse(key["project_id"].as_str().unwrap()).unwrap();
    let member_id = keyward_core::UserId::parse(&member_id).unwrap();
    kw.state
        .store
        .add_project_member(&project, &member_id)
        .await
        .unwrap();
    let (s, v) = member
        .post(&format!("/api/v1/keys/{key_id}/revoke"), json!({}))
        .await;
    assert_eq!((s, v["status"].as_str()), (StatusCode::OK, Some("revoked")));
}
