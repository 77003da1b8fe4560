//! Issue 17, item 15: the CLI covers the whole management API — organizations,
//! projects and their policy, leaks, audit, e-mail recipients, budgets with
//! their spend, keys named as PROJECT/NAME — with the defects that came with
//! it: no implicit project creation, no lost money precision, and negative or
//! zero amounts refused by name.

use crate::support::*;
use serde_json::{json, Value};
use std::io::Write;
use std::process::{Output, Stdio};

/// Runs a command that must fail with exit code 2; returns its stderr.
fn refused(server: &ServeProcess, args: &[&str]) -> String {
    let out = server.cli(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(out.stdout.is_empty(), "{args:?} printed on stdout");
    stderr
}

/// Runs a command that must succeed; returns its stdout.
fn table(server: &ServeProcess, args: &[&str]) -> String {
    let out = server.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs a command with `input` on its stdin.
fn with_stdin(server: &ServeProcess, args: &[&str], input: &str) -> Output {
    let mut child = keyward()
        .args(args)
        .env("KEYWARD_URL", &server.url)
        .env("KEYWARD_ADMIN_KEY", server.admin_key())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

fn chat_status(server: &ServeProcess, key: &str) -> u16 {
    chat(
        &server.url,
        key,
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}),
    )
    .0
}

/// A mistyped `--project` used to create a project silently (the CLI sent
/// `create_project: true`); the key then lived where nobody looked for it.
#[test]
fn a_mistyped_project_is_refused_naming_it_and_the_command_that_creates_it() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    let stderr = refused(
        &server,
        &["keys", "create", "--project", "wbe", "--name", "app"],
    );
    assert!(
        stderr.contains(r#"no project named "wbe" in organization "default""#)
            && stderr.contains("`keyward projects create wbe`"),
        "{stderr}"
    );
    server.cli_json(&["orgs", "create", "acme", "--json"]);
    let stderr = refused(
        &server,
        &[
            "keys",
            "create",
            "--project",
            "my app",
            "--org",
            "acme",
            "--name",
            "app",
        ],
    );
    assert!(
        stderr.contains(r#"in organization "acme""#)
            && stderr.contains("`keyward projects create 'my app' --org acme`"),
        "{stderr}"
    );
    let projects = server.cli_json(&["projects", "list", "--json"]);
    let names: Vec<&str> = projects
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["web"], "no project was created: {projects}");
    assert_eq!(server.cli_json(&["keys", "list", "--json"]), json!([]));

    // Created explicitly, the same command works.
    server.cli_json(&["projects", "create", "my app", "--org", "acme", "--json"]);
    let key = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "my app",
        "--org",
        "acme",
        "--name",
        "app",
        "--json",
    ]);
    assert_eq!(key["name"], "app");
}

