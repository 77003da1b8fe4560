//! GitHub's secret-scanning partner program: its public keys and the check of the
//! ECDSA P-256 / SHA-256 signature it puts on every request.
//!
//! GitHub signs the exact request body (no timestamp, no nonce) with the key named
//! in `Github-Public-Key-Identifier`; the signature is base64 of an ASN.1 DER
//! ECDSA signature, in `Github-Public-Key-Signature`. Its keys are published in a
//! document of the form `{"public_keys":[{"key_identifier","key","is_current"}]}`;
//! keyward reads that document from a file and, when a URL is configured, fetches
//! it again when a request names a key it does not know (at most once a minute).

use base64::Engine;
use p256::ecdsa::signature::Verifier;
use p256::ecdsa::{Signature, VerifyingKey};
use p256::pkcs8::DecodePublicKey;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Header naming the key that signed the request.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// Header holding the base64 DER signature.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";

/// How often an unknown key identifier may trigger a fetch of the document.
const REFRESH_EVERY: Duration = Duration::from_secs(60);

/// Why a public-keys document could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PublicKeysError {
    /// The file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not GitHub's public-keys JSON.
    #[error("the GitHub public-keys document is not valid: {0}")]
    Document(String),
    /// Fetching the document failed.
    #[error("fetching the GitHub public-keys document failed: {0}")]
    Fetch(String),
}

/// Why a request's signature was refused. The text goes to the audit log.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    /// A header is absent.
    #[error("missing {0} header")]
    Missing(&'static str),
    /// No configured key has that identifier.
    #[error("unknown public key identifier")]
    UnknownKey,
    /// The signature header is not base64 of a DER ECDSA signature.
    #[error("malformed signature")]
    Malformed,
    /// The signature does not match the body.
    #[error("signature does not match the body")]
    Mismatch,
}

#[derive(Deserialize)]
struct Document {
    public_keys: Vec<DocumentKey>,
}

#[derive(Deserialize)]
struct DocumentKey {
    key_identifier: String,
    key: String,
    #[allow(dead_code)] // reason: old keys stay valid for requests already signed with them
    #[serde(default)]
    is_current: bool,
}

/// Parses a public-keys document into verifying keys by identifier.
pub fn parse_document(text: &str) -> Result<HashMap<String, VerifyingKey>, PublicKeysError> {
    let doc: Document =
        serde_json::from_str(text).map_err(|e| PublicKeysError::Document(e.to_string()))?;
    let mut keys = HashMap::new();
    for k in doc.public_keys {
        let key = VerifyingKey::from_public_key_pem(k.key.trim())
            .map_err(|e| PublicKeysError::Document(format!("key {:?}: {e}", k.key_identifier)))?;
        keys.insert(k.key_identifier, key);
    }
    Ok(keys)
}

/// GitHub's public keys as configured: from a file, and/or refreshed from a URL.
pub struct GithubKeys {
    keys: RwLock<HashMap<String, VerifyingKey>>,
    url: Option<String>,
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    http: reqwest::Client,
}

impl GithubKeys {
    /// Keys from an already parsed document (or none) and an optional URL.
    pub fn new(keys: HashMap<String, VerifyingKey>, url: Option<String>) -> Self {
        Self {
            keys: RwLock::new(keys),
            url,
            last_fetch: tokio::sync::Mutex::new(None),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Reads a public-keys document from `path`.
    pub fn load_file(path: &Path) -> Result<HashMap<String, VerifyingKey>, PublicKeysError> {
        let text = std::fs::read_to_string(path).map_err(|source| PublicKeysError::Read {
            path: path.display().to_string(),
            source,
        })?;
        parse_document(&text)
    }

    /// Whether intake from GitHub is possible at all.
    pub fn configured(&self) -> bool {
        self.url.is_some() || !self.read().is_empty()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, VerifyingKey>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Checks `signature_b64` over `body` with the key `key_id`, fetching the
    /// document again first if the key is unknown and a URL is configured.
    pub async fn verify(
        &self,
        key_id: &str,
        signature_b64: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        let signature = decode_signature(signature_b64)?;
        let known = self.read().get(key_id).copied();
        let key = match known {
            Some(k) => k,
            None => {
                self.refresh().await;
                self.read()
                    .get(key_id)
                    .copied()
                    .ok_or(SignatureError::UnknownKey)?
            }
        };
        key.verify(body, &signature)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// Fetches the document from the URL, at most once per [`REFRESH_EVERY`].
    async fn refresh(&self) {
        let Some(url) = &self.url else { return };
        let mut last = self.last_fetch.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFRESH_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        match self.fetch(url).await {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "fetched GitHub's public keys");
                self.keys
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(keys);
            }
            Err(e) => tracing::warn!(error = %e, "could not refresh GitHub's public keys"),
        }
    }

    async fn fetch(&self, url: &str) -> Result<HashMap<String, VerifyingKey>, PublicKeysError> {
        let fetch = |e: reqwest::Error| PublicKeysError::Fetch(e.without_url().to_string());
        let text = self
            .http
            .get(url)
            .header("accept", "application/json")
            .header("user-agent", "keyward")
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(fetch)?
            .text()
            .await
            .map_err(fetch)?;
        parse_document(&text)
    }
}

fn decode_signature(b64: &str) -> Result<Signature, SignatureError> {
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|_| SignatureError::Malformed)?;
    Signature::from_der(&der).map_err(|_| SignatureError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_without_keys_or_with_bad_pem_are_refused() {
        assert!(parse_document("{}").is_err());
        assert!(parse_document(
            r#"{"public_keys":[{"key_identifier":"a","key":"nope","is_current":true}]}"#
        )
        .is_err());
        assert!(parse_document(r#"{"public_keys":[]}"#).unwrap().is_empty());
    }

    #[test]
    fn signatures_that_are_not_der_are_malformed() {
        assert_eq!(
            decode_signature("!!!").err(),
            Some(SignatureError::Malformed)
        );
        assert_eq!(
            decode_signature("AAAA").err(),
            Some(SignatureError::Malformed)
        );
    }
}
