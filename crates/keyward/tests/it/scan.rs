//! `keyward scan`, `keyward rules`, `keyward hook` as users run them: exit
//! codes, the JSON contract, stdin, SARIF, baselines, the pre-commit flow.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

const AWS_ID: &str = "AKIAZ7QW3ERT5YUI2OPA"; // keyward:allow test fixture
const KEYWARD_KEY: &str = "kwk_Zr4Qw8Ep2Ty6Ui0Oa3Sd7Fg1Hj5Kl9Xc3uw547"; // keyward:allow test fixture

fn keyward(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keyward"))
        .current_dir(dir)
        .args(args)
        .env_remove("KEYWARD_SCAN_FORMAT")
        .env_remove("KEYWARD_SCAN_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("keyward runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exited")
}

fn stdout_json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=Ada",
            "-c",
            "user.email=ada@example.org",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn exit_codes_are_0_clean_1_findings_2_errors() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clean.rs"),
        "fn main() { println!(\"hi\"); }\n",
    )
    .unwrap();
    assert_eq!(code(&keyward(dir.path(), &["scan", "."])), 0);
    std::fs::write(
        dir.path().join(".env"),
        format!("AWS_ACCESS_KEY_ID={AWS_ID}\n"),
    )
    .unwrap();
    let found = keyward(dir.path(), &["scan", "."]);
    assert_eq!(code(&found), 1);
    let human = String::from_utf8_lossy(&found.stdout);
    assert!(
        human.contains("aws.access-key-id") && !human.contains(AWS_ID),
        "redacted by default: {human}"
    );
    assert_eq!(code(&keyward(dir.path(), &["scan", "does-not-exist"])), 2);
    assert_eq!(
        code(&keyward(dir.path(), &["scan", "--format", "xml", "."])),
        2
    );
    assert_eq!(
        code(&keyward(dir.path(), &["scan", "--git", "."])),
        2,
        "not a git repository"
    );
}

#[test]
fn json_output_is_the_stable_contract() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("src/app.py"),
        format!("import os\nKEY = \"{KEYWARD_KEY}\"\n"),
    )
    .unwrap();
    let out = keyward(dir.path(), &["scan", "--format", "json", "src"]);
    assert_eq!(code(&out), 1);
    let v = stdout_json(&out);
    let f = &v.as_array().unwrap()[0];
    assert_eq!(f["rule_id"], "keyward.standard-key");
    assert_eq!(f["path"], "src/app.py");
    assert_eq!(
        (f["line"].as_u64(), f["column"].as_u64()),
        (Some(2), Some(8))
    );
    assert_eq!(f["end_column"].as_u64(), Some(8 + KEYWARD_KEY.len() as u64));
    assert_eq!(f["validated"], "checksum");
    assert_eq!(f["commit"], Value::Null);
    assert_eq!(f["secret_sha256"].as_str().unwrap().len(), 64);
    assert!(f.get("secret").is_none());
    let shown = stdout_json(&keyward(
        dir.path(),
        &["scan", "--format", "json", "--show-secrets", "src"],
    ));
    assert_eq!(shown[0]["secret"], KEYWARD_KEY);
}

#[test]
fn stdin_is_scanned_with_a_dash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyward"))
        .current_dir(dir.path())
        .args(["scan", "--format", "jsonl", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("x\ny = {AWS_ID}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), 1);
    let line: Value =
        serde_json::from_slice(out.stdout.split(|&b| b == b'\n').next().unwrap()).unwrap();
    assert_eq!(line["path"], "-");
    assert_eq!(line["line"], 2);
}

#[test]
fn sarif_output_is_a_sarif_2_1_0_log() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let report = dir.path().join("out.sarif");
    let out = keyward(
        dir.path(),
        &[
            "scan",
            "--format",
            "sarif",
            "-o",
            report.to_str().unwrap(),
            "a.env",
        ],
    );
    assert_eq!(code(&out), 1);
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(v["version"], "2.1.0");
    assert!(v["$schema"].as_str().unwrap().contains("sarif-2.1.0"));
    let run = &v["runs"][0];
    assert_eq!(run["tool"]["driver"]["name"], "keyward");
    let result = &run["results"][0];
    assert_eq!(result["ruleId"], "aws.access-key-id");
    let idx = result["ruleIndex"].as_u64().unwrap() as usize;
    assert_eq!(
        run["tool"]["driver"]["rules"][idx]["id"],
        "aws.access-key-id"
    );
    let location = &result["locations"][0]["physicalLocation"];
    assert_eq!(location["artifactLocation"]["uri"], "a.env");
    assert_eq!(location["region"]["startLine"], 1);
    assert_eq!(location["region"]["startColumn"], 5);
}

#[test]
fn a_baseline_suppresses_known_secrets_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let write = keyward(
        dir.path(),
        &["scan", "--write-baseline", "baseline.json", "."],
    );
    assert_eq!(code(&write), 0);
    assert_eq!(
        code(&keyward(
            dir.path(),
            &["scan", "--baseline", "baseline.json", "a.env"]
        )),
        0
    );
    std::fs::write(
        dir.path().join("a.env"),
        format!("\n\nAWS={AWS_ID}\nKW={KEYWARD_KEY}\n"),
    )
    .unwrap();
    let out = keyward(
        dir.path(),
        &[
            "scan",
            "--format",
            "json",
            "--baseline",
            "baseline.json",
            "a.env",
        ],
    );
    assert_eq!(code(&out), 1);
    let v = stdout_json(&out);
    assert_eq!(v.as_array().unwrap().len(), 1);
    assert_eq!(v[0]["rule_id"], "keyward.standard-key");
}

