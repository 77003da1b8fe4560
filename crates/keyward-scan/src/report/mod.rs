//! Output formats. Each writes a complete, sorted list of findings to a
//! writer; none of them decides the exit code.

pub mod human;
pub mod json;
pub mod progress;
pub mod sarif;

use std::io::{self, Write};

use crate::rules::RuleSet;
use crate::Finding;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Redacted text for people, coloured on a terminal.
    Human,
    /// One JSON array.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// SARIF 2.1.0 (GitHub code scanning).
    Sarif,
}

/// How to render findings.
#[derive(Debug, Clone, Copy, Default)]
pub struct ReportOptions {
    /// Include the secret itself.
    pub show_secrets: bool,
    /// Use ANSI colours (human format only).
    pub color: bool,
}

/// Sorts findings into the stable report order: path, line, column, rule.
pub fn sort_findings(findings: &mut [Finding]) {
    findings.sort_by(|a, b| {
        (&a.path, a.line, a.column, &a.rule_id).cmp(&(&b.path, b.line, b.column, &b.rule_id))
    });
}

/// Writes `findings` in `format`.
pub fn write(
    format: Format,
    out: &mut dyn Write,
    findings: &[Finding],
    rules: &RuleSet,
    options: ReportOptions,
) -> io::Result<()> {
    match format {
        Format::Human => human::write(out, findings, options),
        Format::Json => json::write_array(out, findings, options),
        Format::Jsonl => json::write_lines(out, findings, options),
        Format::Sarif => sarif::write(out, findings, rules, options),
    }
}
