//! Helpers shared by the integration tests.
#![allow(dead_code)] // reason: each test module uses a different subset

use std::path::Path;
use std::sync::Arc;

use keyward_scan::matcher::{Matcher, ValueAllowlist};
use keyward_scan::rules::RuleSet;
use keyward_scan::scanner::CollectSink;
use keyward_scan::{Diagnostic, Finding, ScanOptions, Scanner};

/// A valid-checksum keyward key built from `random` (32 base62 chars).
pub fn keyward_key(random: &str) -> String {
    assert_eq!(random.len(), 32);
    let mut n = crc32fast::hash(random.as_bytes());
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = B62[(n % 62) as usize];
        n /= 62;
    }
    format!("kwk_{random}{}", std::str::from_utf8(&sum).unwrap())
}

/// A GitHub classic token with a valid checksum.
pub fn github_token(random: &str) -> String {
    let k = keyward_key(&format!("{random}00"));
    // Recompute for the 30-char body GitHub uses.
    let mut n = crc32fast::hash(random.as_bytes());
    const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut sum = [b'0'; 6];
    for slot in sum.iter_mut().rev() {
        *slot = B62[(n % 62) as usize];
        n /= 62;
    }
    drop(k);
    format!("ghp_{random}{}", std::str::from_utf8(&sum).unwrap())
}

pub const KEY_RANDOM: &str = "Zr4Qw8Ep2Ty6Ui0Oa3Sd7Fg1Hj5Kl9Xc";
pub const AWS_ID: &str = "AKIAZ7QW3ERT5YUI2OPA"; // keyward:allow fixture

pub fn scanner() -> Scanner {
    scanner_with(ScanOptions::default())
}

pub fn scanner_with(options: ScanOptions) -> Scanner {
    let matcher = Matcher::new(RuleSet::builtin().unwrap(), ValueAllowlist::default());
    Scanner::new(matcher, options)
}

pub struct Outcome {
    pub findings: Vec<Finding>,
    pub diagnostics: Vec<Diagnostic>,
}

impl Outcome {
    pub fn rule_ids(&self) -> Vec<&str> {
        self.findings.iter().map(|f| &*f.rule_id).collect()
    }
    pub fn find(&self, rule: &str) -> &Finding {
        self.findings
            .iter()
            .find(|f| &*f.rule_id == rule)
            .unwrap_or_else(|| panic!("no {rule} finding in {:#?}", self.findings))
    }
}

fn outcome(sink: CollectSink) -> Outcome {
    let mut findings = sink.findings.into_inner().unwrap();
    keyward_scan::report::sort_findings(&mut findings);
    Outcome {
        findings,
        diagnostics: sink.diagnostics.into_inner().unwrap(),
    }
}

pub fn scan_paths(scanner: &Scanner, paths: &[&Path]) -> Outcome {
    let sink = CollectSink::default();
    let paths: Vec<_> = paths.iter().map(|p| p.to_path_buf()).collect();
    scanner.scan_paths(&paths, &sink).unwrap();
    outcome(sink)
}

pub fn scan_bytes(scanner: &Scanner, bytes: &[u8]) -> Outcome {
    let sink = CollectSink::default();
    scanner.scan_reader("-", &mut &bytes[..], &sink);
    outcome(sink)
}

pub fn scan_text(text: &str) -> Outcome {
    scan_bytes(&scanner(), text.as_bytes())
}

pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=Ada Lovelace",
            "-c",
            "user.email=ada@example.org",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

pub fn git_history(scanner: &Scanner, repo: &Path, since: Option<&str>) -> Outcome {
    let sink = CollectSink::default();
    scanner.scan_git_history(repo, since, &sink).unwrap();
    outcome(sink)
}

pub fn git_staged(scanner: &Scanner, repo: &Path) -> Outcome {
    let sink = CollectSink::default();
    scanner.scan_git_staged(repo, &sink).unwrap();
    outcome(sink)
}

pub fn arc<T>(t: T) -> Arc<T> {
    Arc::new(t)
}