/// `--budget-usd -5` was "unexpected argument '-5'" (clap took it for a flag),
/// and zero went to the server. Every amount and limit is refused by name,
/// with the value given, and nothing is stored.
#[test]
fn negative_and_zero_amounts_and_limits_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "p", "--json"]);
    let key = server.cli_json(&["keys", "create", "--project", "p", "--name", "k", "--json"]);
    let id = key["id"].as_str().unwrap();
    let create = ["keys", "create", "--project", "p", "--name", "n"];
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            [&create[..], &["--budget-usd", "-5"]].concat(),
            "--budget-usd",
        ),
        (
            [&create[..], &["--budget-usd", "0"]].concat(),
            "--budget-usd",
        ),
        ([&create[..], &["--rpm", "-1"]].concat(), "--rpm"),
        ([&create[..], &["--tpm", "0"]].concat(), "--tpm"),
        (
            [&create[..], &["--max-concurrent", "-3"]].concat(),
            "--max-concurrent",
        ),
        (
            vec!["keys", "ephemeral", id, "--budget-usd", "-0.5"],
            "--budget-usd",
        ),
        (vec!["keys", "ephemeral", id, "--rpm", "0"], "--rpm"),
        (
            vec!["budgets", "set", "--project", "p", "--usd", "-5"],
            "--usd",
        ),
        (
            vec!["budgets", "set", "--project", "p", "--usd", "0"],
            "--usd",
        ),
        (
            vec![
                "budgets",
                "set",
                "--project",
                "p",
                "--usd",
                "1",
                "--soft",
                "50,-1",
            ],
            "--soft",
        ),
        (
            vec!["projects", "policy", "set", "p", "--rpm", "0"],
            "--rpm",
        ),
        (
            vec![
                "projects",
                "policy",
                "set",
                "p",
                "--max-key-age-days",
                "-30",
            ],
            "--max-key-age-days",
        ),
        (vec!["leaks", "list", "--limit", "0"], "--limit"),
        (vec!["audit", "list", "--limit", "-1"], "--limit"),
    ];
    for (args, flag) in &cases {
        let stderr = refused(&server, args);
        let value = args.last().unwrap().rsplit(',').next().unwrap();
        assert!(
            stderr.contains(flag)
                && stderr.contains(&format!("must be greater than 0 (got {value})")),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("unexpected argument"), "{stderr}");
    }
    // An amount finer than a micro-dollar would be rounded: refused too.
    let stderr = refused(
        &server,
        &["budgets", "set", "--project", "p", "--usd", "0.0000001"],
    );
    assert!(stderr.contains("micro-dollar"), "{stderr}");

    assert_eq!(
        server
            .cli_json(&["keys", "list", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1,
        "only the first key"
    );
    assert_eq!(server.cli_json(&["budgets", "list", "--json"]), json!([]));
    let policy = server.cli_json(&["projects", "policy", "get", "p", "--json"]);
    assert_eq!(policy, json!({}));
}

/// A $0.0001 budget printed as "$0.00" (`{:.2}` of a float).
#[test]
fn money_is_shown_with_every_decimal_it_has() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "p", "--json"]);
    let set = table(
        &server,
        &["budgets", "set", "--project", "p", "--usd", "0.0001"],
    );
    assert!(set.contains("$0.0001 per month"), "{set}");
    let listed = server.cli_json(&["budgets", "list", "--json"]);
    assert_eq!(listed[0]["budget"]["amount_micros"], 100, "{listed}");
    let shown = table(&server, &["budgets", "list"]);
    assert!(shown.contains("$0.0001"), "{shown}");
    let set = table(
        &server,
        &[
            "budgets",
            "set",
            "--project",
            "p",
            "--usd",
            "12.345678",
            "--period",
            "day",
        ],
    );
    assert!(set.contains("$12.345678 per day"), "{set}");
    let set = table(
        &server,
        &["budgets", "set", "--project", "p", "--usd", "25"],
    );
    assert!(set.contains("$25.00 per month"), "{set}");
}

/// The budget list shows what is spent in the period (it showed only what was
/// reserved), and the alert thresholds.
#[test]
fn budgets_list_shows_spent_reserved_and_thresholds() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    let key = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "web",
        "--name",
        "app",
        "--budget-usd",
        "5",
        "--json",
    ]);
    server.cli_json(&[
        "budgets",
        "set",
        "--project",
        "web",
        "--usd",
        "100",
        "--soft",
        "10,90",
        "--json",
    ]);
    for _ in 0..3 {
        assert_eq!(chat_status(&server, key["key"].as_str().unwrap()), 200);
    }
    let cost = server.cli_json(&["usage", "--key", key["id"].as_str().unwrap(), "--json"])
        ["cost_micros"]
        .as_i64()
        .unwrap();
    assert!(cost > 0);
    let listed = server.cli_json(&["budgets", "list", "--json"]);
    let entries = listed.as_array().unwrap();
    assert_eq!(entries.len(), 2, "{listed}");
    for e in entries {
        assert_eq!(e["spent_micros"], cost, "{e}");
        assert_eq!(e["reserved_micros"], 0, "{e}");
    }
    let shown = table(&server, &["budgets", "list"]);
    let header = shown.lines().next().unwrap();
    for column in ["SPENT", "RESERVED NOW", "USED", "ALERTS AT"] {
        assert!(header.contains(column), "{shown}");
    }
    let spent = format!("${}.{:06}", cost / 1_000_000, cost % 1_000_000);
    let spent = spent.trim_end_matches('0');
    assert!(shown.contains(spent), "{spent} in {shown}");
    assert!(
        shown.contains("10%,90%") && shown.contains("50%,80%,100%"),
        "{shown}"
    );
}

