//! `keyward scan --report`: sends the keyward keys a scan found to the server,
//! which disables the live ones. Only each key's SHA-256 travels (the server
//! stores nothing else), with where it was found.

use super::api::Api;
use keyward_api::leaks::{LeakResult, ReportLeaks, ReportedLeak};
use keyward_api::List;
use keyward_scan::{Finding, Validation};
use std::collections::HashSet;

/// Reports checksum-valid keyward keys among `findings`; prints the outcome of
/// each to stderr.
pub fn send(findings: &[Finding]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let leaks: Vec<ReportedLeak> = findings
        .iter()
        .filter(|f| f.rule_id.starts_with("keyward.") && f.validated == Some(Validation::Checksum))
        .filter(|f| seen.insert(f.secret_sha256.clone()))
        .map(|f| {
            let location = match &f.commit {
                Some(c) => format!("{}:{} (commit {})", f.path, f.line, c.id),
                None => format!("{}:{}", f.path, f.line),
            };
            ReportedLeak {
                token: None,
                token_hash: Some(f.secret_sha256.clone()),
                url: String::new(),
                location,
                source: "scan".into(),
            }
        })
        .collect();
    if leaks.is_empty() {
        eprintln!("keyward: no keyward keys to report");
        return Ok(());
    }
    let api = Api::from_env()?;
    let count = leaks.len();
    let body = ReportLeaks { leaks };
    let answer: List<LeakResult> = api.post_as("/api/v1/leaks", &body)?;
    let mut disabled = 0;
    for (sent, result) in body.leaks.iter().zip(&answer.data) {
        let what = match result.outcome.result.as_str() {
            "disabled" => {
                disabled += 1;
                "was live and is now DISABLED"
            }
            "already_leaked" => "was already disabled as leaked",
            "inactive" => "is not active (revoked or expired)",
            _ => "is not a key of this server",
        };
        let name = match (&result.outcome.hint, &result.outcome.key_id) {
            (Some(hint), Some(id)) => format!("{hint} ({id})"),
            _ => "a key".to_owned(),
        };
        eprintln!("keyward: {name} at {}: {what}", sent.location);
    }
    eprintln!("keyward: reported {} keys, {disabled} disabled", count);
    Ok(())
}
