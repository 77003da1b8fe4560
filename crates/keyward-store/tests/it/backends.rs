//! What is particular to one backend: opening, files, schemas.

use crate::support::{event, fresh_schema, key_in_new_project, new_key, postgres_url};
use keyward_core::{KeyHash, KeyPolicy};
use keyward_store::postgres::PgStore;
use keyward_store::prelude::*;
use keyward_store::sqlite::SqliteStore;
use keyward_store::{KeyRecord, SharedStore, Store, StoreError, UsageFilter};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;
use std::str::FromStr;
use std::sync::Arc;

#[tokio::test]
async fn sqlite_open_creates_the_directory_and_reopens_with_data() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nested/deeper/keyward.db");
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store.create_org("acme", 1).await.unwrap();
    store.close().await;
    assert!(path.is_file());

    // Migrations are idempotent and the data is still there.
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(store.list_orgs().await.unwrap().len(), 1);
    store.close().await;

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode, "wal");
}

#[tokio::test]
async fn open_picks_the_backend_from_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("k.db").display());
    let store = keyward_store::open(&url).await.unwrap();
    assert_eq!(store.backend(), "sqlite");
    store.ping().await.unwrap();
    assert!(matches!(
        keyward_store::open("mysql://localhost/k").await,
        Err(StoreError::Backend(_))
    ));
}

