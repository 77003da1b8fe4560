//! The data directory (the SQLite database, the initial admin key, the secrets
//! key file) is private to the user keyward runs as.
//!
//! Decision: a directory keyward creates is `0700`; an existing one that others
//! may enter is reported with a warning at every start, not changed, since the
//! operator may have opened it on purpose (a backup agent's group) and changing
//! it quietly could break that. The same holds for the database files
//! (`keyward_store::sqlite::files_open_to_others`) and the key file.

use std::io;
use std::path::Path;

/// Creates the directory `0700` (and its missing parents) or, when it exists,
/// warns if it is open to others. Returns the mode of an existing directory
/// that is open to others.
pub fn prepare(path: &Path) -> io::Result<Option<u32>> {
    if path.is_dir() {
        let wide = mode_open_to_others(path);
        if let Some(mode) = wide {
            tracing::warn!(
                path = %path.display(),
                mode = %format_args!("{mode:04o}"),
                "the data directory is open to other users; `chmod 700` it"
            );
        }
        return Ok(wide);
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)?;
    Ok(None)
}

/// The permission bits of `path` when they grant anything to the group or to
/// others; `None` when they do not, or cannot be read (or not on Unix).
pub fn mode_open_to_others(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}
