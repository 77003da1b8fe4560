//! Bringing a schema up to date when several nodes start at once, and refusing
//! a schema that a newer keyward has migrated.

use crate::support::{drop_schema, fresh_schema, postgres_url};
use keyward_store::postgres::PgStore;
use keyward_store::sqlite::SqliteStore;
use keyward_store::StoreError;
use sqlx::Connection;

/// How many nodes start together on the empty schema.
const NODES: usize = 6;

/// The migrations this build carries, by version.
fn known_postgres_versions() -> Vec<i64> {
    let mut versions: Vec<i64> = std::fs::read_dir(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/postgres"),
    )
    .expect("read the migrations folder")
    .map(|entry| {
        let name = entry.expect("a migration file").file_name();
        let name = name.to_string_lossy();
        name.split('_')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("migration file {name} has no version"))
    })
    .collect();
    versions.sort_unstable();
    versions
}

/// Several nodes opening one fresh schema at the same moment: every open
/// succeeds (none trips over another's `CREATE SCHEMA` or migration), and each
/// migration is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_starting_at_once_apply_migrations_once() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(NODES));
    let nodes: Vec<_> = (0..NODES)
        .map(|_| {
            let (url, schema, start) = (url.clone(), schema.clone(), start.clone());
            tokio::spawn(async move {
                start.wait().await;
                PgStore::connect_with_schema(&url, &schema).await
            })
        })
        .collect();
    let mut opened = Vec::new();
    let mut failures = Vec::new();
    for node in nodes {
        match node.await.expect("the opening task ran") {
            Ok(store) => opened.push(store),
            Err(e) => failures.push(e.to_string()),
        }
    }
    for store in &opened {
        store.close().await;
    }
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let rows: Vec<(i64, i64)> = sqlx::query_as(&format!(
        "SELECT version, COUNT(*) FROM {schema}._sqlx_migrations GROUP BY version ORDER BY version"
    ))
    .fetch_all(&mut conn)
    .await
    .expect("read the migrations table");
    drop_schema(&url, &schema).await;
    assert!(failures.is_empty(), "nodes failed to start: {failures:?}");
    assert_eq!(opened.len(), NODES);
    let versions: Vec<i64> = rows.iter().map(|(v, _)| *v).collect();
    assert_eq!(versions, known_postgres_versions());
    for (version, count) in rows {
        assert_eq!(count, 1, "migration {version} was recorded {count} times");
    }
}

/// A migration row from a keyward newer than this one.
const FUTURE: i64 = 9_999;

fn is_newer_schema_refusal(result: Result<(), StoreError>) {
    match result {
        Err(e @ StoreError::SchemaNewer { database, known }) => {
            assert_eq!(database, FUTURE);
            assert!(known < FUTURE);
            let text = e.to_string();
            assert!(
                text.contains(&format!("the database schema is at version {FUTURE}, newer than this keyward (which knows up to {known})"))
                    && text.contains("upgrade keyward before starting it on this database"),
                "{text}"
            );
        }
        other => panic!("an older node opened a newer schema: {other:?}"),
    }
}

/// A node whose binary is older than the schema refuses to start, saying so,
/// instead of sqlx's bare "previously applied but is missing"; and the refusal
/// leaves no lock behind (the schema opens again once the row is gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_node_refuses_a_newer_schema() {
    let Some(url) = postgres_url() else { return };
    let schema = fresh_schema();
    PgStore::connect_with_schema(&url, &schema)
        .await
        .expect("open the schema")
        .close()
        .await;
    let mut conn = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect to PostgreSQL");
    let future_row = format!(
        "INSERT INTO {schema}._sqlx_migrations \
         (version, description, success, checksum, execution_time) \
         VALUES ({FUTURE}, 'from a newer keyward', TRUE, '\\x00', 0)"
    );
    sqlx::query(&future_row).execute(&mut conn).await.unwrap();
    let refused = PgStore::connect_with_schema(&url, &schema).await.map(drop);
    sqlx::query(&format!(
        "DELETE FROM {schema}._sqlx_migrations WHERE version = {FUTURE}"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let reopened = PgStore::connect_with_schema(&url, &schema).await;
    if let Ok(store) = &reopened {
        store.close().await;
    }
    drop_schema(&url, &schema).await;
    is_newer_schema_refusal(refused);
    assert!(reopened.is_ok(), "{:?}", reopened.map(drop));
}

/// The same refusal on SQLite.
#[tokio::test]
async fn an_older_binary_refuses_a_newer_sqlite_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keyward.db");
    SqliteStore::open(&path).await.unwrap().close().await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES ({FUTURE}, 'from a newer keyward', TRUE, x'00', 0)"
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    is_newer_schema_refusal(SqliteStore::open(&path).await.map(drop));
}
