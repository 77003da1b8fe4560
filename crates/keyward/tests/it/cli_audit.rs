//! Issue 18, item 10: `keyward audit verify` catches an audit log changed
//! behind keyward's back, through the server and straight from the database.

use crate::support::*;
use serde_json::Value;
use sqlx::Connection;
use std::path::Path;
use std::process::Output;

/// A server whose audit log holds a few events: an organization, a project
/// and a key created with the bootstrap key. Returns it and the events'
/// ids, oldest first.
fn server_with_audited_changes(dir: &std::path::Path) -> (ServeProcess, Vec<String>) {
    let server = ServeProcess::start(dir, &[]);
    server.cli_json(&["orgs", "create", "acme", "--json"]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    server.cli_json(&[
        "keys",
        "create",
        "--project",
        "web",
        "--name",
        "app",
        "--json",
    ]);
    let listed = server.cli_json(&["audit", "list", "--json"]);
    let mut ids: Vec<String> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    ids.reverse();
    assert!(ids.len() >= 3, "the changes were audited: {listed}");
    (server, ids)
}

/// `sqlite://…` for the server's database.
fn database_url(data_dir: &Path) -> String {
    format!("sqlite://{}", data_dir.join("keyward.db").display())
}

/// Runs one statement on the server's SQLite file, as someone with access to
/// the file (not to keyward) would.
fn tamper(data_dir: &Path, sql: &str, id: &str) {
    let done = on_database(data_dir, |mut conn| async move {
        sqlx::query(sql).bind(id).execute(&mut conn).await.unwrap()
    });
    assert_eq!(done.rows_affected(), 1, "{sql} changed one row");
}

/// The id of the event appended last.
fn last_appended(data_dir: &Path) -> String {
    on_database(data_dir, |mut conn| async move {
        sqlx::query_scalar("SELECT id FROM audit_events ORDER BY seq DESC LIMIT 1")
            .fetch_one(&mut conn)
            .await
            .unwrap()
    })
}

fn on_database<T, F, Fut>(data_dir: &Path, body: F) -> T
where
    F: FnOnce(sqlx::SqliteConnection) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let url = database_url(data_dir);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        body(conn).await
    })
}

/// Both ways of verifying: through the server, and `--database` directly.
fn verify_both(server: &ServeProcess) -> [Output; 2] {
    [
        server.cli(&["audit", "verify"]),
        keyward()
            .args([
                "audit",
                "verify",
                "--database",
                &database_url(&server.data_dir),
            ])
            .env_remove("KEYWARD_URL")
            .env_remove("KEYWARD_ADMIN_KEY")
            .output()
            .unwrap(),
    ]
}

fn assert_intact(server: &ServeProcess) {
    for out in verify_both(server) {
        assert_eq!(
            out.status.code(),
            Some(0),
            "stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).contains("intact"));
    }
}

fn assert_broken_at(server: &ServeProcess, id: &str) {
    for out in verify_both(server) {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
        assert!(stderr.contains(id), "names the event {id}: {stderr}");
    }
    let json = server.cli(&["audit", "verify", "--json"]);
    assert_eq!(json.status.code(), Some(1));
    let verdict: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(verdict["ok"], false, "{verdict}");
    assert_eq!(verdict["event_id"], id, "{verdict}");
}

#[test]
fn editing_an_audit_event_in_the_database_is_caught_by_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ids) = server_with_audited_changes(dir.path());
    assert_intact(&server);
    let json = server.cli_json(&["audit", "verify", "--json"]);
    assert_eq!(json["ok"], true, "{json}");
    // At least those listed: the bootstrap key's use may add one a minute.
    assert!(
        json["events"].as_u64().unwrap() >= ids.len() as u64,
        "{json}"
    );

    // Someone with the file hides who created the project.
    tamper(
        &server.data_dir,
        "UPDATE audit_events SET actor = 'system' WHERE id = ?",
        &ids[1],
    );
    assert_broken_at(&server, &ids[1]);
}

#[test]
fn deleting_the_last_audit_event_in_the_database_is_caught_by_audit_verify() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _) = server_with_audited_changes(dir.path());
    assert_intact(&server);
    // Stopped, so that no request appends after the cut (the bootstrap key's
    // own use is audited once a minute): the cut event is the last one.
    let data_dir = server.data_dir.clone();
    server.terminate();
    let last = last_appended(&data_dir);
    tamper(&data_dir, "DELETE FROM audit_events WHERE id = ?", &last);
    let out = keyward()
        .args(["audit", "verify", "--database", &database_url(&data_dir)])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {stderr}");
    assert!(stderr.contains(&last), "names the event {last}: {stderr}");
}

#[test]
fn audit_list_filters_by_action_prefix_and_actor() {
    let dir = tempfile::tempdir().unwrap();
    let (server, ids) = server_with_audited_changes(dir.path());
    let all = server.cli_json(&["audit", "list", "--json"]);
    let keys = server.cli_json(&["audit", "list", "--action", "key.", "--json"]);
    let keys = keys.as_array().unwrap();
    assert!(!keys.is_empty(), "{all}");
    assert!(
        keys.iter()
            .all(|e| e["action"].as_str().unwrap().starts_with("key.")),
        "{keys:?}"
    );
    assert!(
        keys.len() < ids.len(),
        "the filter left something out: {all}"
    );
    let actor = all[0]["actor"].as_str().unwrap();
    let by_actor = server.cli_json(&["audit", "list", "--actor", actor, "--json"]);
    assert!(by_actor
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"] == actor));
    let nobody = server.cli_json(&["audit", "list", "--actor", "kwa_nobody", "--json"]);
    assert_eq!(nobody, serde_json::json!([]));
    // Every event carries its chain link.
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["hash"].as_str().is_some_and(|h| h.len() == 64)));
}

#[test]
fn audit_list_pages_with_before_through_every_event_once() {
    let dir = tempfile::tempdir().unwrap();
    let (server, mut ids) = server_with_audited_changes(dir.path());
    ids.reverse();
    let mut paged: Vec<String> = Vec::new();
    for _ in 0..=ids.len() {
        let mut args = vec!["audit", "list", "--limit", "1", "--json"];
        if let Some(last) = paged.last() {
            args.extend(["--before", last.as_str()]);
        }
        let page = server.cli_json(&args);
        let Some(event) = page.as_array().unwrap().first() else {
            break;
        };
        paged.push(event["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(paged, ids);
    let out = server.cli(&["audit", "list", "--before", "not-an-id"]);
    assert_ne!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stderr).contains("audit event id"));
}
