//! First start: a fresh store gets a default organization and one admin key,
//! written to `<data-dir>/initial-admin-key` (mode 0600). The key is never logged.
//!
//! The file is a hand-over, not a place to keep the key. It is removed (and the
//! log and audit say so) once it no longer holds the only way in:
//! - its key is rotated, revoked or reported leaked (the file would hold a
//!   dead secret, or one that must not be read again);
//! - another admin key authenticates a request on this node (a second
//!   administrator has taken over, so the bootstrap key is no longer needed
//!   on disk; the key itself keeps working until it is revoked);
//! - at start, when the key in it no longer works.
//!
//! When no admin key is active at start (all revoked or leaked), a new initial
//! key is written: whoever can restart the server and read its data directory
//! already controls the deployment, and this is the way back in after the last
//! admin key was reported leaked.

use keyward_core::{key, Clock, KeyFormat, KeyHash, KeyId, KeyKind};
use keyward_store::{KeyStatus, NewAdminKey, NewAuditEvent, SharedStore, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The initial admin key's file name in the data directory.
pub const INITIAL_KEY_FILE: &str = "initial-admin-key";

pub use keyward_api::orgs::DEFAULT_ORG;

/// Why first-start setup failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The key file could not be written.
    #[error("could not write the initial admin key to {path}: {source}")]
    KeyFile {
        /// Where.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// What first-start setup did.
pub struct Bootstrap {
    /// The key file written now, if one was, and why (`first start`, or `no
    /// active admin key`).
    pub written: Option<(PathBuf, &'static str)>,
    /// The initial key file, while the key in it works.
    pub initial_key: InitialKeyFile,
}

/// The initial admin key file and the id of the key in it, while that key is
/// live and no other admin key has been used on this node.
#[derive(Default)]
pub struct InitialKeyFile(Mutex<Option<(PathBuf, KeyId)>>);

impl InitialKeyFile {
    fn holding(path: PathBuf, id: KeyId) -> Self {
        Self(Mutex::new(Some((path, id))))
    }

    /// Admin key `id` stopped working (rotated, revoked, leaked): removes the
    /// file if it holds that key. Returns the removed file's path.
    pub fn retire_if_holds(&self, id: &KeyId, reason: &str) -> Option<PathBuf> {
        self.retire(|held| held == id, reason).map(|(path, _)| path)
    }

    /// Admin key `id` authenticated a request: removes the file if it holds
    /// another key. Returns the removed file's path and the id of the key in it.
    pub fn retire_unless_holds(&self, id: &KeyId) -> Option<(PathBuf, KeyId)> {
        self.retire(|held| held != id, "another admin key was used")
    }

    fn retire(&self, applies: impl Fn(&KeyId) -> bool, reason: &str) -> Option<(PathBuf, KeyId)> {
        let held = {
            let mut slot = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if !slot.as_ref().is_some_and(|(_, held)| applies(held)) {
                return None;
            }
            slot.take()?
        };
        remove_key_file(&held.0, reason);
        Some(held)
    }
}

fn remove_key_file(path: &Path, reason: &str) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), reason, "removed the initial admin key file");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(path = %path.display(), reason, error = %e, "could not remove the initial admin key file; delete it by hand");
        }
    }
}

/// Creates the default organization and, when no admin key is active, a new
/// initial admin key; checks an existing key file.
pub async fn bootstrap(
    store: &SharedStore,
    data_dir: &Path,
    format: &KeyFormat,
    clock: &Clock,
) -> Result<Bootstrap, BootstrapError> {
    let now = clock.now_ms();
    if store.org_by_name(DEFAULT_ORG).await?.is_none() {
        match store.create_org(DEFAULT_ORG, now).await {
            Ok(_) | Err(StoreError::Duplicate(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let path = data_dir.join(INITIAL_KEY_FILE);
    let admins = store.list_admin_keys().await?;
    if admins.iter().any(|a| a.status == KeyStatus::Active) {
        return Ok(Bootstrap {
            written: None,
            initial_key: check_key_file(store, path, format).await?,
        });
    }
    let reason = if admins.is_empty() {
        "first start"
    } else {
        "no active admin key"
    };
    let secret = format.generate(KeyKind::Admin);
    // Write the file first: a key that was stored but could not be handed over
    // would lock the operator out.
    write_private(&path, &format!("{}\n", secret.expose())).map_err(|source| {
        BootstrapError::KeyFile {
            path: path.clone(),
            source,
        }
    })?;
    let admin = store
        .create_admin_key(&NewAdminKey {
            id: KeyId::generate(),
            name: "initial".into(),
            hash_hex: KeyHash::of(secret.expose()).to_hex(),
            hint: key::hint(secret.expose()),
            created_at: now,
            created_by: None,
            org_id: None,
        })
        .await?;
    store
        .append_audit(&NewAuditEvent {
            at: now,
            actor: "system".into(),
            action: "admin_key.created".into(),
            target: admin.id.to_string(),
            detail: serde_json::json!({"reason": reason, "file": path.display().to_string()}),
            ..Default::default()
        })
        .await?;
    Ok(Bootstrap {
        written: Some((path.clone(), reason)),
        initial_key: InitialKeyFile::holding(path, admin.id),
    })
}

/// An existing key file is kept only while its key is active.
async fn check_key_file(
    store: &SharedStore,
    path: PathBuf,
    format: &KeyFormat,
) -> Result<InitialKeyFile, StoreError> {
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(InitialKeyFile::default());
    };
    // Anything but one of our admin keys is not ours to delete.
    let Some(parsed) = format
        .parse(text.trim())
        .ok()
        .filter(|p| p.kind == KeyKind::Admin)
    else {
        return Ok(InitialKeyFile::default());
    };
    match store.admin_key_by_hash(&parsed.hash).await? {
        Some(admin) if admin.status == KeyStatus::Active => {
            Ok(InitialKeyFile::holding(path, admin.id))
        }
        _ => {
            remove_key_file(&path, "the key in it no longer works");
            Ok(InitialKeyFile::default())
        }
    }
}

/// Writes `contents` to a new file readable only by its owner.
fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    #[cfg(unix)]
    {
        // The mode above applies only to a new file; tighten an existing one too.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(contents.as_bytes())?;
    f.sync_all()
}

/// Removes the initial admin key file if it holds admin key `id`, which has
/// just stopped working, and audits the removal.
pub async fn retire_initial_key_file(
    file: &InitialKeyFile,
    store: &SharedStore,
    clock: &Clock,
    id: &KeyId,
    reason: &str,
) {
    if let Some(path) = file.retire_if_holds(id, reason) {
        audit_file_removed(store, clock, id, &path, reason).await;
    }
}

/// Audits the removal of the initial key file; a failure is only logged, since
/// the file is already gone and the log says so.
pub async fn audit_file_removed(
    store: &SharedStore,
    clock: &Clock,
    id: &KeyId,
    path: &Path,
    reason: &str,
) {
    let event = NewAuditEvent {
        at: clock.now_ms(),
        actor: "system".into(),
        action: "admin_key.initial_file_removed".into(),
        target: id.to_string(),
        detail: serde_json::json!({"file": path.display().to_string(), "reason": reason}),
        ..Default::default()
    };
    if let Err(e) = store.append_audit(&event).await {
        tracing::error!(error = %e, "could not audit the removal of the initial admin key file");
    }
}