#[test]
fn orgs_projects_and_project_policy_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let org = server.cli_json(&["orgs", "create", "acme", "--json"]);
    assert_eq!(org["name"], "acme");
    let orgs = server.cli_json(&["orgs", "list", "--json"]);
    assert_eq!(
        orgs.as_array().unwrap().len(),
        2,
        "default and acme: {orgs}"
    );
    assert!(table(&server, &["orgs", "list"]).contains("acme"));
    let stderr = refused(&server, &["orgs", "create", "acme"]);
    assert!(stderr.contains("already exists"), "{stderr}");

    // The same project name in two organizations: --org picks one.
    let acme_web = server.cli_json(&["projects", "create", "web", "--org", "acme", "--json"]);
    let default_web = server.cli_json(&["projects", "create", "web", "--json"]);
    assert_eq!(acme_web["org_id"], org["id"]);
    assert_ne!(default_web["org_id"], org["id"]);
    let in_acme = server.cli_json(&["projects", "list", "--org", "acme", "--json"]);
    assert_eq!(in_acme.as_array().unwrap().len(), 1, "{in_acme}");
    let stderr = refused(&server, &["projects", "create", "web"]);
    assert!(stderr.contains("already exists"), "{stderr}");
    let stderr = refused(&server, &["projects", "list", "--org", "nope"]);
    assert!(stderr.contains("organization not found"), "{stderr}");

    let updated = server.cli_json(&[
        "projects",
        "policy",
        "set",
        "web",
        "--org",
        "acme",
        "--rpm",
        "5",
        "--max-key-age-days",
        "30",
        "--json",
    ]);
    assert_eq!(updated["id"], acme_web["id"]);
    let policy = server.cli_json(&[
        "projects", "policy", "get", "web", "--org", "acme", "--json",
    ]);
    assert_eq!(
        policy,
        json!({"rpm": 5, "max_key_age_ms": 30 * 86_400_000_i64})
    );
    let by_id = server.cli_json(&[
        "projects",
        "policy",
        "get",
        acme_web["id"].as_str().unwrap(),
        "--json",
    ]);
    assert_eq!(by_id, policy);
    assert_eq!(
        server.cli_json(&["projects", "policy", "get", "web", "--json"]),
        json!({}),
        "the default organization's web is untouched"
    );
    let shown = table(
        &server,
        &["projects", "policy", "get", "web", "--org", "acme"],
    );
    assert!(
        shown.contains("rpm") && shown.contains('5') && shown.contains("30d"),
        "{shown}"
    );
    let listed = table(&server, &["projects", "list", "--org", "acme"]);
    assert!(listed.contains("rpm=5 max_key_age=30d"), "{listed}");
    let stderr = refused(&server, &["projects", "policy", "get", "nope"]);
    assert!(stderr.contains(r#"no project named "nope""#), "{stderr}");

    // The shared limit is enforced on the project's keys.
    server.cli_json(&["projects", "policy", "set", "web", "--rpm", "1", "--json"]);
    let key = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "web",
        "--name",
        "a",
        "--json",
    ]);
    let secret = key["key"].as_str().unwrap();
    assert_eq!(chat_status(&server, secret), 200);
    assert_eq!(chat_status(&server, secret), 429);
}