#[test]
fn staged_mode_and_the_installed_hook() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    let hook = keyward(d, &["hook", "install"]);
    assert_eq!(code(&hook), 0, "{}", String::from_utf8_lossy(&hook.stderr));
    let script = std::fs::read_to_string(d.join(".git/hooks/pre-commit")).unwrap();
    assert!(script.contains("\"$keyward\" scan --staged"), "{script}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(d.join(".git/hooks/pre-commit"))
            .unwrap()
            .permissions()
            .mode();
        assert!(mode & 0o111 != 0, "hook is executable");
    }
    // Re-installing our own hook is fine; replacing someone else's needs --force.
    assert_eq!(code(&keyward(d, &["hook", "install"])), 0);
    std::fs::write(d.join(".git/hooks/pre-commit"), "#!/bin/sh\nexit 0\n").unwrap();
    assert_eq!(code(&keyward(d, &["hook", "install"])), 2);
    assert_eq!(code(&keyward(d, &["hook", "install", "--force"])), 0);

    assert_eq!(code(&keyward(d, &["scan", "--staged"])), 0);
    std::fs::write(d.join("creds.txt"), format!("{AWS_ID}\n")).unwrap();
    assert_eq!(
        code(&keyward(d, &["scan", "--staged"])),
        0,
        "not staged yet"
    );
    git(d, &["add", "creds.txt"]);
    assert_eq!(code(&keyward(d, &["scan", "--staged"])), 1);
}

#[test]
fn git_history_reports_the_introducing_commit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::write(d.join("k.txt"), format!("{AWS_ID}\n")).unwrap();
    git(d, &["add", "k.txt"]);
    git(d, &["commit", "-q", "-m", "oops"]);
    git(d, &["rm", "-q", "k.txt"]);
    git(d, &["commit", "-q", "-m", "fix"]);
    assert_eq!(code(&keyward(d, &["scan", "."])), 0);
    let out = keyward(d, &["scan", "--git", "--format", "json"]);
    assert_eq!(code(&out), 1);
    let v = stdout_json(&out);
    assert_eq!(v[0]["path"], "k.txt");
    assert_eq!(v[0]["author"], "Ada");
    assert_eq!(v[0]["commit"].as_str().unwrap().len(), 40);
}

