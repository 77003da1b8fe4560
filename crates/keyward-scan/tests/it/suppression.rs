use std::path::Path;

use keyward_scan::baseline::Baseline;
use keyward_scan::config::Config;
use keyward_scan::matcher::Matcher;
use keyward_scan::rules::RuleSet;
use keyward_scan::{ScanOptions, Scanner};

use crate::support::*;

const OTHER_AWS: &str = "AKIAQ4WE7RT2YU6IO3PA"; // keyward:allow fixture

#[test]
fn baseline_matches_by_secret_not_by_position() {
    let before = format!("a = 1\nAWS={AWS_ID}\nb = 2\n");
    let baseline = Baseline::from_findings(&scan_text(&before).findings);
    assert_eq!(baseline.secrets.len(), 1);
    let scanner = scanner().with_baseline(&baseline);
    // The known secret moved to another line: still suppressed.
    let moved = format!("a = 1\nb = 2\n\n\nAWS={AWS_ID}\n");
    assert!(scan_bytes(&scanner, moved.as_bytes()).findings.is_empty());
    // A new secret on the line the baselined one used to be on: reported.
    let replaced = format!("a = 1\nAWS={OTHER_AWS}\nb = 2\n");
    let out = scan_bytes(&scanner, replaced.as_bytes());
    assert_eq!(out.findings.len(), 1);
    assert_eq!(out.findings[0].secret.expose(), OTHER_AWS.as_bytes());
}

#[test]
fn baseline_files_do_not_churn() {
    let a = scan_text(&format!("{AWS_ID}\n{OTHER_AWS}\n")).findings;
    let b = scan_text(&format!("\n\n{OTHER_AWS}\nx\n{AWS_ID}\n{AWS_ID}\n")).findings;
    let (ja, jb) = (
        Baseline::from_findings(&a).to_json(),
        Baseline::from_findings(&b).to_json(),
    );
    assert_eq!(ja, jb, "same secrets, same file, wherever they are");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("baseline.json");
    std::fs::write(&path, &ja).unwrap();
    assert_eq!(Baseline::load(&path).unwrap(), Baseline::from_findings(&a));
    std::fs::write(&path, "{\"version\": 9, \"secrets\": []}").unwrap();
    assert!(Baseline::load(&path).is_err());
}

#[test]
fn keyward_allow_suppresses_its_line_only() {
    let text = format!("A={AWS_ID} # keyward:allow test fixture\nB={OTHER_AWS}\n");
    let out = scan_text(&text);
    assert_eq!(out.findings.len(), 1);
    assert_eq!(out.findings[0].line, 2);
}

fn scanner_from_config(toml: &str) -> Scanner {
    let config = Config::parse(toml, Path::new(".keyward.toml")).unwrap();
    let mut rules = RuleSet::builtin().unwrap();
    config.apply_rules(&mut rules).unwrap();
    let options = ScanOptions {
        skip_paths: config.skip_paths().unwrap(),
        ..ScanOptions::default()
    };
    Scanner::new(
        Matcher::new(rules, config.value_allowlist().unwrap()),
        options,
    )
}

#[test]
fn config_adds_rules_and_allowlists_paths_values_and_rules() {
    let scanner = scanner_from_config(&format!(
        r#"
[allow]
paths = ["**/fixtures/**"]
values = ["{OTHER_AWS}"]
rules = ["jwt.token"]

[[rules]]
id = "acme.internal-token"
name = "ACME internal token"
pattern = '\bacme_[A-Za-z0-9]{{24}}\b'
keywords = ["acme_"]
examples = ["acme_Zr4Qw8Ep2Ty6Ui0Oa3Sd7Fg1"]
negative_examples = ["acme_short"]
"#
    ));
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("tests/fixtures")).unwrap();
    std::fs::write(
        dir.path().join("tests/fixtures/keys.txt"),
        format!("{AWS_ID}\n"),
    )
    .unwrap();
    let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6Ik.SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"; // keyward:allow fixture
    std::fs::write(
        dir.path().join("app.cfg"),
        format!("a={OTHER_AWS}\nb=acme_Zr4Qw8Ep2Ty6Ui0Oa3Sd7Fg1\nc={jwt}\n"),
    )
    .unwrap();
    let out = scan_paths(&scanner, &[dir.path()]);
    assert_eq!(
        out.rule_ids(),
        ["acme.internal-token"],
        "{:#?}",
        out.findings
    );
    // Without the config, the allowlisted ones are findings (and the extra
    // rule does not exist).
    let mut plain = scan_paths(&super::support::scanner(), &[dir.path()])
        .rule_ids()
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
    plain.sort();
    assert_eq!(
        plain,
        ["aws.access-key-id", "aws.access-key-id", "jwt.token"]
    );
}

#[test]
fn invalid_config_is_an_error() {
    assert!(Config::parse("[allow]\nunknown = 1\n", Path::new("x")).is_err());
    let bad_pattern = Config::parse("[allow]\nvalue_patterns = [\"(\"]\n", Path::new("x")).unwrap();
    assert!(bad_pattern.value_allowlist().is_err());
}
