//! Baselines: the secrets a team has already triaged, keyed by the secret's
//! SHA-256 — not by file and line — so moving code around never un-suppresses
//! a known secret, and a new secret on an old line is still reported.
//!
//! The file is JSON, sorted by hash and free of positions, so regenerating it
//! after unrelated edits produces no diff:
//!
//! ```json
//! {"tool": "keyward", "version": 1, "secrets": [{"secret_sha256": "…", "rule_id": "aws.access-key-id"}]}
//! ```
//!
//! `tool` marks the file as keyward's own output, so that scanning a tree
//! that holds its baseline does not report the hashes as secrets (see
//! `own_output`); baselines written before it existed load as well.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Finding, ScanError};

/// The `tool` written in baselines, SARIF logs' driver name.
pub const TOOL: &str = "keyward";

/// One triaged secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineEntry {
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// The rule that found it (informational; suppression is by hash only).
    pub rule_id: String,
}

/// A set of triaged secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Baseline {
    /// The program that wrote the file: `keyward` (absent in old baselines).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool: Option<String>,
    /// Format version (1).
    pub version: u32,
    /// The secrets, sorted by hash.
    pub secrets: Vec<BaselineEntry>,
}

impl Baseline {
    /// A baseline holding every secret of `findings`.
    pub fn from_findings(findings: &[Finding]) -> Self {
        let mut by_hash: BTreeMap<&str, &str> = BTreeMap::new();
        for f in findings {
            by_hash.entry(&f.secret_sha256).or_insert(&f.rule_id);
        }
        Self {
            tool: Some(TOOL.to_string()),
            version: 1,
            secrets: by_hash
                .into_iter()
                .map(|(h, r)| BaselineEntry {
                    secret_sha256: h.to_string(),
                    rule_id: r.to_string(),
                })
                .collect(),
        }
    }

    /// Reads a baseline file.
    pub fn load(path: &Path) -> Result<Self, ScanError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScanError::Io {
            path: path.to_path_buf(),
            error: source,
        })?;
        let baseline: Self = serde_json::from_str(&text).map_err(|e| ScanError::Baseline {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if baseline.tool.as_deref().is_some_and(|t| t != TOOL) {
            return Err(ScanError::Baseline {
                path: path.to_path_buf(),
                message: "not a keyward baseline (its \"tool\" is not \"keyward\")".into(),
            });
        }
        if baseline.version != 1 {
            return Err(ScanError::Baseline {
                path: path.to_path_buf(),
                message: format!("unsupported version {}", baseline.version),
            });
        }
        Ok(baseline)
    }

    /// The baseline as pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("plain data serializes");
        s.push('\n');
        s
    }

    /// The suppressed hashes.
    pub fn hashes(&self) -> impl Iterator<Item = &str> {
        self.secrets.iter().map(|e| e.secret_sha256.as_str())
    }
}