#[test]
fn rules_check_and_list() {
    let dir = tempfile::tempdir().unwrap();
    let check = keyward(dir.path(), &["rules", "check"]);
    assert_eq!(
        code(&check),
        0,
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let list = stdout_json(&keyward(dir.path(), &["rules", "list", "--json"]));
    let list = list.as_array().unwrap();
    assert!(list.len() >= 150);
    assert!(list.iter().any(|r| r["id"] == "openai.project-key"));
    // A broken custom rule in .keyward.toml makes the check fail.
    std::fs::write(
        dir.path().join(".keyward.toml"),
        "[[rules]]\nid = \"x.t\"\nname = \"x\"\npattern = 'xt_[0-9]{8}'\nkeywords = [\"xt_\"]\nexamples = [\"xt_12\"]\nnegative_examples = [\"no\"]\n",
    )
    .unwrap();
    assert_eq!(code(&keyward(dir.path(), &["rules", "check"])), 1);
}

/// Issue 17, item 3: `scan --git REPO` run from another directory applies
/// the scanned repository's `.keyward.toml`, not the current directory's.
#[test]
fn config_is_found_in_the_scanned_repository_when_run_from_elsewhere() {
    let repo = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    git(repo.path(), &["init", "-q"]);
    std::fs::write(
        repo.path().join("creds.env"),
        format!("AWS_ACCESS_KEY_ID={AWS_ID}\n"),
    )
    .unwrap();
    std::fs::write(
        repo.path().join(".keyward.toml"),
        format!("[allow]\nvalues = [\"{AWS_ID}\"]\n"),
    )
    .unwrap();
    git(repo.path(), &["add", "-A"]);
    git(repo.path(), &["commit", "-q", "-m", "init"]);
    let repo_arg = repo.path().to_str().unwrap();
    for args in [
        vec!["scan", "--no-progress", "--git", repo_arg],
        vec!["scan", "--no-progress", repo_arg],
    ] {
        let out = keyward(elsewhere.path(), &args);
        assert_eq!(
            code(&out),
            0,
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
    // `--config` overrides the discovered file.
    let empty = elsewhere.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let out = keyward(
        elsewhere.path(),
        &[
            "scan",
            "--no-progress",
            "--config",
            empty.to_str().unwrap(),
            "--git",
            repo_arg,
        ],
    );
    assert_eq!(code(&out), 1);
}

fn findings_of(out: &Output) -> Vec<(String, String)> {
    stdout_json(out)
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                f["rule_id"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Issue 17, item 1: the documented workflow — write a baseline into the
/// tree, then scan the tree with it — exits 0 (the baseline's own hashes
/// used to be reported by the generic rule), and a new secret is still the
/// one finding.
#[test]
fn baseline_written_into_the_tree_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let write = keyward(
        d,
        &["scan", "--write-baseline", ".keyward-baseline.json", "."],
    );
    assert_eq!(code(&write), 0);
    let baseline = std::fs::read_to_string(d.join(".keyward-baseline.json")).unwrap();
    assert!(baseline.contains("\"tool\": \"keyward\""), "{baseline}");
    let again = keyward(
        d,
        &[
            "scan",
            "--format",
            "json",
            "--baseline",
            ".keyward-baseline.json",
            ".",
        ],
    );
    assert_eq!(code(&again), 0, "{:?}", findings_of(&again));

    std::fs::write(d.join("b.env"), format!("KW={KEYWARD_KEY}\n")).unwrap();
    let out = keyward(
        d,
        &[
            "scan",
            "--format",
            "json",
            "--baseline",
            ".keyward-baseline.json",
            ".",
        ],
    );
    assert_eq!(code(&out), 1);
    assert_eq!(
        findings_of(&out),
        [("./b.env".to_string(), "keyward.standard-key".to_string())]
    );
}

/// Issue 17, item 1: a secret pasted into a file shaped like a baseline is
/// still found: in a member keyward does not write or in a hash's place (the
/// file is then not keyward's and is scanned like any other), or in a member
/// keyward writes but that is not a hash (only hashes are exempt).
#[test]
fn secret_pasted_into_a_baseline_look_alike_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    assert_eq!(
        code(&keyward(d, &["scan", "--write-baseline", "real.json", "."])),
        0
    );
    let real: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("real.json")).unwrap()).unwrap();
    std::fs::remove_file(d.join("a.env")).unwrap();
    let pasted = "VeOM5RPOMhRtWoh46qIfK7SWwqyEfFHn"; // keyward:allow test fixture
    let mut extra = real.clone();
    extra["api_key"] = Value::from(pasted);
    std::fs::write(d.join("extra.json"), extra.to_string()).unwrap();
    let mut in_place = real.clone();
    in_place["secrets"][0]["secret_sha256"] = Value::from(pasted);
    std::fs::write(d.join("in-place.json"), in_place.to_string()).unwrap();
    let mut rule_id = real.clone();
    rule_id["secrets"][0]["rule_id"] = Value::from(AWS_ID);
    std::fs::write(d.join("rule-id.json"), rule_id.to_string()).unwrap();

    let out = keyward(d, &["scan", "--format", "json", "--show-secrets", "."]);
    assert_eq!(code(&out), 1);
    let v = stdout_json(&out);
    let found: Vec<(&str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["path"].as_str().unwrap(), f["secret"].as_str().unwrap()))
        .collect();
    assert!(!found.iter().any(|(p, _)| *p == "./real.json"), "{found:?}");
    for expected in [
        ("./extra.json", pasted),
        ("./in-place.json", pasted),
        ("./rule-id.json", AWS_ID),
    ] {
        assert!(found.contains(&expected), "{expected:?} in {found:?}");
    }
    assert_eq!(
        found.iter().filter(|(p, _)| *p == "./rule-id.json").count(),
        1,
        "in a file keyward wrote, the hashes stay exempt: {found:?}"
    );
}

