//! `keyward scan --report`: sends the keyward keys a scan found to the server,
//! which disables the live ones. Only each key's SHA-256 travels (the server
//! stores nothing else), with where it was found.

use super::api::Api;
use keyward_scan::{Finding, Validation};
use serde_json::{json, Value};
use std::collections::HashSet;

/// Reports checksum-valid keyward keys among `findings`; prints the outcome of
/// each to stderr.
pub fn send(findings: &[Finding]) -> anyhow::Result<()> {
    let mut seen = HashSet::new();
    let leaks: Vec<Value> = findings
        .iter()
        .filter(|f| f.rule_id.starts_with("keyward.") && f.validated == Some(Validation::Checksum))
        .filter(|f| seen.insert(f.secret_sha256.clone()))
        .map(|f| {
            let location = match &f.commit {
                Some(c) => format!("{}:{} (commit {})", f.path, f.line, c.id),
                None => format!("{}:{}", f.path, f.line),
            };
            json!({"token_hash": f.secret_sha256, "location": location, "source": "scan"})
        })
        .collect();
    if leaks.is_empty() {
        eprintln!("keyward: no keyward keys to report");
        return Ok(());
    }
    let api = Api::from_env()?;
    let answer = api.post("/api/v1/leaks", &json!({ "leaks": leaks }))?;
    let mut disabled = 0;
    for (sent, result) in leaks
        .iter()
        .zip(answer["data"].as_array().into_iter().flatten())
    {
        let what = match result["result"].as_str().unwrap_or("") {
            "disabled" => {
                disabled += 1;
                "was live and is now DISABLED"
            }
            "already_leaked" => "was already disabled as leaked",
            "inactive" => "is not active (revoked or expired)",
            _ => "is not a key of this server",
        };
        let name = match (result["hint"].as_str(), result["key_id"].as_str()) {
            (Some(hint), Some(id)) => format!("{hint} ({id})"),
            _ => "a key".to_owned(),
        };
        eprintln!(
            "keyward: {name} at {}: {what}",
            sent["location"].as_str().unwrap_or("")
        );
    }
    eprintln!(
        "keyward: reported {} keys, {disabled} disabled",
        leaks.len()
    );
    Ok(())
}
