//! The backends under test, and fixtures shared by the suite.

use keyward_core::{KeyFormat, KeyHash, KeyId, KeyKind, KeyPolicy, Micros, ProjectId};
use keyward_store::postgres::PgStore;
use keyward_store::sqlite::SqliteStore;
use keyward_store::{KeyRecord, NewKey, SharedStore, Store, UsageEvent};
use sqlx::Connection;
use std::future::Future;
use std::sync::Arc;

/// Where the PostgreSQL tests connect; unset means they are skipped, except
/// under `CI=true`, where a missing database fails the run instead of letting
/// half the suite pass vacuously.
pub const POSTGRES_URL_VAR: &str = "KEYWARD_TEST_POSTGRES_URL";

/// Instantiates each named `async fn(SharedStore)` of the calling module as a test
/// per backend.
macro_rules! store_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                crate::support::on_sqlite(super::$name).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                crate::support::on_postgres(super::$name).await;
            }
        }
    )*};
}

/// Runs `body` against a fresh SQLite store in a temporary directory.
pub async fn on_sqlite<F, Fut>(body: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let dir = tempfile::tempdir().expect("create a temporary directory");
    let store = SqliteStore::open(&dir.path().join("keyward.db"))
        .await
        .expect("open SQLite");
    assert_eq!(store.backend(), "sqlite");
    body(Arc::new(store.clone())).await;
    store.close().await;
}

/// The PostgreSQL URL to test against, or `None` (after saying so) to skip.
/// Under `CI=true` a missing URL is a failure, not a skip.
pub fn postgres_url() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{POSTGRES_URL_VAR} is not set, and CI=true: the PostgreSQL storage tests must run in CI (.ci/run sets it)")
        }
        _ => {
            println!("skipping PostgreSQL storage tests: {POSTGRES_URL_VAR} is not set");
            None
        }
    }
}

/// A schema name no other test process will pick.
pub fn fresh_schema() -> String {
    format!(
        "kw_test_{}",
        keyward_core::base62::random(16).to_ascii_lowercase()
    )
}

/// Runs `body` against a PostgreSQL store in a schema of its own, dropped
/// afterwards whether the body passed or panicked.
pub async fn on_postgres<F, Fut>(body: F)
where
    F: FnOnce(SharedStore) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let store = PgStore::connect_with_schema(&url, &schema)
        .await
        .expect("connect to PostgreSQL");
    assert_eq!(store.backend(), "postgres");
    // On its own task so that a failing assertion still lets us drop the schema.
    let outcome = tokio::spawn(body(Arc::new(store.clone()))).await;
    store.close().await;
    drop_schema(&url, &schema).await;
    if let Err(e) = outcome {
        match e.try_into_panic() {
            Ok(panic) => std::panic::resume_unwind(panic),
            Err(e) => panic!("test task failed: {e}"),
        }
    }
}

pub async fn drop_schema(url: &str, schema: &str) {
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .expect("connect to PostgreSQL");
    sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut conn)
        .await
        .expect("drop the test schema");
}

/// A new key for `project` and the secret it stands for.
pub fn new_key(project: &ProjectId, name: &str, created_at: i64) -> (NewKey, String) {
    let secret = KeyFormat::default()
        .generate(KeyKind::Standard)
        .expose()
        .to_owned();
    let key = NewKey {
        id: KeyId::generate(),
        project_id: project.clone(),
        name: name.to_owned(),
        hash_hex: KeyHash::of(&secret).to_hex(),
        hint: keyward_core::key::hint(&secret),
        tags: vec!["team:search".into(), "feature:chat".into()],
        created_by: Some("key_admin".into()),
        created_at,
        expires_at: Some(created_at + 86_400_000),
        parent_id: None,
        parent_secret_hash: None,
        policy: KeyPolicy::default(),
    };
    (key, secret)
}

/// A successful request by `key` at `at` with some tokens and cost.
pub fn event(key: &KeyRecord, at: i64) -> UsageEvent {
    UsageEvent {
        key_id: key.id.clone(),
        project_id: key.project_id.clone(),
        org_id: key.org_id.clone(),
        at,
        endpoint: "/v1/chat/completions".into(),
        model: "gpt-4o-mini".into(),
        status: 200,
        input_tokens: 100,
        cached_input_tokens: 20,
        output_tokens: 50,
        reasoning_tokens: 5,
        cost_micros: Micros(75),
        upstream_latency_ms: 120,
        total_latency_ms: 150,
        client_ip: Some("203.0.113.7".into()),
        streamed: false,
        incomplete: false,
    }
}

/// An org, a project in it and a key in that project.
pub async fn key_in_new_project(store: &SharedStore, org: &str, project: &str) -> KeyRecord {
    let org = match store.org_by_name(org).await.expect("org_by_name") {
        Some(o) => o,
        None => store.create_org(org, 1_000).await.expect("create org"),
    };
    let project = store
        .create_project(&org.id, project, 1_000)
        .await
        .expect("create project");
    let (key, _) = new_key(&project.id, "k", 1_000);
    store.create_key(&key).await.expect("create key")
}
