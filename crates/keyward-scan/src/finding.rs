//! What the scanner reports.

use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

/// The bytes of a found secret. `Debug` and `Display` redact it so that it
/// cannot end up in a log by accident; [`Secret::expose`] is the explicit way in.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps secret bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    /// The secret itself. Callers decide whether showing it is allowed
    /// (`--show-secrets`) or sending it is (a later `--report`).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Lowercase hex SHA-256 of the secret: the identity used by baselines and
    /// by keyward's server, which stores only this hash of its keys.
    pub fn sha256_hex(&self) -> String {
        hex::encode(Sha256::digest(&self.0))
    }

    /// A redacted form that keeps a short prefix (enough to recognise the
    /// provider) and hides the rest.
    pub fn redacted(&self) -> String {
        let text = String::from_utf8_lossy(&self.0);
        let chars: Vec<char> = text.chars().collect();
        let keep = (chars.len() / 4)
            .clamp(1, 12)
            .min(chars.len().saturating_sub(1));
        let mut out: String = chars[..keep].iter().collect();
        out.push_str("****");
        out
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({})", self.redacted())
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// How a finding was confirmed beyond its pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validation {
    /// An embedded checksum (GitHub, npm, keyward tokens) is correct, so the
    /// token is certainly of that provider's format.
    Checksum,
}

impl Validation {
    /// The name used in reports (`"checksum"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Validation::Checksum => "checksum",
        }
    }
}

/// The commit that introduced a secret (git mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// Full commit id.
    pub id: String,
    /// Author name.
    pub author: String,
    /// Author email.
    pub email: String,
    /// Author date, ISO 8601 strict.
    pub date: String,
}

/// One secret found at one place.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The rule's stable id, e.g. `openai.project-key`.
    pub rule_id: Arc<str>,
    /// The rule's human name.
    pub rule_name: Arc<str>,
    /// Where: the path as given joined with the file's relative path, the path
    /// within the repository in git mode, archive members as `outer.zip!/inner`.
    pub path: String,
    /// 1-based line of the secret's first byte; 0 in binary files, which have
    /// no lines.
    pub line: u64,
    /// 1-based column (in Unicode code points) of the secret's first
    /// character; in binary files, the 1-based byte offset.
    pub column: u64,
    /// Line of the secret's last character.
    pub end_line: u64,
    /// Column just after the secret's last character (exclusive, as in SARIF).
    pub end_column: u64,
    /// The secret itself.
    pub secret: Secret,
    /// Hex SHA-256 of the secret.
    pub secret_sha256: String,
    /// The commit that introduced it (git mode only).
    pub commit: Option<Arc<CommitInfo>>,
    /// Whether a checksum confirmed it.
    pub validated: Option<Validation>,
}
