//! `/api/v1/leaks` and `/api/v1/keys/{id}/clear-leak`.

use keyward_core::{KeyId, LeakReportId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Reports answered when a query names no limit.
pub const DEFAULT_LIMIT: i64 = 100;

/// The source recorded for a report that names none.
pub const DEFAULT_SOURCE: &str = "api";

/// `POST /api/v1/leaks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportLeaks {
    /// The tokens found.
    pub leaks: Vec<ReportedLeak>,
}

/// One reported token: the token itself or its SHA-256 (hex), and where it was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReportedLeak {
    /// The token as found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Or its SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_hash: Option<String>,
    /// Where it was found.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub url: String,
    /// Where in that place (file and line, …).
    #[serde(default)]
    pub location: String,
    /// Who found it; [`DEFAULT_SOURCE`] when absent.
    #[serde(default = "default_source")]
    pub source: String,
}

fn default_source() -> String {
    DEFAULT_SOURCE.into()
}

/// Filters of `GET /api/v1/leaks`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeakQuery {
    /// Only this key's reports.
    pub key: Option<String>,
    /// At most this many reports ([`DEFAULT_LIMIT`], 1 to 1,000).
    pub limit: Option<i64>,
}

impl LeakQuery {
    /// The limit asked for, or the default, within 1 to 1,000.
    pub fn limit(&self) -> i64 {
        self.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, 1_000)
    }
}

/// A stored report that one of our keys was found somewhere, as `GET
/// /api/v1/leaks` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeakReport {
    /// Its id.
    #[schema(value_type = String)]
    pub id: LeakReportId,
    /// The key found.
    #[schema(value_type = String)]
    pub key_id: KeyId,
    /// SHA-256 (hex) of the exposed secret: which of the key's secrets leaked.
    pub token_hash: String,
    /// Who found it: `github`, `api`, `watcher`, ….
    pub source: String,
    /// Where: a URL, or empty when unknown.
    pub url: String,
    /// Finer position (a path and line, an archive member), or empty.
    pub location: String,
    /// The reporter's name for the token type (GitHub's `type`), or empty.
    pub token_type: String,
    /// What the report did: `disabled`, `already_leaked` or `inactive`.
    pub outcome: String,
    /// The admin key id, `github`, or `watcher:<name>`.
    pub reporter: String,
    /// When, ms.
    pub reported_at: i64,
}

/// `POST /api/v1/keys/{id}/clear-leak`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClearLeak {
    /// Why the report was false; recorded in the audit log.
    pub reason: String,
}

/// What a leak response did about one token: whether it is one of ours and, if
/// so, which key and its status now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct KeyMatch {
    /// `not_keyward`, `unknown`, or what happened to the key (`disabled`, …).
    pub result: String,
    /// The key's id, when the token is one of ours.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub key_id: Option<KeyId>,
    /// The key's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_name: Option<String>,
    /// `admin` for an admin key; absent for a gateway key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_kind: Option<String>,
    /// The key's display hint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// The key's status now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

impl KeyMatch {
    /// A token that matched no key: `result` says why.
    pub fn unmatched(result: &str) -> Self {
        Self {
            result: result.into(),
            key_id: None,
            key_name: None,
            key_kind: None,
            hint: None,
            status: None,
        }
    }
}

/// What `POST /api/v1/leaks` did with one reported token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct LeakResult {
    /// The token's SHA-256, hex.
    pub token_hash: String,
    /// What was done about it.
    #[serde(flatten)]
    pub outcome: KeyMatch,
}

/// The answer to `POST /api/v1/scan-uploads`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadScan {
    /// The upload's name.
    pub name: String,
    /// One entry per token found that is, or may be, one of ours.
    pub data: Vec<UploadFinding>,
}

/// A token found in an upload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadFinding {
    /// Where in the upload.
    pub location: String,
    /// What was done about it.
    #[serde(flatten)]
    pub outcome: KeyMatch,
}

/// The name an upload gets when its query names none.
pub const DEFAULT_UPLOAD_NAME: &str = "upload";

/// The query of `POST /api/v1/scan-uploads`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct UploadQuery {
    /// The upload's name ([`DEFAULT_UPLOAD_NAME`] when absent).
    pub name: Option<String>,
}
