//! keyward's leak scanner: find API keys and other secrets wherever they were
//! written — files, directories, git history, staged changes, archives, app
//! bundles, binaries and standard input.
//!
//! The crate is a library with no server dependency and no network I/O; the
//! `keyward scan` command is a thin layer over it. The pieces:
//!
//! - [`rules`]: detection rules as data (one TOML file per provider, embedded),
//!   with examples that [`rules::check`] proves.
//! - [`matcher`]: the two-stage matcher — a keyword DFA over every rule's
//!   keywords (`keywords`), then only the triggered rules' regexes — with
//!   per-thread [`matcher::Scratch`] space.
//! - [`scanner`]: the engine that feeds inputs through the matcher in bounded
//!   blocks and turns matches into [`Finding`]s delivered to a [`Sink`].
//! - [`input`]: the inputs (file system walk, git history and index, archives,
//!   readers such as stdin).
//! - [`report`]: output formats (human, JSON, JSONL, SARIF).
//! - [`baseline`] and [`config`]: suppression without churn.
//!
//! Nothing in the engine prints: findings and diagnostics go to a [`Sink`].
#![warn(missing_docs)]

pub mod baseline;
pub mod config;
mod error;
mod filter;
mod finding;
pub mod input;
mod keywords;
pub mod matcher;
mod own_output;
pub mod report;
pub mod rules;
pub mod scanner;

pub use error::{Diagnostic, DiagnosticKind, ScanError};
pub use finding::{CommitInfo, Finding, Secret, Validation};
pub use scanner::{ScanOptions, ScanStats, Scanner, Sink};
