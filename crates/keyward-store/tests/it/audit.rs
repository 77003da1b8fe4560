//! The audit log.

use keyward_store::{NewAuditEvent, SharedStore};
use serde_json::json;

store_tests!(audit_is_newest_first_and_filtered_by_target);

fn audit(at: i64, action: &str, target: &str, detail: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        at,
        actor: "key_admin".into(),
        action: action.into(),
        target: target.into(),
        detail,
        org_id: None,
        ip: None,
        user_agent: None,
    }
}

async fn audit_is_newest_first_and_filtered_by_target(store: SharedStore) {
    let detail = json!({"name": "ci ✓", "tags": ["team:a", "x"], "limits": {"rpm": 60, "usd": 1.5}, "none": null});
    let mut appended = Vec::new();
    for (at, action, target, detail) in [
        (1_000, "key.created", "key_a", detail.clone()),
        (3_000, "key.created", "key_b", json!({})),
        (2_000, "key.revoked", "key_a", json!("reason")),
        (3_000, "key.deleted", "key_a", json!([1, 2, 3])),
    ] {
        let event = audit(at, action, target, detail);
        let stored = store.append_audit(&event).await.unwrap();
        assert!(stored.id.as_str().starts_with("aud_"));
        assert_eq!(
            (stored.at, &stored.action, &stored.target, &stored.detail),
            (at, &event.action, &event.target, &event.detail)
        );
        appended.push(stored);
    }
    let ids = |events: Vec<keyward_store::AuditEvent>| {
        events.into_iter().map(|e| e.id).collect::<Vec<_>>()
    };

    let all = store.list_audit(None, 10).await.unwrap();
    assert_eq!(
        all[3], appended[0],
        "stored events read back unchanged, JSON detail included"
    );
    // Newest first; equal times in reverse order of appending.
    let order = [3, 1, 2, 0].map(|i| appended[i].id.clone());
    assert_eq!(ids(all), order);
    assert_eq!(ids(store.list_audit(None, 2).await.unwrap()), order[..2]);
    assert_eq!(
        ids(store.list_audit(Some("key_a"), 10).await.unwrap()),
        [3, 2, 0].map(|i| appended[i].id.clone())
    );
    assert_eq!(
        ids(store.list_audit(Some("key_a"), 1).await.unwrap()),
        [appended[3].id.clone()]
    );
    assert_eq!(
        ids(store.list_audit(Some("key_b"), 10).await.unwrap()),
        [appended[1].id.clone()]
    );
    assert_eq!(store.list_audit(Some("key_c"), 10).await.unwrap(), vec![]);
    assert_eq!(store.list_audit(None, 0).await.unwrap(), vec![]);
}

// The hash chain. Each test gets the store and a raw connection to its
// database, to tamper with it behind the store's back as an attacker with
// database access would.

use crate::support::{drop_schema, fresh_schema, postgres_url};
use keyward_core::OrgId;
use keyward_store::postgres::PgStore;
use keyward_store::sqlite::SqliteStore;
use keyward_store::AuditFilter;
use sqlx::Connection;
use std::future::Future;
use std::sync::Arc;

/// A raw connection to the database under a store.
enum Raw {
    Sqlite(std::path::PathBuf),
    Postgres { url: String, schema: String },
}

impl Raw {
    /// Runs `sql` directly on the database; the number of rows it changed.
    async fn exec(&self, sql: &str) -> u64 {
        match self {
            Raw::Sqlite(path) => {
                let mut conn =
                    sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
                        .await
                        .unwrap();
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
            Raw::Postgres { url, schema } => {
                let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
                sqlx::query(&format!("SET search_path TO {schema}"))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                sqlx::query(sql)
                    .execute(&mut conn)
                    .await
                    .unwrap()
                    .rows_affected()
            }
        }
    }
}

impl Raw {
    /// The same database opened again, as a restarted server would.
    async fn reopen(&self) -> SharedStore {
        match self {
            Raw::Sqlite(path) => Arc::new(SqliteStore::open(path).await.unwrap()),
            Raw::Postgres { url, schema } => {
                Arc::new(PgStore::connect_with_schema(url, schema).await.unwrap())
            }
        }
    }
}

macro_rules! chain_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::with_raw_sqlite(super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::with_raw_postgres(super::$name).await;
            }
        }
    )*};
}

