//! First start: a fresh store gets a default organization and one admin key,
//! written to `<data-dir>/initial-admin-key` (mode 0600). The key is never logged.

use crate::management::orgs_default_name;
use keyward_core::{key, Clock, KeyFormat, KeyHash, KeyId, KeyKind};
use keyward_store::{NewAdminKey, NewAuditEvent, SharedStore, StoreError};
use std::io::Write;
use std::path::{Path, PathBuf};

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

/// Creates the default organization and, when no admin key exists yet, the initial
/// admin key. Returns the key file's path when one was written.
pub async fn bootstrap(
    store: &SharedStore,
    data_dir: &Path,
    format: &KeyFormat,
    clock: &Clock,
) -> Result<Option<PathBuf>, BootstrapError> {
    let now = clock.now_ms();
    if store.org_by_name(orgs_default_name()).await?.is_none() {
        match store.create_org(orgs_default_name(), now).await {
            Ok(_) | Err(StoreError::Duplicate(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if store.count_admin_keys().await? > 0 {
        return Ok(None);
    }
    let secret = format.generate(KeyKind::Admin);
    let path = data_dir.join("initial-admin-key");
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
        })
        .await?;
    store
        .append_audit(&NewAuditEvent {
            at: now,
            actor: "system".into(),
            action: "admin_key.created".into(),
            target: admin.id.to_string(),
            detail: serde_json::json!({"reason": "first start", "file": path.display().to_string()}),
        })
        .await?;
    Ok(Some(path))
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
