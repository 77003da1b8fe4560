//! Secrets at rest: values the server must read back (webhook signing secrets)
//! are stored sealed, so that a copy of the database does not hand them over.
//!
//! XChaCha20-Poly1305 (RustCrypto's `chacha20poly1305`) with a random 192-bit
//! nonce per value: random nonces that long never repeat in practice, so no
//! counter has to be shared between nodes. The associated data names what the
//! value is and the row it belongs to (`keyward/webhook-secret/<id>`), so a
//! sealed value copied into another row, or read for another purpose, does not
//! open. Stored form: `kws1:` + base64url(nonce ‖ ciphertext ‖ tag); the prefix
//! versions the format and tells sealed values from the plaintext ones stored
//! before sealing existed.
//!
//! The key lives outside the database: given in the environment
//! (`KEYWARD_SECRETS_KEY`, base64 of 32 bytes: what a PostgreSQL cluster uses,
//! since every node needs the same key) or in a key file (by default
//! `<data-dir>/secrets.key`, created `0600` with a random key on first start).
//!
//! SMTP: the only SMTP secret is the password, which is read from an environment
//! variable the configuration names and never stored, so nothing SMTP-related is
//! sealed.
//!
//! Decisions:
//! - The first start seals a known value with its key and stores it (the
//!   setting `sealing_key_check`); every later start, of any node, must open
//!   it or refuses to start. Nodes that each made a key file of their own
//!   (separate data directories, no `KEYWARD_SECRETS_KEY`) would otherwise
//!   start fine and fail later, each unable to open what the others sealed
//!   (a TOTP secret enrolled through one node and checked by another).
//! - At start, plaintext webhook secrets are sealed once (a compare-and-set per
//!   row, so nodes starting together agree), and every sealed one must open with
//!   the key, or the server refuses to start naming the problem: webhooks are
//!   never dropped or left unsigned quietly.
//! - A secret that was stored in plaintext was readable by whoever could read
//!   the database file; sealing it now does not take that back, so the start
//!   logs a warning advising to recreate those webhooks.
//! - At run time a webhook whose stored secret is not sealed is not delivered to
//!   (the attempt fails and is logged): after the start pass a plaintext secret
//!   can only have been written behind the server's back, and signing with it
//!   would sign with a secret someone else chose.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use keyward_core::{Secret, WebhookId};
use keyward_store::{SharedStore, StoreError, Webhook};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The prefix of a sealed value; the `1` is the format's version.
pub const SEALED_PREFIX: &str = "kws1:";
/// The environment variable the binary reads the key from.
pub const KEY_ENV: &str = "KEYWARD_SECRETS_KEY";
/// The key file's name in the data directory, when no other is configured.
pub const DEFAULT_KEY_FILE: &str = "secrets.key";
const NONCE_LEN: usize = 24;

/// The key that seals stored secrets. `Debug` does not show it.
#[derive(Clone)]
pub struct SealingKey(chacha20poly1305::Key);

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey([redacted])")
    }
}

/// Where the sealing key comes from.
#[derive(Clone, Debug)]
pub enum SealingKeySource {
    /// Given directly (the binary reads it from [`KEY_ENV`]).
    Key(SealingKey),
    /// A key file; created with a new random key when it does not exist and
    /// nothing sealed is stored yet.
    File(PathBuf),
}

impl SealingKeySource {
    fn describe(&self) -> String {
        match self {
            SealingKeySource::Key(_) => format!("the key given in {KEY_ENV}"),
            SealingKeySource::File(path) => format!("the key file {}", path.display()),
        }
    }
}