/// The server and a CLI command may write the same SQLite file at once: the busy
/// timeout, not an error, must sort them out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tolerates_a_second_writer_process() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let first: SharedStore = Arc::new(SqliteStore::open(&path).await.unwrap());
    let second: SharedStore = Arc::new(SqliteStore::open(&path).await.unwrap());
    let key = key_in_new_project(&first, "acme", "web").await;

    let mut tasks = tokio::task::JoinSet::new();
    for store in [first.clone(), second.clone()] {
        for _ in 0..4 {
            let (store, key) = (store.clone(), key.clone());
            tasks.spawn(async move {
                for i in 0..20 {
                    store.insert_usage(&vec![event(&key, i); 10]).await.unwrap();
                    store.touch_keys(&[(key.id.clone(), i)]).await.unwrap();
                }
            });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for store in [first, second] {
        assert_eq!(
            store
                .usage_totals(&UsageFilter::default())
                .await
                .unwrap()
                .requests,
            2 * 4 * 20 * 10
        );
    }
}

#[tokio::test]
async fn postgres_schema_names_are_checked_before_connecting() {
    // Nothing listens on port 1: a name that got past the check would fail to connect
    // with a different message.
    for bad in [
        "",
        "Public",
        "a-b",
        "x;drop table keys",
        "1abc",
        &"a".repeat(64),
    ] {
        match PgStore::connect_with_schema("postgres://nobody@127.0.0.1:1/none", bad).await {
            Err(StoreError::Backend(msg)) => assert!(
                msg.contains("invalid PostgreSQL schema name"),
                "{bad:?}: {msg}"
            ),
            other => panic!("{bad:?} accepted: {:?}", other.map(|_| ())),
        }
    }
    match PgStore::connect("not a url").await {
        Err(StoreError::Backend(msg)) => assert!(!msg.contains("not a url")),
        other => panic!("bad URL accepted: {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn postgres_schemas_keep_stores_apart() {
    let Some(url) = postgres_url() else { return };
    let (a, b) = (fresh_schema(), fresh_schema());
    let store_a = PgStore::connect_with_schema(&url, &a).await.unwrap();
    let store_b = PgStore::connect_with_schema(&url, &b).await.unwrap();
    let (store_a2, store_b2, url2, a2, b2) = (
        store_a.clone(),
        store_b.clone(),
        url.clone(),
        a.clone(),
        b.clone(),
    );
    let outcome = async move {
        let (store_a, store_b, url, a, b) = (store_a2, store_b2, url2, a2, b2);
        assert_eq!(store_a.backend(), "postgres");
        store_a.create_org("acme", 1).await.unwrap();
        assert_eq!(store_b.org_by_name("acme").await.unwrap(), None);
        // Connecting again to an existing schema finds it migrated and keeps the data.
        let again = PgStore::connect_with_schema(&url, &a).await.unwrap();
        assert!(again.org_by_name("acme").await.unwrap().is_some());
        again.close().await;
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        let mut tables = Vec::new();
        for schema in [&a, &b] {
            let names: Vec<String> = sqlx::query_scalar(
                "SELECT table_name::TEXT FROM information_schema.tables \
                 WHERE table_schema = $1 ORDER BY table_name",
            )
            .bind(schema)
            .fetch_all(&mut conn)
            .await
            .unwrap();
            tables.push(names);
        }
        // Every migration ran in each store's own schema.
        for table in ["_sqlx_migrations", "orgs", "keys", "budgets"] {
            let found = tables[0].iter().any(|t| t == table);
            assert!(found, "{table} in {:?}", tables[0]);
        }
        assert_eq!(tables[0], tables[1]);
    };
    let outcome = tokio::spawn(outcome).await;
    store_a.close().await;
    store_b.close().await;
    crate::support::drop_schema(&url, &a).await;
    crate::support::drop_schema(&url, &b).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}

/// Policies no reader may take for "no restrictions".
const CORRUPT_KEY_POLICY: &str = r#"{"rpn": 1}"#;
const CORRUPT_PROJECT_POLICY: &str = "not json";

/// A stored policy that does not decode fails every read of its record: read as
/// "no restrictions" it would silently lift them.
async fn check_corrupt_policies_fail(store: &dyn Store, key: &KeyRecord, secret: &str) {
    let is_backend = |r: Result<(), StoreError>, what: &str| match r {
        Err(StoreError::Backend(msg)) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected a backend error about the {what}, got {other:?}"),
    };
    is_backend(store.get_key(&key.id).await.map(drop), "key policy");
    is_backend(
        store.key_by_hash(&KeyHash::of(secret)).await.map(drop),
        "key policy",
    );
    is_backend(store.list_keys(None).await.map(drop), "key policy");
    is_backend(
        store.get_project(&key.project_id).await.map(drop),
        "project policy",
    );
    is_backend(store.list_projects(None).await.map(drop), "project policy");
    // Writing a valid policy repairs the key.
    let fixed = store
        .set_key_policy(&key.id, &KeyPolicy::default())
        .await
        .unwrap();
    assert_eq!(fixed.policy, KeyPolicy::default());
}

#[tokio::test]
async fn sqlite_refuses_a_stored_policy_that_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    let store: SharedStore = Arc::new(SqliteStore::open(&path).await.unwrap());
    let project = key_in_new_project(&store, "acme", "web").await.project_id;
    let (new, secret) = new_key(&project, "k2", 2_000);
    let key = store.create_key(&new).await.unwrap();

    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query("UPDATE keys SET policy = ? WHERE id = ?")
        .bind(CORRUPT_KEY_POLICY)
        .bind(key.id.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("UPDATE projects SET policy = ? WHERE id = ?")
        .bind(CORRUPT_PROJECT_POLICY)
        .bind(project.as_str())
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    check_corrupt_policies_fail(store.as_ref(), &key, &secret).await;
}

#[tokio::test]
async fn postgres_refuses_a_stored_policy_that_does_not_decode() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let pg = PgStore::connect_with_schema(&url, &schema).await.unwrap();
    let (url2, schema2, store) = (url.clone(), schema.clone(), pg.clone());
    let outcome = tokio::spawn(async move {
        let store: SharedStore = Arc::new(store);
        let project = key_in_new_project(&store, "acme", "web").await.project_id;
        let (new, secret) = new_key(&project, "k2", 2_000);
        let key = store.create_key(&new).await.unwrap();

        let options = PgConnectOptions::from_str(&url2)
            .unwrap()
            .options([("search_path", schema2.as_str())]);
        let mut conn = sqlx::PgConnection::connect_with(&options).await.unwrap();
        sqlx::query("UPDATE keys SET policy = $1 WHERE id = $2")
            .bind(CORRUPT_KEY_POLICY)
            .bind(key.id.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query("UPDATE projects SET policy = $1 WHERE id = $2")
            .bind(CORRUPT_PROJECT_POLICY)
            .bind(project.as_str())
            .execute(&mut conn)
            .await
            .unwrap();
        check_corrupt_policies_fail(store.as_ref(), &key, &secret).await;
    })
    .await;
    pg.close().await;
    crate::support::drop_schema(&url, &schema).await;
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
