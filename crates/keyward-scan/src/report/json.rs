//! JSON and JSONL: the stable machine contract.
//!
//! Fields: `rule_id`, `rule_name`, `path`, `line`, `column`, `end_line`,
//! `end_column`, `secret_sha256`, `redacted`, `commit` (null outside git
//! mode), `author`, `author_email`, `date` (null outside git mode),
//! `validated` (`"checksum"` or null), and `secret` only when secrets are shown.

use std::io::{self, Write};

use serde::Serialize;

use super::ReportOptions;
use crate::Finding;

/// The serialized shape of a finding.
#[derive(Debug, Serialize)]
pub struct JsonFinding<'a> {
    /// See [`Finding::rule_id`].
    pub rule_id: &'a str,
    /// See [`Finding::rule_name`].
    pub rule_name: &'a str,
    /// See [`Finding::path`].
    pub path: &'a str,
    /// See [`Finding::line`].
    pub line: u64,
    /// See [`Finding::column`].
    pub column: u64,
    /// See [`Finding::end_line`].
    pub end_line: u64,
    /// See [`Finding::end_column`].
    pub end_column: u64,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: &'a str,
    /// The secret, redacted.
    pub redacted: String,
    /// Commit id (git mode).
    pub commit: Option<&'a str>,
    /// Commit author (git mode).
    pub author: Option<&'a str>,
    /// Commit author email (git mode).
    pub author_email: Option<&'a str>,
    /// Commit author date (git mode).
    pub date: Option<&'a str>,
    /// `"checksum"` when a checksum validated the secret.
    pub validated: Option<&'static str>,
    /// The secret (only when asked for).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

impl<'a> JsonFinding<'a> {
    /// The JSON view of `f`.
    pub fn new(f: &'a Finding, options: ReportOptions) -> Self {
        let commit = f.commit.as_deref();
        Self {
            rule_id: &f.rule_id,
            rule_name: &f.rule_name,
            path: &f.path,
            line: f.line,
            column: f.column,
            end_line: f.end_line,
            end_column: f.end_column,
            secret_sha256: &f.secret_sha256,
            redacted: f.secret.redacted(),
            commit: commit.map(|c| c.id.as_str()),
            author: commit.map(|c| c.author.as_str()),
            author_email: commit.map(|c| c.email.as_str()),
            date: commit.map(|c| c.date.as_str()),
            validated: f.validated.map(|v| v.as_str()),
            secret: options
                .show_secrets
                .then(|| String::from_utf8_lossy(f.secret.expose()).into_owned()),
        }
    }
}

/// Writes a pretty JSON array.
pub fn write_array(
    out: &mut dyn Write,
    findings: &[Finding],
    options: ReportOptions,
) -> io::Result<()> {
    let view: Vec<JsonFinding<'_>> = findings
        .iter()
        .map(|f| JsonFinding::new(f, options))
        .collect();
    serde_json::to_writer_pretty(&mut *out, &view)?;
    writeln!(out)
}

/// Writes one compact JSON object per line.
pub fn write_lines(
    out: &mut dyn Write,
    findings: &[Finding],
    options: ReportOptions,
) -> io::Result<()> {
    for f in findings {
        serde_json::to_writer(&mut *out, &JsonFinding::new(f, options))?;
        writeln!(out)?;
    }
    Ok(())
}
