//! `GET /api/v1/audit` and `GET /api/v1/audit/verify` against the caller
//! (issue 18, item 10): an organization reads its own chain only, a member or
//! viewer only their own activity, and only a deployment-wide caller may
//! verify every chain.

use crate::accounts::{create_user, Browser, PASSWORD};
use crate::support::*;
use keyward_core::OrgId;
use keyward_store::NewAuditEvent;
use serde_json::{json, Value};

/// Creates an organization and an admin key scoped to it: (org id, secret).
async fn scoped_admin(kw: &Keyward, name: &str) -> (String, String) {
    let r = kw.admin_post("/api/v1/orgs", json!({"name": name})).await;
    assert!(r.status().is_success(), "{}", r.status());
    let org: Value = r.json().await.unwrap();
    let org = org["id"].as_str().unwrap().to_owned();
    let r = kw
        .admin_post(
            "/api/v1/admin-keys",
            json!({"name": format!("{name}-admin"), "org": org}),
        )
        .await;
    assert!(r.status().is_success(), "{}", r.status());
    let admin: Value = r.json().await.unwrap();
    (org, admin["key"].as_str().unwrap().to_owned())
}

async fn get_as(kw: &Keyward, secret: &str, path: &str) -> (u16, Value) {
    let r = kw
        .http
        .get(format!("{}{path}", kw.url))
        .bearer_auth(secret)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn an_organization_admin_key_cannot_read_another_organizations_audit_chain_or_verify() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (acme, acme_key) = scoped_admin(&kw, "acme").await;
    let (globex, _) = scoped_admin(&kw, "globex").await;
    for (org, action) in [(&acme, "key.created"), (&globex, "key.revoked")] {
        let event = NewAuditEvent {
            at: 1_000,
            actor: "usr_x".into(),
            action: action.into(),
            target: format!("key_of_{org}"),
            org_id: Some(OrgId::parse(org).unwrap()),
            ..Default::default()
        };
        kw.state.store.append_audit(&event).await.unwrap();
    }

    // Asking for globex's events (or none in particular) still answers acme's.
    for query in ["", "?org=GLOBEX", "?action=key.revoked"] {
        let path = format!("/api/v1/audit{}", query.replace("GLOBEX", &globex));
        let (status, answer) = get_as(&kw, &acme_key, &path).await;
        assert_eq!(status, 200, "{answer}");
        let text = answer.to_string();
        assert!(!text.contains(&globex), "{path} showed globex: {text}");
        assert!(answer["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["org_id"] == acme.as_str()));
    }
    let (_, mine) = get_as(&kw, &acme_key, "/api/v1/audit?action=key.created").await;
    assert_eq!(mine["data"][0]["action"], "key.created", "{mine}");
    assert_eq!(mine["data"][0]["hash"].as_str().map(str::len), Some(64));

    // Verifying reads every organization's chain: deployment-wide callers only.
    let (status, answer) = get_as(&kw, &acme_key, "/api/v1/audit/verify").await;
    assert_eq!(status, 403, "{answer}");
    let r = kw.admin_get("/api/v1/audit/verify").await;
    assert_eq!(r.status(), 200);
    let verdict: Value = r.json().await.unwrap();
    assert_eq!(verdict["ok"], true, "{verdict}");
    assert!(verdict["events"].as_u64().unwrap() >= 2, "{verdict}");
    // The bootstrap key filters by organization, by id or name, when it asks to.
    for org in [globex.as_str(), "globex"] {
        let r = kw
            .admin_get(&format!("/api/v1/audit?org={org}&actor=usr_x"))
            .await;
        let theirs: Value = r.json().await.unwrap();
        assert_eq!(theirs["data"].as_array().unwrap().len(), 1, "{theirs}");
        assert_eq!(theirs["data"][0]["action"], "key.revoked");
    }
    let r = kw.admin_get("/api/v1/audit?org=nobody").await;
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn a_viewer_cannot_read_the_activity_of_others_in_their_organization() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (acme, acme_key) = scoped_admin(&kw, "acme").await;
    let viewer = create_user(&kw, "viewer@acme.example", &acme, "viewer").await;
    for actor in [viewer.as_str(), "usr_someone_else"] {
        let event = NewAuditEvent {
            at: 1_000,
            actor: actor.into(),
            // An action no handler records, so that sign-ins do not count.
            action: "probe.recorded".into(),
            target: actor.into(),
            org_id: Some(OrgId::parse(&acme).unwrap()),
            ..Default::default()
        };
        kw.state.store.append_audit(&event).await.unwrap();
    }
    let mut browser = Browser::new(&kw);
    browser.sign_in("viewer@acme.example", PASSWORD).await;
    for path in [
        "/api/v1/audit".to_owned(),
        "/api/v1/audit?actor=usr_someone_else".to_owned(),
        "/api/v1/audit?target=usr_someone_else".to_owned(),
    ] {
        let (status, answer) = browser.get(&path).await;
        assert_eq!(status, 200, "{path}: {answer}");
        let events = answer["data"].as_array().unwrap();
        assert!(
            events.iter().all(|e| e["actor"] == viewer.as_str()),
            "{path}: {answer}"
        );
        assert!(
            !answer.to_string().contains("usr_someone_else"),
            "{path}: {answer}"
        );
    }
    let (_, own) = browser.get("/api/v1/audit?action=probe.").await;
    assert!(
        own["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["target"] == viewer.as_str()),
        "the viewer sees their own: {own}"
    );
    // The organization's admin sees both.
    let (_, all) = get_as(&kw, &acme_key, "/api/v1/audit?action=probe.").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 2, "{all}");
}

#[tokio::test]
async fn what_the_bootstrap_key_does_to_an_organizations_objects_is_in_that_organizations_chain() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (acme, acme_key) = scoped_admin(&kw, "acme").await;
    let (_, globex_key) = scoped_admin(&kw, "globex").await;
    let r = kw
        .admin_put(
            "/api/v1/budgets",
            json!({"org": "acme", "usd": 5.0, "period": "month"}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let r = kw
        .admin_post(
            "/api/v1/webhooks",
            json!({"url": "http://127.0.0.1:9/hook", "org": acme}),
        )
        .await;
    assert_eq!(r.status(), 201);
    let (_, theirs) = get_as(&kw, &acme_key, "/api/v1/audit").await;
    let events = theirs["data"].as_array().unwrap();
    for action in ["budget.set", "webhook.created", "admin_key.created"] {
        let event = events
            .iter()
            .find(|e| e["action"] == action)
            .unwrap_or_else(|| panic!("acme's admins see {action}: {theirs}"));
        assert_eq!(event["org_id"], acme.as_str());
        assert_eq!(event["ip"], "127.0.0.1", "the source is recorded: {event}");
    }
    let (_, others) = get_as(&kw, &globex_key, "/api/v1/audit").await;
    let text = others.to_string();
    assert!(
        !text.contains("budget.set") && !text.contains("webhook.created"),
        "{text}"
    );
}

/// `until` is exclusive by time, so paging by time skips the rest of a
/// millisecond that a page ends in; `before` (the last id of the page) is a
/// cursor in the log's own order and returns every event exactly once.
#[tokio::test]
async fn paging_with_before_returns_every_event_of_one_millisecond_exactly_once() {
    let up = Upstream::start().await;
    let kw = Keyward::start(&up.base_url()).await;
    let (acme, acme_key) = scoped_admin(&kw, "acme").await;
    let mut written = Vec::new();
    for n in 0..7 {
        // Seven events in one millisecond, two older ones around them.
        let at = match n {
            0 => 4_000,
            6 => 6_000,
            _ => 5_000,
        };
        let event = NewAuditEvent {
            at,
            actor: "system".into(),
            action: "probe.paged".into(),
            target: format!("t{n}"),
            org_id: Some(OrgId::parse(&acme).unwrap()),
            ..Default::default()
        };
        kw.state.store.append_audit(&event).await.unwrap();
        written.push(format!("t{n}"));
    }
    let mut seen: Vec<String> = Vec::new();
    let mut before: Option<String> = None;
    for _ in 0..10 {
        let mut path = "/api/v1/audit?action=probe.paged&limit=2".to_owned();
        if let Some(id) = &before {
            path.push_str(&format!("&before={id}"));
        }
        let (status, page) = get_as(&kw, &acme_key, &path).await;
        assert_eq!(status, 200, "{page}");
        let events = page["data"].as_array().unwrap();
        if events.is_empty() {
            break;
        }
        seen.extend(
            events
                .iter()
                .map(|e| e["target"].as_str().unwrap().to_owned()),
        );
        before = Some(events.last().unwrap()["id"].as_str().unwrap().to_owned());
    }
    // Newest first: the latest at 6,000, the five of 5,000 in reverse order
    // of writing, then the one at 4,000.
    written.reverse();
    assert_eq!(seen, written);

    // Paging by time instead loses events: the point of the cursor.
    let (_, first) = get_as(&kw, &acme_key, "/api/v1/audit?action=probe.paged&limit=2").await;
    let until = first["data"][1]["at"].as_i64().unwrap();
    let (_, next) = get_as(
        &kw,
        &acme_key,
        &format!("/api/v1/audit?action=probe.paged&limit=10&until={until}"),
    )
    .await;
    assert!(next["data"].as_array().unwrap().len() < 5, "{next}");

    for bad in ["nonsense", "key_abc", "aud_", "aud_not%20base62"] {
        let (status, answer) = get_as(&kw, &acme_key, &format!("/api/v1/audit?before={bad}")).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains("audit event id"),
            "{answer}"
        );
    }
}
