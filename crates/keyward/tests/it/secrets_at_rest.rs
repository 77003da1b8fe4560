//! `keyward serve` keeps its data private and its stored secrets sealed: file
//! modes, warnings about wider ones, and a clear refusal to start with the
//! wrong secrets key.

use crate::support::{keyward, ServeProcess};
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn serve(data_dir: &Path) -> Command {
    let mut c = keyward();
    c.args([
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--metrics-listen",
        "off",
        "--upstream",
        "simulated",
        "--data-dir",
    ])
    .arg(data_dir)
    .env("KEYWARD_LOG", "info")
    .env_remove("KEYWARD_CONFIG")
    .env_remove("KEYWARD_SECRETS_KEY")
    .stdout(Stdio::null())
    .stderr(Stdio::piped());
    c
}

/// Starts `keyward serve`, returns what it logged until it was serving, and stops it.
fn start_up_log(data_dir: &Path) -> String {
    let mut child = serve(data_dir).spawn().unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("keyward is serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    log
}

#[test]
fn serve_keeps_the_data_dir_private_and_warns_about_wider_modes() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    let log = start_up_log(&dir);
    assert!(log.contains("keyward is serving"), "{log}");
    assert_eq!(mode(&dir), 0o700);
    for name in [
        "keyward.db",
        "keyward.db-wal",
        "secrets.key",
        "initial-admin-key",
    ] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
    }
    assert!(
        !log.contains("other users"),
        "no warning about modes on a fresh start: {log}"
    );

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let db = dir.join("keyward.db");
    std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o644)).unwrap();
    let log = start_up_log(&dir);
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("data directory is open to other users") && l.contains("0755")),
        "{log}"
    );
    assert!(
        warnings
            .iter()
            .any(|l| l.contains("database file") && l.contains("0644")),
        "{log}"
    );
}

#[test]
fn serve_refuses_to_start_with_the_wrong_secrets_key_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServeProcess::start(dir.path(), &[]);
    let added = server.cli_json(&["webhooks", "add", "https://hooks.example.test/k", "--json"]);
    assert!(added["secret"].is_string(), "{added}");
    server.terminate();

    // Another key in the environment.
    let other = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    let out = serve(dir.path())
        .env("KEYWARD_SECRETS_KEY", other)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("do not open with the key given in KEYWARD_SECRETS_KEY"),
        "{stderr}"
    );
    assert!(!stderr.contains(other), "the key is never printed");

    // The key file replaced by another key.
    std::fs::write(dir.path().join("secrets.key"), format!("{other}\n")).unwrap();
    let out = serve(dir.path()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("secrets.key"), "{stderr}");
}

/// Issue 17, item 9: a real upstream without its key is refused at start,
/// naming the variable, before anything is created; `--upstream-no-key` says
/// the upstream needs none.
#[test]
fn serve_refuses_a_real_upstream_without_its_key_unless_told_it_needs_none() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    // `serve` with a real upstream (port 9: discard, never called here).
    let real = || {
        let mut c = keyward();
        c.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "off",
            "--upstream",
            "http://127.0.0.1:9/v1",
            "--data-dir",
        ])
        .arg(&dir)
        .env("KEYWARD_LOG", "info")
        .env_remove("KEYWARD_CONFIG")
        .env_remove("KEYWARD_UPSTREAM_NO_KEY")
        .env_remove("KEYWARD_UPSTREAM_KEY_ENV")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
        c
    };
    let out = real()
        .env("KEYWARD_TEST_UPSTREAM_KEY", "")
        .args(["--upstream-key-env", "KEYWARD_TEST_UPSTREAM_KEY"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("KEYWARD_TEST_UPSTREAM_KEY is not set")
            && stderr.contains("--upstream-no-key"),
        "{stderr}"
    );
    assert!(!dir.exists(), "nothing is created before the refusal");

    let mut child = real()
        .env_remove("OPENAI_API_KEY")
        .arg("--upstream-no-key")
        .spawn()
        .unwrap();
    let mut log = String::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        log.push_str(&line);
        log.push('\n');
        if line.contains("keyward is serving") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(log.contains("keyward is serving"), "{log}");
    assert!(log.contains("without upstream credentials"), "{log}");
}

/// Two nodes on one database that each made a key of their own (separate data
/// directories, no `KEYWARD_SECRETS_KEY`) would each fail to open what the
/// other sealed, long after starting: the second refuses to start instead,
/// naming the problem, and keeps no key file; given the first's key, it starts.
#[test]
fn a_node_with_a_key_of_its_own_refuses_a_database_set_up_with_another() {
    let first = tempfile::tempdir().unwrap();
    ServeProcess::start(first.path(), &[]).terminate();
    let db = format!("sqlite://{}", first.path().join("keyward.db").display());

    let second = tempfile::tempdir().unwrap();
    let out = serve(second.path())
        .args(["--database", &db])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("is not the secrets key this database was set up with"),
        "{stderr}"
    );
    assert!(
        !second.path().join("secrets.key").exists(),
        "the key made for nothing is not kept"
    );

    let key = std::fs::read_to_string(first.path().join("secrets.key")).unwrap();
    let mut child = serve(second.path())
        .args(["--database", &db])
        .env("KEYWARD_SECRETS_KEY", key.trim())
        .spawn()
        .unwrap();
    let serving = BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .any(|line| line.contains("keyward is serving"));
    let _ = child.kill();
    let _ = child.wait();
    assert!(serving, "the same key starts");
}