/// Issue 17, item 1: JSON, JSONL and SARIF reports keyward wrote into the
/// scanned tree are not findings; a report written with `--show-secrets`
/// holds the secrets themselves and is.
#[test]
fn reports_keyward_wrote_are_not_findings() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("a.env"), format!("AWS={AWS_ID}\nKW={KEYWARD_KEY}\n")).unwrap();
    std::fs::create_dir(d.join("reports")).unwrap();
    for (format, file) in [
        ("json", "reports/r.json"),
        ("jsonl", "reports/r.jsonl"),
        ("sarif", "reports/r.sarif"),
    ] {
        let out = keyward(d, &["scan", "--format", format, "-o", file, "a.env"]);
        assert_eq!(code(&out), 1, "{format}");
    }
    std::fs::remove_file(d.join("a.env")).unwrap();
    let out = keyward(d, &["scan", "--format", "json", "."]);
    assert_eq!(code(&out), 0, "{:?}", findings_of(&out));

    std::fs::write(d.join("a.env"), format!("AWS={AWS_ID}\nKW={KEYWARD_KEY}\n")).unwrap();
    let shown = keyward(
        d,
        &[
            "scan",
            "--format",
            "json",
            "--show-secrets",
            "-o",
            "reports/shown.json",
            "a.env",
        ],
    );
    assert_eq!(code(&shown), 1);
    std::fs::remove_file(d.join("a.env")).unwrap();
    let out = keyward(d, &["scan", "--format", "json", "."]);
    assert_eq!(code(&out), 1);
    let paths: Vec<String> = findings_of(&out).into_iter().map(|(p, _)| p).collect();
    assert_eq!(paths, ["./reports/shown.json", "./reports/shown.json"]);
}

/// `git commit` in `dir` with `path` as PATH (the hook runs under it).
fn git_commit(dir: &Path, message: &str, path: &str) -> Output {
    Command::new("git")
        .current_dir(dir)
        .env("PATH", path)
        .env_remove("KEYWARD_SCAN_FORMAT")
        .env_remove("KEYWARD_SCAN_CONFIG")
        .args([
            "-c",
            "user.name=Ada",
            "-c",
            "user.email=ada@example.org",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "-q",
            "-m",
            message,
        ])
        .output()
        .expect("git runs")
}

/// PATH with the directory of the keyward under test first.
fn path_with_keyward() -> String {
    let bin = Path::new(env!("CARGO_BIN_EXE_keyward")).parent().unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// Issue 17, item 2: in a repository with a baseline at its root, the
/// installed hook lets through a commit touching a known secret (and the
/// baseline itself), and blocks one adding a new secret.
#[test]
fn hook_uses_the_repository_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::write(d.join("a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let write = keyward(
        d,
        &["scan", "--write-baseline", ".keyward-baseline.json", "."],
    );
    assert_eq!(code(&write), 0);
    assert_eq!(code(&keyward(d, &["hook", "install"])), 0);
    let path = path_with_keyward();

    git(d, &["add", "-A"]);
    let first = git_commit(d, "known secret and its baseline", &path);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );

    std::fs::write(d.join("a.env"), format!("# moved\n\nAWS={AWS_ID}\n")).unwrap();
    git(d, &["add", "a.env"]);
    let touched = git_commit(d, "touch the known secret", &path);
    assert!(
        touched.status.success(),
        "{}",
        String::from_utf8_lossy(&touched.stderr)
    );

    std::fs::write(d.join("b.env"), format!("KW={KEYWARD_KEY}\n")).unwrap();
    git(d, &["add", "b.env"]);
    let blocked = git_commit(d, "a new secret", &path);
    assert!(!blocked.status.success(), "the commit is blocked");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&blocked.stdout),
        String::from_utf8_lossy(&blocked.stderr)
    );
    assert!(
        said.contains("keyward.standard-key") && !said.contains("aws.access-key-id"),
        "only the new secret is reported: {said}"
    );
}

