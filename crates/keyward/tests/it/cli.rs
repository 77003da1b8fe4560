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
    server.cli_json(&["projects", "create", "demo", "--json"]);
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
    server.cli_json(&["projects", "create", "p", "--json"]);
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

/// `kill -9` loses at most the usage of the last flush interval and of the
/// batch being written (crates/keyward-gateway/src/metering/writer.rs): under
/// continuous load, every request answered more than that before the kill is
/// stored after a restart, and nothing is stored twice. Eight kills on the
/// default settings, each 25 ms later in the writer's cycle than the one
/// before, so that the old 200 ms interval fails (one of them lands more than
/// 150 ms after its last write), while the 25 ms interval leaves 125 ms for a
/// batch write on a busy machine.
#[test]
fn kill_9_loses_at_most_the_last_flush_interval_of_usage() {
    use std::time::{Duration, Instant};
    // 25 ms interval, a batch write of a few ms, and room for a busy machine.
    const BOUND: Duration = Duration::from_millis(150);
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "p", "--json"]);
    let created = server.cli_json(&["keys", "create", "--project", "p", "--name", "n", "--json"]);
    let id = created["id"].as_str().unwrap().to_owned();
    let key = created["key"].as_str().unwrap().to_owned();
    let stored = |server: &ServeProcess| {
        server.cli_json(&["usage", "--key", &id, "--json"])["requests"]
            .as_u64()
            .unwrap() as usize
    };
    let mut stored_before = 0;
    for cycle in 0..8u64 {
        let load = Duration::from_millis(300 + 25 * cycle);
        let answered = answer_for(&server.url, &key, load);
        let killed_at = Instant::now();
        server.kill_9();
        server = ServeProcess::start(dir.path(), &[]);
        let stored_after = stored(&server);
        assert!(
            stored_after <= stored_before + answered.len(),
            "cycle {cycle}: {stored_after} stored, {} answered: counted twice",
            stored_before + answered.len()
        );
        let lost = stored_before + answered.len() - stored_after;
        if lost > 0 {
            // Requests were sent one after another and are written in order:
            // the lost ones are the last ones.
            let first_lost = answered[answered.len() - lost];
            let age = killed_at - first_lost;
            assert!(
                age <= BOUND,
                "cycle {cycle}: lost {lost} of {} requests, the first answered {age:?} before the kill",
                answered.len()
            );
        }
        stored_before = stored_after;
    }
}

/// Sends chat requests one after another on one connection for `time`;
/// returns when each was answered.
fn answer_for(url: &str, key: &str, time: std::time::Duration) -> Vec<std::time::Instant> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = reqwest::Client::new();
        let until = std::time::Instant::now() + time;
        let mut answered = Vec::new();
        while std::time::Instant::now() < until {
            let r = client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(key)
                .json(&json!({"model": "gpt-4o-mini"}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("request {}: {e:?}", answered.len()));
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap();
            answered.push(std::time::Instant::now());
        }
        answered
    })
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
    // Bounds a node that missed an invalidation could serve a stale record:
    // not zero, not forever; and the usage buffer holds at least one event.
    for (flag, value, says) in [
        ("--cache-ttl-ms", "0", "between 1 and 600000"),
        ("--cache-ttl-ms", "600001", "between 1 and 600000"),
        ("--usage-buffer-events", "0", "at least 1"),
    ] {
        let out = keyward()
            .args([
                "serve",
                "--upstream",
                "simulated",
                "--metrics-listen",
                "off",
            ])
            .arg("--data-dir")
            .arg(dir.path())
            .args([flag, value])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(says), "{flag} {value}: {stderr}");
    }
}

/// Cluster mode shares state through PostgreSQL: `--redis` with the default
/// SQLite database is refused before any file is created, and the message does
/// not repeat the URL's password.
#[test]
fn serve_refuses_redis_over_sqlite_without_echoing_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = keyward()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--upstream",
            "simulated",
            "--redis",
            "redis://:hunter2-redis-password@127.0.0.1:6379",
            "--data-dir",
        ])
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--redis needs --database postgres://"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!data.join("keyward.db").exists());
}