/// Why sealing, opening, or getting the key failed. Never holds a secret.
#[derive(Debug, thiserror::Error)]
pub enum SealingError {
    /// The key text is not the base64 of 32 bytes.
    #[error("{source_name} is not a valid secrets key: it must be the base64 of 32 random bytes (e.g. `openssl rand -base64 32`)")]
    InvalidKey {
        /// Where the key came from.
        source_name: String,
    },
    /// The key file could not be read or written.
    #[error("secrets key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Sealed secrets are stored but the key file is gone.
    #[error("the database holds {sealed} sealed webhook signing secret(s) but the secrets key file {path} does not exist: restore it, or give the key they were sealed with in {KEY_ENV}")]
    KeyFileMissing {
        /// The file.
        path: PathBuf,
        /// How many sealed secrets are stored.
        sealed: usize,
    },
    /// Sealed secrets do not open with the key.
    #[error("{failed} of the {sealed} sealed webhook signing secret(s) in the database do not open with {source_name}: start with the key they were sealed with (nothing was changed)")]
    WrongKey {
        /// Where the key came from.
        source_name: String,
        /// How many did not open.
        failed: usize,
        /// How many sealed secrets are stored.
        sealed: usize,
    },
    /// The database's key check does not open with the key: another node, or
    /// an earlier start, sealed with another key.
    #[error("{source_name} is not the secrets key this database was set up with (another node, or an earlier start, used a different one): give every node the same key, in {KEY_ENV} or the same key file; nothing was changed")]
    KeyMismatch {
        /// Where the key came from.
        source_name: String,
    },
    /// A stored value does not open: another key, another row, or altered.
    #[error("the stored secret does not open with this server's secrets key (sealed with another key, or altered)")]
    Unopenable,
    /// A stored value is not sealed (see the module's decisions).
    #[error("the stored secret is not sealed; restart the server to seal it")]
    NotSealed,
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SealingKey {
    /// A new random key.
    pub fn generate() -> Self {
        Self(XChaCha20Poly1305::generate_key(&mut OsRng))
    }

    /// Reads a key written as base64 of 32 bytes (surrounding whitespace
    /// ignored); `source_name` names where it came from, for the error.
    pub fn from_base64(text: &str, source_name: &str) -> Result<Self, SealingError> {
        let invalid = || SealingError::InvalidKey {
            source_name: source_name.to_owned(),
        };
        let bytes = STANDARD.decode(text.trim()).map_err(|_| invalid())?;
        if bytes.len() != 32 {
            return Err(invalid());
        }
        Ok(Self(chacha20poly1305::Key::clone_from_slice(&bytes)))
    }

    fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_slice())
    }

    /// Seals `plaintext` for `purpose` of row `row`.
    pub fn seal(&self, purpose: &str, row: &str, plaintext: &str) -> Secret {
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(purpose, row);
        let sealed = XChaCha20Poly1305::new(&self.0)
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad,
                },
            )
            .expect("XChaCha20-Poly1305 seals any message shorter than 256 GiB");
        let mut bytes = nonce.to_vec();
        bytes.extend_from_slice(&sealed);
        Secret::new(format!("{SEALED_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
    }

    /// Opens a value sealed for `purpose` of row `row`.
    pub fn open(&self, purpose: &str, row: &str, stored: &Secret) -> Result<Secret, SealingError> {
        let body = stored
            .expose()
            .strip_prefix(SEALED_PREFIX)
            .ok_or(SealingError::NotSealed)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| SealingError::Unopenable)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealingError::Unopenable);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let aad = associated_data(purpose, row);
        let plain = XChaCha20Poly1305::new(&self.0)
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad,
                },
            )
            .map_err(|_| SealingError::Unopenable)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| SealingError::Unopenable)
    }

    /// Seals a webhook's signing secret for storage.
    pub fn seal_webhook_secret(&self, id: &WebhookId, secret: &str) -> Secret {
        self.seal(WEBHOOK_SECRET, id.as_str(), secret)
    }

    /// The signing secret of a stored webhook.
    pub fn open_webhook_secret(&self, hook: &Webhook) -> Result<Secret, SealingError> {
        self.open(WEBHOOK_SECRET, hook.id.as_str(), &hook.secret)
    }
}

/// The setting that holds a value sealed with the database's key, and its
/// purpose and row in the associated data.
const KEY_CHECK: &str = "sealing_key_check";

/// The purpose of webhook signing secrets, in their associated data.
const WEBHOOK_SECRET: &str = "webhook-secret";

fn associated_data(purpose: &str, row: &str) -> Vec<u8> {
    format!("keyward/{purpose}/{row}").into_bytes()
}

/// Whether a stored value is sealed (or plaintext from before sealing).
pub fn is_sealed(stored: &Secret) -> bool {
    stored.expose().starts_with(SEALED_PREFIX)
}