async fn with_raw_sqlite<F, Fut>(body: F)
where
    F: FnOnce(SharedStore, Raw) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let store = SqliteStore::open(&path).await.unwrap();
    body(Arc::new(store.clone()), Raw::Sqlite(path)).await;
    store.close().await;
}

async fn with_raw_postgres<F, Fut>(body: F)
where
    F: FnOnce(SharedStore, Raw) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let store = PgStore::connect_with_schema(&url, &schema).await.unwrap();
    let raw = Raw::Postgres {
        url: url.clone(),
        schema: schema.clone(),
    };
    let outcome = tokio::spawn(body(Arc::new(store.clone()), raw)).await;
    store.close().await;
    drop_schema(&url, &schema).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

chain_tests!(
    an_untouched_log_verifies,
    editing_a_stored_event_is_detected,
    editing_a_stored_event_and_its_hash_is_detected,
    deleting_an_event_in_the_middle_is_detected,
    deleting_the_last_event_is_detected,
    reordering_two_events_is_detected,
    moving_an_event_to_another_organization_is_detected,
    inserting_an_event_without_a_hash_is_detected,
    events_from_before_the_chain_are_chained_once_at_open,
    deleting_a_chain_head_is_detected,
);

/// Three events of `org_a`, two deployment-level, one of `org_b`,
/// interleaved; returned in order of appending.
async fn seed(store: &SharedStore) -> Vec<keyward_store::AuditEvent> {
    let org_a = OrgId::from_trusted("org_a".into());
    let org_b = OrgId::from_trusted("org_b".into());
    let mut out = Vec::new();
    for (i, org) in [
        Some(&org_a),
        None,
        Some(&org_a),
        Some(&org_b),
        None,
        Some(&org_a),
    ]
    .into_iter()
    .enumerate()
    {
        let mut event = audit(
            1_000 + i as i64,
            "key.created",
            &format!("key_{i}"),
            json!({"n": i, "name": "ci ✓", "usd": 1.5, "nested": {"b": 1, "a": [true, null]}}),
        );
        event.org_id = org.cloned();
        event.ip = Some("203.0.113.7".into());
        event.user_agent = Some("keyward-cli/1".into());
        out.push(store.append_audit(&event).await.unwrap());
    }
    assert_eq!(store.verify_audit().await.unwrap(), Ok(6));
    out
}

async fn broken(store: &SharedStore) -> keyward_store::AuditBreak {
    store
        .verify_audit()
        .await
        .unwrap()
        .expect_err("tampering must be detected")
}

async fn an_untouched_log_verifies(store: SharedStore, _raw: Raw) {
    assert_eq!(store.verify_audit().await.unwrap(), Ok(0), "an empty log");
    let events = seed(&store).await;
    // Chains link per organization: the second event of org_a follows the
    // first, not the deployment event appended between them.
    assert_eq!(events[0].prev_hash, None);
    assert_eq!(events[1].prev_hash, None);
    assert_eq!(events[2].prev_hash, events[0].hash);
    assert_eq!(events[4].prev_hash, events[1].hash);
    assert_eq!(events[5].prev_hash, events[2].hash);
    // What the store answered is what it stored.
    let listed = store.list_audit(None, 10).await.unwrap();
    assert_eq!(listed.len(), 6);
    assert_eq!(listed[5], events[0]);
}

async fn editing_a_stored_event_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    // Every hashed field counts. Each edit is to an earlier event than the
    // one before, so that each is the first one verification meets.
    for (i, column, value) in [
        (5, "detail", "'{\"n\": 99}'"),
        (4, "ip", "'198.51.100.1'"),
        (3, "at", "5"),
        (2, "actor", "'someone_else'"),
        (1, "user_agent", "NULL"),
    ] {
        let id = events[i].id.as_str();
        let changed = raw
            .exec(&format!(
                "UPDATE audit_events SET {column} = {value} WHERE id = '{id}'"
            ))
            .await;
        assert_eq!(changed, 1);
        let b = broken(&store).await;
        assert_eq!(b.event_id, events[i].id, "editing {column}");
        assert!(b.reason.contains("changed"), "{}", b.reason);
    }
    assert_eq!(broken(&store).await.chain, "deployment");
}