#[test]
fn keys_are_named_by_project_and_name_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "demo", "--json"]);
    let app = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "my-app",
        "--json",
    ]);
    let id = app["id"].as_str().unwrap();
    let secret = app["key"].as_str().unwrap();

    let got = server.cli_json(&["keys", "get", "demo/my-app", "--json"]);
    assert_eq!(got["id"], id);
    let token = server.cli_json(&["keys", "ephemeral", "demo/my-app", "--json"]);
    assert_eq!(token["parent_id"], id);
    // The token carries its parent's name; the name still means the key.
    assert_eq!(
        server.cli_json(&["keys", "get", "demo/my-app", "--json"])["id"],
        id
    );
    let budget = server.cli_json(&[
        "budgets",
        "set",
        "--key",
        "demo/my-app",
        "--usd",
        "1",
        "--json",
    ]);
    assert_eq!(
        (&budget["scope"], &budget["id"]),
        (&json!("key"), &json!(id)),
        "{budget}"
    );
    let rotated = server.cli_json(&["keys", "rotate", "demo/my-app", "--grace", "0", "--json"]);
    assert_eq!(rotated["id"], id);
    assert_eq!(chat_status(&server, secret), 401);

    let stderr = refused(&server, &["keys", "get", "demo/nope"]);
    assert!(
        stderr.contains(r#"project "demo" has no key named "nope""#),
        "{stderr}"
    );
    let stderr = refused(&server, &["keys", "revoke", "nodemo/my-app"]);
    assert!(stderr.contains(r#"no project named "nodemo""#), "{stderr}");
    let stderr = refused(&server, &["keys", "get", "my-app"]);
    assert!(stderr.contains("PROJECT/NAME"), "{stderr}");

    // Two keys with one name: the error lists both, and nothing is revoked.
    let twin = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "my-app",
        "--json",
    ]);
    let stderr = refused(&server, &["keys", "revoke", "demo/my-app"]);
    assert!(
        stderr.contains("2 keys")
            && stderr.contains(id)
            && stderr.contains(twin["id"].as_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(
        server.cli_json(&["keys", "get", id, "--json"])["status"],
        "active"
    );

    server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "other",
        "--json",
    ]);
    let revoked = server.cli_json(&["keys", "revoke", "demo/other", "--json"]);
    assert_eq!(revoked["status"], "revoked");
    let deleted = server.cli_json(&["keys", "delete", "demo/other", "--json"]);
    assert_eq!(deleted["deleted"], true);
    assert_eq!(
        server
            .cli_json(&["keys", "list", "--project", "demo", "--json"])
            .as_array()
            .unwrap()
            .len(),
        3,
        "my-app, its token and its twin"
    );
}

#[test]
fn leaks_reported_listed_and_cleared_through_the_cli_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "demo", "--json"]);
    let app = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "app",
        "--json",
    ]);
    let (id, secret) = (app["id"].as_str().unwrap(), app["key"].as_str().unwrap());
    assert_eq!(chat_status(&server, secret), 200);

    // Tokens come on stdin, never on the command line.
    let out = with_stdin(
        &server,
        &[
            "leaks",
            "report",
            "--url",
            "https://paste.example/1",
            "--location",
            "line 3",
            "--json",
        ],
        &format!("{secret}\nnot-a-keyward-token\n"),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(results[0]["result"], "disabled", "{results}");
    assert_eq!(results[0]["key_id"], id);
    assert_eq!(results[1]["result"], "not_keyward", "{results}");
    assert_eq!(chat_status(&server, secret), 401);
    let out = with_stdin(&server, &["leaks", "report"], "\n  \n");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no tokens on stdin"));

    let listed = server.cli_json(&["leaks", "list", "--key", "demo/app", "--json"]);
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["outcome"], "disabled");
    assert_eq!(listed[0]["url"], "https://paste.example/1");
    let shown = table(&server, &["leaks", "list"]);
    assert!(
        shown.contains(id) && shown.contains("https://paste.example/1 line 3"),
        "{shown}"
    );
    assert!(!shown.contains(secret));
    assert_eq!(
        server
            .cli_json(&["leaks", "list", "--limit", "1", "--json"])
            .as_array()
            .unwrap()
            .len(),
        1
    );

    let stderr = refused(&server, &["leaks", "clear", "demo/app", "--reason", " "]);
    assert!(stderr.contains("reason"), "{stderr}");
    let cleared = server.cli_json(&[
        "leaks",
        "clear",
        "demo/app",
        "--reason",
        "test fixture, not a leak",
        "--json",
    ]);
    assert_eq!(cleared["status"], "active", "{cleared}");
    assert_eq!(chat_status(&server, secret), 200);

    let audit = server.cli_json(&["audit", "list", "--target", id, "--json"]);
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.leak_cleared", "key.leaked", "key.created"],
        "{audit}"
    );
    let newest = server.cli_json(&["audit", "list", "--limit", "1", "--json"]);
    assert_eq!(newest.as_array().unwrap().len(), 1);
    assert_eq!(newest[0]["action"], "key.leak_cleared");
    let shown = table(&server, &["audit", "list", "--target", id]);
    assert!(
        shown.starts_with("AT")
            && shown.contains("key.leak_cleared")
            && shown.contains("test fixture"),
        "{shown}"
    );
}

