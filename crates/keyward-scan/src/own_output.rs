//! Files keyward wrote itself — baselines, JSON and JSONL reports, SARIF
//! logs — hold secrets' SHA-256 hashes under names such as `secret_sha256`,
//! which the generic rules would report as secrets (issue 17, item 1): a
//! committed baseline would then fail every scan that uses it.
//!
//! A file counts as keyward's output only if it parses wholly as one of
//! those schemas (every member known, every hash 64 lowercase hex digits; a
//! SARIF log must name `keyward` as its tool). It is then still scanned,
//! but the hash values it holds are exempt — nothing else is — so a secret
//! pasted anywhere else in such a file (a path, an author, a `secret` shown
//! with `--show-secrets`, a member added by hand) is still reported, and a
//! file that only looks like a baseline is scanned like any other.
//!
//! The check runs once per input and costs nothing for most: it parses only
//! inputs whose first bytes look like JSON and carry one of the markers.

use std::collections::HashSet;

use memchr::memmem;
use serde::Deserialize;
use serde_json::Value;

use crate::baseline::TOOL;
use crate::report::sarif;

/// Values exempt from findings in one input.
pub(crate) type Exempt = HashSet<Box<[u8]>>;

/// Largest input read whole to check whether keyward wrote it; a larger
/// one is scanned like any other file.
pub(crate) const MAX_LEN: usize = 64 << 20;

/// How far into an input the markers are looked for: every format writes
/// one in its first object.
const MARKER_WINDOW: usize = 4096;

/// Whether the start of an input may be keyward's output and is worth
/// reading whole and parsing.
pub(crate) fn may_be_own_output(head: &[u8]) -> bool {
    let head = &head[..head.len().min(MARKER_WINDOW)];
    matches!(
        head.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    ) && (memmem::find(head, b"\"secret_sha256\"").is_some()
        || memmem::find(head, sarif::SCHEMA.as_bytes()).is_some())
}

/// The hash values of `data` if keyward wrote it (see the module docs),
/// `None` for any other content.
pub(crate) fn exempt_values(data: &[u8]) -> Option<Exempt> {
    if !may_be_own_output(data) {
        return None;
    }
    let hashes = baseline_hashes(data)
        .or_else(|| report_hashes(data))
        .or_else(|| report_lines_hashes(data))
        .or_else(|| sarif_hashes(data))?;
    Some(
        hashes
            .into_iter()
            .map(|h| h.into_bytes().into_boxed_slice())
            .collect(),
    )
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn all_hashes(hashes: Vec<String>) -> Option<Vec<String>> {
    hashes.iter().all(|h| is_sha256_hex(h)).then_some(hashes)
}

/// `baseline::Baseline`, with no member tolerated beyond its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineShape {
    #[serde(default)]
    tool: Option<String>,
    version: u32,
    secrets: Vec<BaselineEntryShape>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineEntryShape {
    secret_sha256: String,
    #[allow(dead_code)] // reason: parsed so that the shape is checked whole
    rule_id: String,
}

fn baseline_hashes(data: &[u8]) -> Option<Vec<String>> {
    let b: BaselineShape = serde_json::from_slice(data).ok()?;
    if b.version != 1 || b.tool.as_deref().is_some_and(|t| t != TOOL) {
        return None;
    }
    all_hashes(b.secrets.into_iter().map(|e| e.secret_sha256).collect())
}

/// `report::json::JsonFinding`, with no member tolerated beyond its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // reason: parsed so that the shape is checked whole
struct ReportFindingShape {
    rule_id: String,
    rule_name: String,
    path: String,
    line: u64,
    column: u64,
    end_line: u64,
    end_column: u64,
    secret_sha256: String,
    redacted: String,
    commit: Option<String>,
    author: Option<String>,
    author_email: Option<String>,
    date: Option<String>,
    validated: Option<String>,
    secret: Option<String>,
}

fn report_hashes(data: &[u8]) -> Option<Vec<String>> {
    let findings: Vec<ReportFindingShape> = serde_json::from_slice(data).ok()?;
    all_hashes(findings.into_iter().map(|f| f.secret_sha256).collect())
}

fn report_lines_hashes(data: &[u8]) -> Option<Vec<String>> {
    let mut hashes = Vec::new();
    for line in data.split(|&b| b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let f: ReportFindingShape = serde_json::from_slice(line).ok()?;
        hashes.push(f.secret_sha256);
    }
    all_hashes(hashes)
}

fn sarif_hashes(data: &[u8]) -> Option<Vec<String>> {
    let log: Value = serde_json::from_slice(data).ok()?;
    if log["version"] != "2.1.0" {
        return None;
    }
    let mut hashes = Vec::new();
    for run in log["runs"].as_array()? {
        if run["tool"]["driver"]["name"] != TOOL {
            return None;
        }
        for result in run["results"].as_array()? {
            let fingerprints = result["partialFingerprints"].as_object()?;
            if fingerprints.len() != 1 {
                return None;
            }
            hashes.push(fingerprints.get("secretSha256/v1")?.as_str()?.to_string());
        }
    }
    all_hashes(hashes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "5f2b1d7c0a9e8f6b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b";

    #[test]
    fn baselines_old_and_new_are_recognised() {
        for text in [
            format!(r#"{{"version":1,"secrets":[{{"secret_sha256":"{HASH}","rule_id":"x.y"}}]}}"#),
            format!(
                r#"{{"tool":"keyward","version":1,"secrets":[{{"secret_sha256":"{HASH}","rule_id":"x.y"}}]}}"#
            ),
        ] {
            let exempt = exempt_values(text.as_bytes()).expect(&text);
            assert!(exempt.contains(HASH.as_bytes()));
        }
    }

    #[test]
    fn look_alikes_are_not_recognised() {
        for text in [
            // A member keyward does not write.
            format!(
                r#"{{"version":1,"secrets":[{{"secret_sha256":"{HASH}","rule_id":"x.y"}}],"api_key":"x"}}"#
            ),
            // A "hash" that is not one.
            r#"{"version":1,"secrets":[{"secret_sha256":"Tr0ub4dor3xKq9Lm8fK2mQ9xLp4RtZ7w","rule_id":"x.y"}]}"#.to_string(),
            // Another tool.
            format!(
                r#"{{"tool":"other","version":1,"secrets":[{{"secret_sha256":"{HASH}","rule_id":"x.y"}}]}}"#
            ),
            // Not JSON at all.
            format!("secret_sha256 = \"{HASH}\""),
        ] {
            assert!(exempt_values(text.as_bytes()).is_none(), "{text}");
        }
    }
}