async fn editing_a_stored_event_and_its_hash_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    let id = events[0].id.as_str();
    // An attacker who rewrites the hash too (here: to the hash of another
    // event, as good as any) breaks the link from the next event of org_a.
    let other = events[1].hash.clone().unwrap();
    raw.exec(&format!(
        "UPDATE audit_events SET target = 'key_other', hash = '{other}' WHERE id = '{id}'"
    ))
    .await;
    let b = broken(&store).await;
    assert_eq!(b.event_id, events[0].id, "its own hash no longer fits");
}

async fn deleting_an_event_in_the_middle_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    let id = events[2].id.as_str();
    assert_eq!(
        raw.exec(&format!("DELETE FROM audit_events WHERE id = '{id}'"))
            .await,
        1
    );
    let b = broken(&store).await;
    assert_eq!(
        b.event_id, events[5].id,
        "the event after the gap no longer follows"
    );
    assert!(b.reason.contains("removed"), "{}", b.reason);
}

async fn deleting_the_last_event_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    let id = events[5].id.as_str();
    raw.exec(&format!("DELETE FROM audit_events WHERE id = '{id}'"))
        .await;
    let b = broken(&store).await;
    assert_eq!(b.event_id, events[5].id, "the head names the missing event");
    assert_eq!(b.chain, "org_a");
    assert!(b.reason.contains("removed"), "{}", b.reason);

    // The only event of a chain, too.
    let lone = events[3].id.as_str();
    raw.exec(&format!("DELETE FROM audit_events WHERE id = '{lone}'"))
        .await;
    let b = broken(&store).await;
    assert!(b.event_id == events[3].id || b.event_id == events[5].id);
}

async fn reordering_two_events_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    // Move the first event of org_a after the others, every field kept: out
    // and back in, as PostgreSQL will not let `seq` be set.
    let first = events[0].id.as_str();
    let columns = "id, at, actor, action, target, detail, org_id, ip, user_agent, prev_hash, hash";
    raw.exec(&format!(
        "CREATE TABLE moved AS SELECT {columns} FROM audit_events WHERE id = '{first}'"
    ))
    .await;
    assert_eq!(
        raw.exec(&format!("DELETE FROM audit_events WHERE id = '{first}'"))
            .await,
        1
    );
    raw.exec(&format!(
        "INSERT INTO audit_events ({columns}) SELECT {columns} FROM moved"
    ))
    .await;
    let b = broken(&store).await;
    assert_eq!(
        b.event_id, events[2].id,
        "org_a's chain now starts at an event that names a predecessor"
    );
}

async fn moving_an_event_to_another_organization_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    let id = events[3].id.as_str();
    raw.exec(&format!(
        "UPDATE audit_events SET org_id = 'org_a' WHERE id = '{id}'"
    ))
    .await;
    let b = broken(&store).await;
    assert_eq!(b.event_id, events[3].id);
}

async fn inserting_an_event_without_a_hash_is_detected(store: SharedStore, raw: Raw) {
    seed(&store).await;
    raw.exec(
        "INSERT INTO audit_events (id, at, actor, action, target, detail) \
         VALUES ('aud_forged', 9999, 'key_admin', 'key.deleted', 'key_x', '{}')",
    )
    .await;
    let b = broken(&store).await;
    assert_eq!(b.event_id.as_str(), "aud_forged");
    assert!(b.reason.contains("no hash"), "{}", b.reason);
}

store_tests!(audit_is_filtered_by_org_actor_action_time_and_paged);