/// Start-time setup: gets the key (creating the key file on first start),
/// checks that every sealed secret in the store opens with it, and seals the
/// secrets stored in plaintext. See the module's decisions.
pub async fn prepare(
    source: &SealingKeySource,
    store: &SharedStore,
) -> Result<SealingKey, SealingError> {
    let hooks = store.list_webhooks().await?;
    let (sealed, plain): (Vec<&Webhook>, Vec<&Webhook>) =
        hooks.iter().partition(|w| is_sealed(&w.secret));
    let (key, created) = match source {
        SealingKeySource::Key(key) => (key.clone(), None),
        SealingKeySource::File(path) => key_from_file(path, sealed.len())?,
    };
    let failed = sealed
        .iter()
        .filter(|w| key.open_webhook_secret(w).is_err())
        .count();
    if failed > 0 {
        return Err(SealingError::WrongKey {
            source_name: source.describe(),
            failed,
            sealed: sealed.len(),
        });
    }
    // After the webhooks, whose refusal says more.
    let check = key.seal(KEY_CHECK, KEY_CHECK, KEY_CHECK);
    let stored = store.claim_setting(KEY_CHECK, check.expose()).await?;
    if key
        .open(KEY_CHECK, KEY_CHECK, &Secret::new(stored))
        .is_err()
    {
        if let Some(path) = created {
            // Made by this start for nothing: a retry must not find it.
            let _ = std::fs::remove_file(path);
        }
        return Err(SealingError::KeyMismatch {
            source_name: source.describe(),
        });
    }
    let mut newly_sealed = 0;
    for w in plain {
        let sealed = key.seal_webhook_secret(&w.id, w.secret.expose());
        if store
            .replace_webhook_secret(&w.id, &w.secret, &sealed)
            .await?
        {
            newly_sealed += 1;
        }
    }
    if newly_sealed > 0 {
        tracing::warn!(
            webhooks = newly_sealed,
            "sealed webhook signing secrets that were stored in plaintext; they could be read \
             from the database until now: recreate those webhooks to give them new secrets"
        );
    }
    Ok(key)
}

/// Reads the key file, or creates it (`0600`, a new random key) when it does
/// not exist and nothing sealed needs an existing key; with the file's path
/// when this call created it.
fn key_from_file(path: &Path, sealed: usize) -> Result<(SealingKey, Option<&Path>), SealingError> {
    let file_error = |source| SealingError::KeyFile {
        path: path.to_owned(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_open_to_others(path);
            let key = SealingKey::from_base64(&text, &format!("the key file {}", path.display()))?;
            Ok((key, None))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if sealed > 0 {
                return Err(SealingError::KeyFileMissing {
                    path: path.to_owned(),
                    sealed,
                });
            }
            let key = SealingKey::generate();
            match write_private(path, &format!("{}\n", key.to_base64())) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), "first start: wrote a new secrets key (mode 0600); back it up with the database");
                    Ok((key, Some(path)))
                }
                // Another process created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    key_from_file(path, sealed)
                }
                Err(e) => Err(file_error(e)),
            }
        }
        Err(e) => Err(file_error(e)),
    }
}

/// Creates `path` (not overwriting anything) readable by its owner only.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

fn warn_if_open_to_others(path: &Path) {
    if let Some(mode) = crate::data_dir::mode_open_to_others(path) {
        tracing::warn!(path = %path.display(), mode = %format_args!("{mode:04o}"), "the secrets key file is readable or writable by other users; `chmod 600` it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_purpose_and_row() {
        let key = SealingKey::generate();
        let sealed = key.seal("webhook-secret", "wh_a", "whsec_1");
        assert!(is_sealed(&sealed));
        assert!(!sealed.expose().contains("whsec_1"));
        assert_eq!(
            key.open("webhook-secret", "wh_a", &sealed)
                .unwrap()
                .expose(),
            "whsec_1"
        );
        assert!(key.open("webhook-secret", "wh_b", &sealed).is_err());
        assert!(key.open("smtp-password", "wh_a", &sealed).is_err());
        assert!(SealingKey::generate()
            .open("webhook-secret", "wh_a", &sealed)
            .is_err());
        assert_ne!(
            sealed,
            key.seal("webhook-secret", "wh_a", "whsec_1"),
            "a new nonce every time"
        );
        let mut altered = sealed.expose().to_owned();
        let last = altered.pop().unwrap();
        altered.push(if last == 'A' { 'B' } else { 'A' });
        assert!(key
            .open("webhook-secret", "wh_a", &Secret::new(altered))
            .is_err());
        assert!(matches!(
            key.open("webhook-secret", "wh_a", &Secret::new("whsec_1")),
            Err(SealingError::NotSealed)
        ));
    }

    #[test]
    fn keys_are_read_from_base64_of_32_bytes_and_never_printed() {
        let key = SealingKey::generate();
        let text = key.to_base64();
        let again = SealingKey::from_base64(&format!("{text}\n"), "test").unwrap();
        let sealed = key.seal("p", "r", "v");
        assert_eq!(again.open("p", "r", &sealed).unwrap().expose(), "v");
        assert!(!format!("{key:?}").contains(&text));
        assert!(SealingKey::from_base64("c2hvcnQ=", "test").is_err());
        assert!(SealingKey::from_base64("not base64!", "test").is_err());
        let e = SealingKey::from_base64("c2hvcnQ=", "KEYWARD_SECRETS_KEY").unwrap_err();
        assert!(e.to_string().contains("KEYWARD_SECRETS_KEY"));
        assert!(!e.to_string().contains("c2hvcnQ"));
    }
}