#[test]
fn an_uploaded_file_is_scanned_and_its_live_keys_disabled() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "demo", "--json"]);
    let app = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "demo",
        "--name",
        "app",
        "--json",
    ]);
    let secret = app["key"].as_str().unwrap();
    let bundle = dir.path().join("main.js");
    std::fs::write(&bundle, format!("const k = \"{secret}\";\n")).unwrap();
    let scan = server.cli_json(&["leaks", "upload", bundle.to_str().unwrap(), "--json"]);
    assert_eq!(scan["name"], "main.js");
    assert_eq!(scan["data"][0]["result"], "disabled", "{scan}");
    assert_eq!(scan["data"][0]["key_id"], app["id"]);
    assert_eq!(chat_status(&server, secret), 401);
    let clean = dir.path().join("clean.js");
    std::fs::write(&clean, "nothing here\n").unwrap();
    let shown = table(
        &server,
        &["leaks", "upload", clean.to_str().unwrap(), "--name", "v2"],
    );
    assert!(shown.contains("No keyward keys found in v2"), "{shown}");
}

#[test]
fn email_recipients_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    let added = server.cli_json(&[
        "email-recipients",
        "add",
        "oncall@example.com",
        "--events",
        "key.leaked,budget.threshold_crossed",
        "--project",
        "web",
        "--json",
    ]);
    let id = added["id"].as_str().unwrap();
    assert_eq!(
        added["events"],
        json!(["key.leaked", "budget.threshold_crossed"])
    );
    let listed = server.cli_json(&["email-recipients", "list", "--json"]);
    assert_eq!(listed[0]["address"], "oncall@example.com");
    let shown = table(&server, &["email-recipients", "list"]);
    assert!(
        shown.contains("oncall@example.com") && shown.contains("project prj_"),
        "{shown}"
    );
    let stderr = refused(&server, &["email-recipients", "add", "not-an-address"]);
    assert!(stderr.contains("email address"), "{stderr}");
    let removed = server.cli_json(&["email-recipients", "remove", id, "--json"]);
    assert_eq!(removed["deleted"], true);
    assert_eq!(
        server.cli_json(&["email-recipients", "list", "--json"]),
        json!([])
    );
    let stderr = refused(&server, &["email-recipients", "remove", id]);
    assert!(stderr.contains("not found"), "{stderr}");
}