/// Issue 17, item 2: `[scan] baseline` in `.keyward.toml` names the
/// baseline relative to the config file, found from a subdirectory too;
/// `--baseline` overrides it and `--no-baseline` turns it off.
#[test]
fn config_names_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    std::fs::create_dir_all(d.join("security")).unwrap();
    std::fs::create_dir_all(d.join("src/deep")).unwrap();
    std::fs::write(d.join("src/a.env"), format!("AWS={AWS_ID}\n")).unwrap();
    let write = keyward(
        d,
        &["scan", "--write-baseline", "security/known.json", "src"],
    );
    assert_eq!(code(&write), 0);
    std::fs::write(
        d.join(".keyward.toml"),
        "[scan]\nbaseline = \"security/known.json\"\n",
    )
    .unwrap();
    git(d, &["add", "-A"]);
    let staged_then_committed = [
        (d.to_path_buf(), vec!["scan", "--no-progress", "."]),
        (d.to_path_buf(), vec!["scan", "--no-progress", "--staged"]),
        (
            d.join("src/deep"),
            vec!["scan", "--no-progress", "--staged"],
        ),
        (d.join("src/deep"), vec!["scan", "--no-progress", "--git"]),
    ];
    for (i, (cwd, args)) in staged_then_committed.iter().enumerate() {
        if i == 3 {
            git(d, &["commit", "-q", "-m", "init"]);
        }
        let out = keyward(cwd, args);
        assert_eq!(
            code(&out),
            0,
            "{cwd:?} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        code(&keyward(
            d,
            &["scan", "--no-progress", "--no-baseline", "."]
        )),
        1
    );
    std::fs::write(d.join("empty.json"), "{\"version\": 1, \"secrets\": []}\n").unwrap();
    assert_eq!(
        code(&keyward(
            d,
            &["scan", "--no-progress", "--baseline", "empty.json", "."]
        )),
        1,
        "--baseline overrides the config's"
    );
    // A baseline the config names but that is missing is an error, not
    // silently no baseline.
    std::fs::remove_file(d.join("security/known.json")).unwrap();
    let missing = keyward(d, &["scan", "--no-progress", "."]);
    assert_eq!(code(&missing), 2);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("known.json"));
}

fn said(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Issue 17, item 4: the hook runs the binary that installed it, so a
/// commit made with no `keyward` on PATH is still scanned; when that binary
/// is gone and none is on PATH, the commit is blocked with a message saying
/// so and how to go on; with one on PATH again, that one runs.
#[cfg(unix)]
#[test]
fn hook_runs_the_binary_that_installed_it_and_fails_closed_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    git(d, &["init", "-q"]);
    // Installed from a copy at a path that needs shell quoting.
    let bins = tempfile::tempdir().unwrap();
    let copy = bins.path().join("it's $HOME `keyward`");
    std::fs::copy(env!("CARGO_BIN_EXE_keyward"), &copy).unwrap();
    let install = Command::new(&copy)
        .current_dir(d)
        .args(["hook", "install"])
        .output()
        .unwrap();
    assert!(install.status.success(), "{}", said(&install));

    // A PATH with git and nothing else, wherever keyward is installed here.
    let git_bin = Command::new("sh")
        .args(["-c", "command -v git"])
        .output()
        .unwrap();
    assert!(git_bin.status.success(), "git is on PATH");
    let only_git = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        String::from_utf8(git_bin.stdout).unwrap().trim(),
        only_git.path().join("git"),
    )
    .unwrap();
    let no_keyward = only_git.path().to_str().unwrap();

    std::fs::write(d.join("creds.env"), format!("AWS={AWS_ID}\n")).unwrap();
    git(d, &["add", "creds.env"]);
    let blocked = git_commit(d, "a secret", no_keyward);
    assert!(!blocked.status.success());
    assert!(
        said(&blocked).contains("aws.access-key-id"),
        "scanned by the recorded binary: {}",
        said(&blocked)
    );
    git(d, &["rm", "-q", "--cached", "creds.env"]);
    std::fs::write(d.join("clean.txt"), "nothing to see\n").unwrap();
    git(d, &["add", "clean.txt"]);
    let clean = git_commit(d, "clean", no_keyward);
    assert!(clean.status.success(), "{}", said(&clean));

    std::fs::remove_file(&copy).unwrap();
    std::fs::write(d.join("clean.txt"), "still nothing\n").unwrap();
    git(d, &["add", "clean.txt"]);
    let stuck = git_commit(d, "clean again", no_keyward);
    assert!(!stuck.status.success(), "fails closed");
    let message = said(&stuck);
    assert!(
        message.contains(&format!(
            "keyward pre-commit hook: keyward binary not found at {} nor on PATH; commit blocked.",
            copy.display()
        )) && message.contains("keyward hook install --force")
            && message.contains("git commit --no-verify"),
        "{message}"
    );
    let via_path = git_commit(d, "clean again", &path_with_keyward());
    assert!(via_path.status.success(), "{}", said(&via_path));
}
