//! Errors that stop a scan ([`ScanError`]) and problems that only skip one
//! input ([`Diagnostic`]).
//!
//! The split is the exit-code policy: a [`ScanError`] means the scan could not
//! do what was asked (a path given on the command line does not exist, the git
//! repository cannot be read, a rule or config file is invalid) and the command
//! exits 2. A [`Diagnostic`] (an unreadable file found during a walk, a corrupt
//! archive, a decompression bomb) is reported and the scan goes on; the exit code
//! then still reflects the findings, unless the caller asks for strictness.

use std::fmt;
use std::path::PathBuf;

/// An error that stops the scan.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// A path or file could not be read.
    ///
    /// The OS error is part of the message and deliberately not the error's
    /// `source`: a chain printed with `{:#}` (as the binary does) would
    /// otherwise say it twice ("cannot read x: No such file…: No such file…").
    #[error("cannot read {path}: {error}")]
    Io {
        /// The path that failed.
        path: PathBuf,
        /// The underlying error.
        error: std::io::Error,
    },
    /// A rules file is not valid TOML or does not follow the rule schema.
    #[error("invalid rules file {file}: {message}")]
    RuleFile {
        /// The file name (builtin rules are named after their provider file).
        file: String,
        /// What is wrong.
        message: String,
    },
    /// One rule is invalid (bad regex, no keywords, unknown validator...).
    #[error("invalid rule {rule_id}: {message}")]
    Rule {
        /// The rule id.
        rule_id: String,
        /// What is wrong.
        message: String,
    },
    /// The `.keyward.toml` configuration is invalid.
    #[error("invalid config {path}: {message}")]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The baseline file is invalid.
    #[error("invalid baseline {path}: {message}")]
    Baseline {
        /// The baseline file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A git command failed (not a repository, unknown revision, git missing).
    #[error("git: {0}")]
    Git(String),
}

/// What kind of problem a [`Diagnostic`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiagnosticKind {
    /// A file or directory found while walking could not be read.
    Unreadable,
    /// An archive is corrupt or uses an unsupported feature; its remaining
    /// members are skipped.
    CorruptArchive,
    /// An archive exceeded a decompression limit (ratio, expanded size) and was
    /// refused as a likely decompression bomb.
    ArchiveBomb,
    /// An archive is nested deeper than the configured limit and was not opened.
    ArchiveTooDeep,
    /// A file is larger than the configured maximum and was skipped.
    TooLarge,
}

/// A problem that skipped one input without stopping the scan.
#[derive(Debug, Clone)]
pub struct Diagnostic {
    /// The kind of problem.
    pub kind: DiagnosticKind,
    /// The input concerned (archive members as `outer.zip!/inner`).
    pub path: String,
    /// A human-readable explanation.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            DiagnosticKind::Unreadable => "skipped unreadable input",
            DiagnosticKind::CorruptArchive => "skipped corrupt archive",
            DiagnosticKind::ArchiveBomb => "refused decompression bomb",
            DiagnosticKind::ArchiveTooDeep => "archive nested too deep, not opened",
            DiagnosticKind::TooLarge => "skipped file over the size limit",
        };
        write!(f, "{what}: {}: {}", self.path, self.message)
    }
}
