//! `keyward scan PATH --report` end to end: a real server, a planted key, the
//! scanner reporting it, the key refused afterwards.

use crate::support::{chat, ServeProcess};
use serde_json::json;

#[test]
fn scan_report_disables_a_planted_key_and_says_so() {
    let data = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(data.path(), &[]);
    server.cli_json(&["projects", "create", "demo", "--json"]);
    let create = |name: &str| {
        server.cli_json(&[
            "keys",
            "create",
            "--project",
            "demo",
            "--name",
            name,
            "--json",
        ])
    };
    let leaked = create("leaky");
    let safe = create("safe");
    let key = leaked["key"].as_str().unwrap();
    let safe_key = safe["key"].as_str().unwrap();
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(
        tree.path().join("app.env"),
        format!("OPENAI_BASE_URL=http://gw\nOPENAI_API_KEY={key}\n"),
    )
    .unwrap();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(chat(&server.url, key, body.clone()).0, 200);

    let out = server.cli(&[
        "scan",
        tree.path().to_str().unwrap(),
        "--report",
        "--no-progress",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "findings exit 1: {stderr}");
    assert!(stderr.contains("DISABLED"), "{stderr}");
    assert!(stderr.contains(leaked["id"].as_str().unwrap()), "{stderr}");
    assert!(stderr.contains("reported 1 keys, 1 disabled"), "{stderr}");
    assert!(!stderr.contains(key));

    let (status, text) = chat(&server.url, key, body.clone());
    assert_eq!(status, 401);
    assert!(text.contains("found exposed"), "{text}");
    assert_eq!(
        chat(&server.url, safe_key, body).0,
        200,
        "other keys are untouched"
    );

    // Reporting again changes nothing and says so.
    let out = server.cli(&[
        "scan",
        tree.path().to_str().unwrap(),
        "--report",
        "--no-progress",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already disabled"), "{stderr}");
}
