//! End to end with the official `openai` Python SDK as the client.
//!
//! The interpreter comes from `KEYWARD_TEST_PYTHON` (set by `.ci/run`, which
//! installs the SDK in a virtual environment) or the workspace's `.venv`. Without
//! one that can import `openai`, the test prints one line and skips.

use crate::support::*;
use std::path::PathBuf;
use std::process::Command;

fn python_with_openai() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KEYWARD_TEST_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../.venv/bin/python"
        ))),
    ];
    candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import openai"])
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

#[test]
fn openai_python_sdk_end_to_end() {
    let Some(python) = python_with_openai() else {
        if std::env::var_os("CI").is_some() {
            panic!("CI must provide the openai SDK (KEYWARD_TEST_PYTHON)");
        }
        eprintln!("skipping the openai SDK end-to-end test: no python with the openai package (run scripts/test or set KEYWARD_TEST_PYTHON)");
        return;
    };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/openai_sdk.py");
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    server.cli_json(&["projects", "create", "sdk", "--json"]);
    let created = server.cli_json(&[
        "keys",
        "create",
        "--project",
        "sdk",
        "--name",
        "python",
        "--json",
    ]);
    let (id, key) = (
        created["id"].as_str().unwrap(),
        created["key"].as_str().unwrap(),
    );
    let base = format!("{}/v1", server.url);

    let out = Command::new(&python)
        .args([script, &base, key, "calls"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "SDK calls failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let usage = server.cli_json(&["usage", "--key", id, "--json"]);
    for field in ["requests", "input_tokens", "output_tokens"] {
        assert_eq!(
            usage[field], expected[field],
            "{field}: usage {usage} vs what the SDK saw {expected}"
        );
    }

    assert!(server.cli(&["keys", "revoke", id]).status.success());
    let out = Command::new(&python)
        .args([script, &base, key, "revoked"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "revoked key:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