#[test]
fn restricted_keys_rotation_tokens_and_budgets_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    let created = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "web",
        "--name",
        "frontend",
        "--budget-usd",
        "5",
        "--rpm",
        "60",
        "--tpm",
        "100000",
        "--max-concurrent",
        "4",
        "--models",
        "gpt-4o-mini*,keyward-*",
        "--endpoints",
        "chat-only",
        "--allow-ip",
        "127.0.0.0/8,::1/128",
        "--expires-in",
        "30d",
        "--tag",
        "team:web",
        "--tag",
        "feature:chat",
        "--json",
    ]);
    let id = created["id"].as_str().unwrap();
    assert_eq!(created["policy"]["rpm"], 60);
    assert_eq!(
        created["policy"]["models"],
        json!(["gpt-4o-mini*", "keyward-*"])
    );
    assert_eq!(created["tags"], json!(["team:web", "feature:chat"]));
    let key = created["key"].as_str().unwrap();
    let (status, _) = chat(
        &server.url,
        key,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    );
    assert_eq!(status, 200);
    let (status, body) = chat(&server.url, key, json!({"model": "gpt-4o", "messages": []}));
    assert_eq!(status, 403, "{body}");

    let usage = server.cli_json(&["usage", "--key", id, "--json"]);
    assert_eq!(usage["requests"], 2);
    assert_eq!(usage["reserved_micros"], 0);
    let by_tag = server.cli_json(&["usage", "--group-by", "tag", "--json"]);
    assert_eq!(by_tag["groups"].as_array().unwrap().len(), 2, "{by_tag}");

    let rotated = server.cli_json(&["keys", "rotate", id, "--grace", "0", "--json"]);
    let new_key = rotated["key"].as_str().unwrap();
    assert_ne!(new_key, key);
    assert_eq!(
        chat(&server.url, key, json!({"model": "gpt-4o-mini"})).0,
        401
    );

    let token = server.cli_json(&[
        "keys",
        "ephemeral",
        id,
        "--ttl",
        "10m",
        "--budget-usd",
        "0.01",
        "--json",
    ]);
    assert!(token["key"].as_str().unwrap().starts_with("kwe_"));
    assert_eq!(
        chat(
            &server.url,
            token["key"].as_str().unwrap(),
            json!({"model": "gpt-4o-mini", "messages": []})
        )
        .0,
        200
    );

    let out = server.cli(&[
        "budgets",
        "set",
        "--project",
        "web",
        "--usd",
        "100",
        "--period",
        "day",
        "--soft",
        "50,90",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let budgets = server.cli_json(&["budgets", "list", "--json"]);
    assert_eq!(
        budgets.as_array().unwrap().len(),
        3,
        "key, token and project budgets: {budgets}"
    );
}

#[test]
fn bad_limits_are_refused_with_exit_2_and_nothing_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "p", "--json"]);
    for args in [
        &[
            "keys",
            "create",
            "--project",
            "p",
            "--name",
            "n",
            "--allow-ip",
            "10.0.0.0/99",
        ][..],
        &[
            "keys",
            "create",
            "--project",
            "p",
            "--name",
            "n",
            "--endpoints",
            "everything",
        ],
        &[
            "keys",
            "create",
            "--project",
            "p",
            "--name",
            "n",
            "--budget-usd",
            "-5",
        ],
        &[
            "keys",
            "create",
            "--project",
            "p",
            "--name",
            "n",
            "--expires-in",
            "3 days",
        ],
        &[
            "budgets", "set", "--org", "default", "--usd", "1", "--period", "weekly",
        ],
        &["budgets", "set", "--usd", "1"],
    ] {
        let out = server.cli(args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(!out.stderr.is_empty());
    }
    let keys = server.cli_json(&["keys", "list", "--json"]);
    assert!(keys.as_array().unwrap().is_empty());
    let budgets = server.cli_json(&["budgets", "list", "--json"]);
    assert!(budgets.as_array().unwrap().is_empty());
}

