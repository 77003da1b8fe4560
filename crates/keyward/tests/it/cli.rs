//! The command-line contract: serve, keys create/list/revoke, usage, SIGTERM.

use crate::support::*;
use serde_json::json;

#[test]
fn keys_and_usage_through_the_cli_against_a_served_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("initial-admin-key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let created = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "cli-key",
        "--json",
    ]);
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(key.starts_with("kwk_"));

    let (status, body) = chat(
        &server.url,
        key,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("simulated"));

    let usage = server.cli_json(&["usage", "--key", id, "--json"]);
    assert_eq!(usage["requests"], 1, "{usage}");
    assert!(usage["input_tokens"].as_i64().unwrap() > 0);
    assert!(usage["output_tokens"].as_i64().unwrap() > 0);
    assert!(usage["cost_micros"].as_i64().unwrap() > 0);

    let listed = server.cli(&["keys", "list"]);
    let table = String::from_utf8(listed.stdout).unwrap();
    assert!(
        table.starts_with("ID") && table.contains("cli-key") && table.contains("active"),
        "{table}"
    );
    assert!(!table.contains(key), "list never shows the secret");

    let revoked = server.cli(&["keys", "revoke", id]);
    assert!(revoked.status.success());
    let (status, body) = chat(&server.url, key, json!({"model": "gpt-4o-mini"}));
    assert_eq!(status, 401);
    assert!(body.contains("revoked") && !body.contains(key));
}

#[test]
fn cli_errors_are_clear_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let out = keyward()
        .args(["keys", "list"])
        .env("KEYWARD_URL", &server.url)
        .env_remove("KEYWARD_ADMIN_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYWARD_ADMIN_KEY"));
    let out = server.cli(&["keys", "revoke", "key_doesnotexist"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let out = server.cli(&[
        "keys",
        "create",
        "--project",
        "p",
        "--name",
        "n",
        "--expires-in",
        "10",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unit"));
}

#[test]
fn sigterm_writes_all_buffered_usage() {
    let dir = tempfile::tempdir().unwrap();
    // Batches every hour: everything below is still buffered at SIGTERM.
    let server = ServeProcess::start(dir.path(), &["--usage-flush-ms", "3600000"]);
    let created = server.cli_json(&["keys", "create", "--project", "p", "--name", "n", "--json"]);
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    for _ in 0..30 {
        assert_eq!(
            chat(&server.url, &key, json!({"model": "gpt-4o-mini"})).0,
            200
        );
    }
    let stored_requests = || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let store = keyward_store::open(&format!(
                "sqlite://{}",
                dir.path().join("keyward.db").display()
            ))
            .await
            .unwrap();
            let filter = keyward_store::UsageFilter {
                key: keyward_core::KeyId::parse(&id),
                ..Default::default()
            };
            store.usage_totals(&filter).await.unwrap().requests
        })
    };
    assert_eq!(
        stored_requests(),
        0,
        "events are still buffered in the server"
    );
    server.terminate();
    assert_eq!(stored_requests(), 30, "SIGTERM wrote every buffered event");

    let again = ServeProcess::start(dir.path(), &[]);
    assert_eq!(
        again.cli_json(&["usage", "--key", &id, "--json"])["requests"],
        30
    );
}

#[test]
fn serve_refuses_bad_settings_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let prices = dir.path().join("prices.toml");
    std::fs::write(
        &prices,
        "[models.x]\ninput_per_million = -1\noutput_per_million = 1\n",
    )
    .unwrap();
    let out = keyward()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--upstream",
            "simulated",
            "--data-dir",
        ])
        .arg(dir.path())
        .arg("--prices")
        .arg(&prices)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("price"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = keyward()
        .args([
            "serve",
            "--upstream",
            "ftp://x",
            "--metrics-listen",
            "off",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