async fn audit_is_filtered_by_org_actor_action_time_and_paged(store: SharedStore) {
    let events = seed(&store).await;
    let ids = |v: Vec<keyward_store::AuditEvent>| v.into_iter().map(|e| e.id).collect::<Vec<_>>();
    let q = |f: AuditFilter| {
        let store = store.clone();
        async move {
            store
                .query_audit(&AuditFilter { limit: 100, ..f })
                .await
                .unwrap()
        }
    };
    assert_eq!(
        ids(q(AuditFilter {
            org_id: Some(OrgId::from_trusted("org_a".into())),
            ..AuditFilter::default()
        })
        .await),
        [5, 2, 0].map(|i| events[i].id.clone())
    );
    assert_eq!(
        ids(q(AuditFilter {
            since: Some(1_002),
            until: Some(1_004),
            ..AuditFilter::default()
        })
        .await),
        [3, 2].map(|i| events[i].id.clone())
    );
    assert_eq!(
        q(AuditFilter {
            action_prefix: Some("key.".into()),
            actor: Some("key_admin".into()),
            ..AuditFilter::default()
        })
        .await
        .len(),
        6
    );
    assert!(
        q(AuditFilter {
            action_prefix: Some("key_".into()),
            ..AuditFilter::default()
        })
        .await
        .is_empty(),
        "a prefix is not a LIKE pattern"
    );
    // Pages: two at a time, each after the last id of the one before.
    let page1 = store
        .query_audit(&AuditFilter {
            limit: 2,
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    let page2 = store
        .query_audit(&AuditFilter {
            limit: 2,
            before: Some(page1[1].id.clone()),
            ..AuditFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        ids(page1).into_iter().chain(ids(page2)).collect::<Vec<_>>(),
        [5, 4, 3, 2].map(|i| events[i].id.clone())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_on_postgres_keep_one_chain() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let store: SharedStore = Arc::new(PgStore::connect_with_schema(&url, &schema).await.unwrap());
    let org = OrgId::from_trusted("org_busy".into());
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let org = org.clone();
            tokio::spawn(async move {
                for i in 0..10 {
                    let mut event =
                        audit(t * 100 + i, "key.used", "key_x", json!({"t": t, "i": i}));
                    event.org_id = Some(org.clone());
                    store.append_audit(&event).await.unwrap();
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    let verdict = store.verify_audit().await.unwrap();
    drop_schema(&url, &schema).await;
    assert_eq!(verdict, Ok(80));
}

async fn events_from_before_the_chain_are_chained_once_at_open(store: SharedStore, raw: Raw) {
    // The state the migration leaves behind for events written before it:
    // rows without a hash, and the marker naming the last of them.
    for (i, id) in ["aud_old1", "aud_old2"].iter().enumerate() {
        raw.exec(&format!(
            "INSERT INTO audit_events (id, at, actor, action, target, detail) \
             VALUES ('{id}', {i}, 'key_admin', 'key.created', 'key_{i}', '{{\"n\": {i}}}')"
        ))
        .await;
    }
    raw.exec("INSERT INTO audit_legacy (max_seq) SELECT MAX(seq) FROM audit_events")
        .await;
    assert_eq!(
        store
            .verify_audit()
            .await
            .unwrap()
            .unwrap_err()
            .event_id
            .as_str(),
        "aud_old1",
        "unchained until the next open"
    );
    let store = raw.reopen().await;
    assert_eq!(store.verify_audit().await.unwrap(), Ok(2));
    // New events continue the deployment chain after them.
    let next = store
        .append_audit(&audit(5, "key.revoked", "key_0", json!({})))
        .await
        .unwrap();
    let old = store.list_audit(Some("key_1"), 1).await.unwrap();
    assert_eq!(next.prev_hash, old[0].hash);
    assert_eq!(store.verify_audit().await.unwrap(), Ok(3));

    // The marker is used once: a row slipped in later without a hash stays
    // unchained across opens and is reported.
    raw.exec(
        "INSERT INTO audit_events (id, at, actor, action, target, detail) \
         VALUES ('aud_late', 9, 'key_admin', 'key.deleted', 'key_x', '{}')",
    )
    .await;
    let store = raw.reopen().await;
    let b = store.verify_audit().await.unwrap().unwrap_err();
    assert_eq!(b.event_id.as_str(), "aud_late");
}

async fn deleting_a_chain_head_is_detected(store: SharedStore, raw: Raw) {
    let events = seed(&store).await;
    // Without its head, org_b's chain could lose its last event unseen.
    assert_eq!(
        raw.exec("DELETE FROM audit_heads WHERE chain = 'org_b'")
            .await,
        1
    );
    let b = broken(&store).await;
    assert_eq!(
        (b.event_id, b.chain.as_str()),
        (events[3].id.clone(), "org_b")
    );
    assert!(b.reason.contains("head"), "{}", b.reason);
}