#[test]
fn webhooks_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let added = server.cli_json(&[
        "webhooks",
        "add",
        "https://hooks.example.test/keyward",
        "--events",
        "key.leaked,budget.threshold_crossed",
        "--json",
    ]);
    let id = added
        .pointer("/webhook/id")
        .or_else(|| added.get("id"))
        .and_then(|v| v.as_str())
        .unwrap()
        .to_owned();
    assert!(
        added["secret"].as_str().is_some_and(|s| !s.is_empty()),
        "{added}"
    );
    let listed = server.cli_json(&["webhooks", "list", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !listed
            .to_string()
            .contains(added["secret"].as_str().unwrap()),
        "the secret is shown once"
    );
    let table = String::from_utf8(server.cli(&["webhooks", "list"]).stdout).unwrap();
    assert!(table.contains("budget.threshold_crossed"), "{table}");
    let out = server.cli(&["webhooks", "add", "not a url", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(server.cli(&["webhooks", "remove", &id]).status.success());
    assert!(server
        .cli_json(&["webhooks", "list", "--json"])
        .as_array()
        .unwrap()
        .is_empty());
}

/// `webhooks deliveries` reads the log as `keyward_api::notify::Delivery`; with
/// `--json` it prints it through a `Value`, as it did when it read one: keys in
/// the same (sorted) order.
#[test]
fn webhook_deliveries_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let added = server.cli_json(&[
        "webhooks",
        "add",
        "https://hooks.example.test/keyward",
        "--json",
    ]);
    let id = added["id"].as_str().unwrap().to_owned();
    let queued = server.cli_json(&["webhooks", "test", &id, "--json"]);
    let event = queued["event_id"].as_str().unwrap().to_owned();
    let out = server.cli(&["webhooks", "deliveries", &id, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.starts_with(r#"[{"attempts":"#), "{stdout}");
    let log: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 1, "{stdout}");
    assert_eq!(log[0]["event_id"], event.as_str());
    assert_eq!(log[0]["event_type"], "webhook.test");
    assert_eq!(log[0]["channel"], "webhook");
    assert_eq!(log[0]["target_id"], id.as_str());
    assert!(log[0]["payload"].is_object(), "{stdout}");
    let table = String::from_utf8(server.cli(&["webhooks", "deliveries", &id]).stdout).unwrap();
    assert!(table.contains(&event), "{table}");
    assert!(table.contains("webhook.test"), "{table}");
}

#[test]
fn admin_keys_through_the_cli_against_a_served_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let key_file = dir.path().join("initial-admin-key");
    let initial = server.admin_key();
    let as_key = |key: &str, args: &[&str]| {
        keyward()
            .args(args)
            .env("KEYWARD_URL", &server.url)
            .env("KEYWARD_ADMIN_KEY", key)
            .output()
            .unwrap()
    };
    let json_of = |out: std::process::Output| -> serde_json::Value {
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };

    let created = json_of(as_key(
        &initial,
        &["admin-keys", "create", "--name", "ops", "--json"],
    ));
    let ops_id = created["id"].as_str().unwrap().to_owned();
    let ops = created["key"].as_str().unwrap().to_owned();
    assert!(ops.starts_with("kwa_"));

    let listed = json_of(as_key(&ops, &["admin-keys", "list", "--json"]));
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["initial", "ops"]);
    assert!(!listed.to_string().contains(&ops) && !listed.to_string().contains(&initial));
    assert!(!key_file.exists(), "a second admin key was used");
    let initial_id = listed[0]["id"].as_str().unwrap().to_owned();

    let table = as_key(&ops, &["admin-keys", "list"]);
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("ID") && table.contains("ops"), "{table}");

    let rotated = json_of(as_key(&ops, &["admin-keys", "rotate", &ops_id, "--json"]));
    let ops2 = rotated["key"].as_str().unwrap().to_owned();
    let refused = as_key(&ops, &["admin-keys", "list"]);
    assert_eq!(
        refused.status.code(),
        Some(2),
        "the old secret stops at once"
    );
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));

    let revoked = json_of(as_key(
        &ops2,
        &["admin-keys", "revoke", &initial_id, "--json"],
    ));
    assert_eq!(revoked["status"], "revoked");
    assert_eq!(
        as_key(&initial, &["admin-keys", "list"]).status.code(),
        Some(2)
    );

    let last = as_key(&ops2, &["admin-keys", "revoke", &ops_id]);
    assert_eq!(last.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&last.stderr).contains("last active admin key"),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    assert!(as_key(&ops2, &["admin-keys", "list"]).status.success());
}

/// Issue 17, item 14: `KEYWARD_URL` set to the gateway's base URL (ending in
/// `/v1`, as apps are given) gets a hint to drop `/v1`, not the gateway's
/// refusal of admin keys.
#[test]
fn a_keyward_url_ending_in_v1_gets_a_hint_to_drop_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    for suffix in ["/v1", "/v1/"] {
        let out = keyward()
            .args(["keys", "list"])
            .env("KEYWARD_URL", format!("{}{suffix}", server.url))
            .env("KEYWARD_ADMIN_KEY", server.admin_key())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("drop /v1") && stderr.contains(&format!("KEYWARD_URL={}", server.url)),
            "{stderr}"
        );
        assert!(!stderr.contains("cannot call the gateway"), "{stderr}");
    }
}

/// Issue 17, item 14: a path that does not exist is reported once, with the
/// OS's reason said once.
#[test]
fn scanning_a_missing_path_says_the_os_error_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nonexistent");
    let out = keyward().arg("scan").arg(&missing).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(
        stderr.matches("No such file or directory").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains(&missing.display().to_string()), "{stderr}");
}