/// Every route of the management API's OpenAPI document, as `keyward openapi`
/// prints it, has a command; this list is the map, and fails when a route is
/// added without one.
#[test]
fn every_management_route_has_a_cli_command() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let doc: Value = serde_json::from_slice(&server.cli(&["openapi"]).stdout).unwrap();
    let mut routes: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            routes.push(format!("{} {path}", method.to_uppercase()));
        }
    }
    routes.sort();
    let covered = [
        ("DELETE /api/v1/budgets", "budgets delete"),
        (
            "DELETE /api/v1/email-recipients/{id}",
            "email-recipients remove",
        ),
        ("DELETE /api/v1/keys/{id}", "keys delete"),
        ("DELETE /api/v1/webhooks/{id}", "webhooks remove"),
        ("GET /api/v1/admin-keys", "admin-keys list"),
        ("GET /api/v1/audit", "audit list"),
        ("GET /api/v1/audit/verify", "audit verify"),
        ("GET /api/v1/budgets", "budgets list"),
        ("GET /api/v1/email-recipients", "email-recipients list"),
        ("GET /api/v1/keys", "keys list"),
        ("GET /api/v1/keys/{id}", "keys get"),
        ("GET /api/v1/leaks", "leaks list"),
        ("GET /api/v1/openapi.json", "openapi"),
        ("GET /api/v1/orgs", "orgs list"),
        ("GET /api/v1/projects", "projects list"),
        ("GET /api/v1/usage", "usage"),
        ("GET /api/v1/users", "users list"),
        ("GET /api/v1/webhooks", "webhooks list"),
        (
            "GET /api/v1/webhooks/{id}/deliveries",
            "webhooks deliveries",
        ),
        ("PATCH /api/v1/users/{id}", "users update"),
        ("POST /api/v1/admin-keys", "admin-keys create"),
        ("POST /api/v1/admin-keys/{id}/revoke", "admin-keys revoke"),
        ("POST /api/v1/admin-keys/{id}/rotate", "admin-keys rotate"),
        ("POST /api/v1/email-recipients", "email-recipients add"),
        ("POST /api/v1/invitations", "users invite"),
        ("POST /api/v1/keys", "keys create"),
        ("POST /api/v1/keys/{id}/clear-leak", "leaks clear"),
        ("POST /api/v1/keys/{id}/ephemeral", "keys ephemeral"),
        ("POST /api/v1/keys/{id}/revoke", "keys revoke"),
        ("POST /api/v1/keys/{id}/rotate", "keys rotate"),
        ("POST /api/v1/leaks", "leaks report"),
        ("POST /api/v1/orgs", "orgs create"),
        ("POST /api/v1/projects", "projects create"),
        ("POST /api/v1/scan-uploads", "leaks upload"),
        ("POST /api/v1/users", "users create"),
        ("POST /api/v1/webhooks", "webhooks add"),
        ("POST /api/v1/webhooks/{id}/test", "webhooks test"),
        ("POST /keyward/v1/tokens", "tokens mint"),
        ("PUT /api/v1/budgets", "budgets set"),
        ("PUT /api/v1/projects/{id}/policy", "projects policy set"),
    ];
    let mapped: Vec<String> = covered.iter().map(|(r, _)| r.to_string()).collect();
    assert_eq!(
        routes, mapped,
        "a route without a command, or a command without its route"
    );
    for (route, command) in covered {
        let mut args: Vec<&str> = command.split(' ').collect();
        args.push("--help");
        let out = keyward().args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "{route}: `keyward {command}` does not exist"
        );
    }
}

/// `POST /keyward/v1/tokens` is called with a gateway key, read from the
/// environment, never from the command line.
#[test]
fn tokens_are_minted_with_a_gateway_key_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "web", "--json"]);
    let app = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "web",
        "--name",
        "app",
        "--json",
    ]);
    let mint = |env: &str, args: &[&str]| {
        keyward()
            .args(["tokens", "mint"])
            .args(args)
            .env("KEYWARD_URL", &server.url)
            .env_remove("KEYWARD_ADMIN_KEY")
            .env_remove("KEYWARD_KEY")
            .env(env, app["key"].as_str().unwrap())
            .output()
            .unwrap()
    };
    let out = mint(
        "KEYWARD_KEY",
        &["--ttl", "5m", "--budget-usd", "0.001", "--json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(token["parent_id"], app["id"]);
    let secret = token["key"].as_str().unwrap();
    assert!(secret.starts_with("kwe_"));
    assert_eq!(chat_status(&server, secret), 200);

    let out = mint("APP_KEY", &["--key-env", "APP_KEY"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("kwe_"));

    let out = mint("OTHER", &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("KEYWARD_KEY is not set"));
    let out = mint("KEYWARD_KEY", &["--budget-usd", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be greater than 0 (got -1)"));
}
