//! The dashboard in headless Chromium (Debian's `chromium` and `chromium-driver`),
//! driven by Selenium from `tests/e2e/dashboard.py`, against the real `keyward
//! serve` and its simulated upstream. This side starts the server and makes the
//! people and keys a scenario needs; the script plays the person at the browser.
//!
//! Screenshots of every page at 1280×800 land in `target/dashboard-screenshots/`
//! of the checkout, for a reviewer to look at.
//!
//! The interpreter is the one the SDK test uses (`KEYWARD_TEST_PYTHON`, which
//! `.ci/run` fills with `tests/requirements.txt`, Selenium included). Without it,
//! or without Chromium, a scenario prints one line and skips; under `CI=true` it
//! fails instead.

use crate::support::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;

const PASSWORD: &str = "correct horse battery staple 42";

fn python_with_selenium() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("KEYWARD_TEST_PYTHON").map(PathBuf::from),
        Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../.venv/bin/python"
        ))),
    ];
    let python = candidates.into_iter().flatten().find(|p| {
        Command::new(p)
            .args(["-c", "import selenium"])
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let browser = ["chromium", "chromedriver"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    match (python, browser) {
        (Some(p), true) => Some(p),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI must provide Selenium (KEYWARD_TEST_PYTHON), chromium and chromedriver")
        }
        _ => {
            eprintln!("skipping a dashboard browser test: needs python with selenium (tests/requirements.txt), chromium and chromedriver");
            None
        }
    }
}

/// A server whose public URL is `http://localhost:PORT`: the origin the
/// browser is on, and a name browsers accept as a WebAuthn RP id.
struct Site {
    server: ServeProcess,
    public: String,
    _dir: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        // The public URL must name the port before the server starts.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let public = format!("http://localhost:{port}");
        let dir = tempfile::tempdir().unwrap();
        let server = ServeProcess::start_at(
            &format!("127.0.0.1:{port}"),
            dir.path(),
            &["--public-url", &public],
            "info",
        );
        Site {
            server,
            public,
            _dir: dir,
        }
    }

    /// Creates a user with [`PASSWORD`]; returns its email.
    fn user(&self, email: &str, org: &str, role: &str) -> String {
        let out = keyward()
            .args(["users", "create", "--email", email, "--org", org])
            .args(["--role", role, "--json"])
            .env("KEYWARD_URL", &self.server.url)
            .env("KEYWARD_ADMIN_KEY", self.server.admin_key())
            .env("KEYWARD_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        email.to_owned()
    }

    /// Creates a key in `org`'s project `project`; returns (id, name).
    fn key(&self, org: &str, project: &str, name: &str) -> (String, String) {
        // Either may exist already.
        let _ = self.server.cli(&["orgs", "create", org]);
        let _ = self
            .server
            .cli(&["projects", "create", project, "--org", org, "--json"]);
        let created = self.server.cli_json(&[
            "keys",
            "create",
            "--org",
            org,
            "--project",
            project,
            "--name",
            name,
            "--json",
        ]);
        (created["id"].as_str().unwrap().to_owned(), name.to_owned())
    }

    /// Runs `scenario` of the script with `fixture` (plus the URL and the
    /// screenshot folder); returns what it printed.
    fn run(&self, python: &PathBuf, scenario: &str, mut fixture: Value) -> Value {
        let shots =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/dashboard-screenshots");
        fixture["url"] = json!(self.public);
        fixture["screenshots"] = json!(shots);
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/dashboard.py");
        let out = Command::new(python)
            .args([script, scenario, &fixture.to_string()])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dashboard scenario {scenario} failed:\n{}\n{}\nserver log:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.server.log.lock().unwrap().join("\n")
        );
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
    }
}

#[test]
fn a_key_is_created_used_and_revoked_from_the_browser_after_password_and_totp() {
    let Some(python) = python_with_selenium() else {
        return;
    };
    let site = Site::start();
    let owner = site.user("owner@acme.example", "acme", "owner");
    site.run(&python, "key_lifecycle", json!({ "owner": owner }));
    // What the browser did, as the server recorded it.
    let keys = site
        .server
        .cli_json(&["keys", "list", "--org", "acme", "--json"]);
    let key = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "browser key")
        .expect("the key the browser created");
    assert_eq!(key["status"], "revoked");
    assert_eq!(key["policy"]["models"], json!(["gpt-4o-mini"]));
    assert_eq!(key["policy"]["rpm"], 100);
}

#[test]
fn a_member_cannot_open_another_organizations_key_and_a_viewer_gets_no_buttons() {
    let Some(python) = python_with_selenium() else {
        return;
    };
    let site = Site::start();
    let member = site.user("member@acme.example", "acme", "member");
    let viewer = site.user("viewer@acme.example", "acme", "viewer");
    let (own_key, own_key_name) = site.key("acme", "web", "acme key");
    let (other, other_name) = site.key("globex", "secret", "globex private key");
    site.run(
        &python,
        "boundaries",
        json!({
            "member": member,
            "viewer": viewer,
            "own_key": own_key,
            "own_key_name": own_key_name,
            "other_org_key": other,
            "other_org_key_name": other_name,
        }),
    );
    let keys = site.server.cli_json(&["keys", "list", "--json"]);
    let own = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == own_key.as_str())
        .expect("the acme key");
    assert_eq!(own["status"], "active", "the viewer revoked nothing");
}

#[test]
fn every_page_has_the_csp_no_console_error_and_a_screenshot() {
    let Some(python) = python_with_selenium() else {
        return;
    };
    let site = Site::start();
    let owner = site.user("owner@acme.example", "acme", "owner");
    site.key("acme", "web", "acme key");
    let seen = site.run(&python, "every_page", json!({ "owner": owner }));
    for (name, page) in seen["pages"].as_object().unwrap() {
        let csp = page["csp"].as_str().unwrap_or_default();
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
            "{name}: {csp}"
        );
    }
}

#[test]
fn a_passkey_enrolled_on_the_security_page_signs_in_with_chromiums_virtual_authenticator() {
    let Some(python) = python_with_selenium() else {
        return;
    };
    let site = Site::start();
    let owner = site.user("owner@acme.example", "acme", "owner");
    site.run(&python, "passkey", json!({ "owner": owner }));
}

#[test]
fn log_out_everywhere_in_one_browser_sends_the_other_to_the_sign_in_page() {
    let Some(python) = python_with_selenium() else {
        return;
    };
    let site = Site::start();
    let owner = site.user("owner@acme.example", "acme", "owner");
    site.run(&python, "log_out_everywhere", json!({ "owner": owner }));
}
