//! Where sqlx meets the store's errors: typed column access on both backends'
//! rows, and the mapping of database failures to [`StoreError`].

use crate::{StoreError, StoreResult};
use sqlx::error::ErrorKind;
use sqlx::Row;

/// Any database failure without a domain meaning. The text is for logs: it holds
/// SQL error messages, never key material (the store only ever sees hashes).
pub(crate) fn backend(e: sqlx::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

/// Maps a failed write: a unique violation means `duplicate` already exists, a
/// foreign-key violation means the parent record `missing` does not.
pub(crate) fn write_error(
    e: sqlx::Error,
    duplicate: &'static str,
    missing: &'static str,
) -> StoreError {
    if let sqlx::Error::Database(db) = &e {
        match db.kind() {
            ErrorKind::UniqueViolation => return StoreError::Duplicate(duplicate),
            ErrorKind::ForeignKeyViolation => return StoreError::NotFound(missing),
            _ => {}
        }
    }
    backend(e)
}

pub(crate) fn migrate_error(e: sqlx::migrate::MigrateError) -> StoreError {
    match e {
        // Below the newest version, so not caught by `refuse_newer_schema`: a
        // migration of another build (a branch) was applied to this database.
        sqlx::migrate::MigrateError::VersionMissing(v) => StoreError::Backend(format!(
            "the database records migration {v}, which this keyward does not have: \
             it was migrated by another build of keyward"
        )),
        e => StoreError::Backend(format!("running migrations: {e}")),
    }
}

/// Refuses a database whose newest applied migration (`applied`, `None` on an
/// empty database) is newer than any `migrator` carries: a node of an older
/// version must not start on a schema a newer one has changed. sqlx alone
/// would answer with a bare "migration N was previously applied but is missing".
pub(crate) fn refuse_newer_schema(
    applied: Option<i64>,
    migrator: &sqlx::migrate::Migrator,
) -> StoreResult<()> {
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match applied {
        Some(database) if database > known => Err(StoreError::SchemaNewer { database, known }),
        _ => Ok(()),
    }
}

/// Typed column access with errors already mapped, implemented for both backends'
/// rows so that records are decoded by one function each.
pub(crate) trait Columns {
    fn text(&self, col: &str) -> StoreResult<String>;
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>>;
    fn int(&self, col: &str) -> StoreResult<i64>;
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>>;
    fn int32(&self, col: &str) -> StoreResult<i32>;
    fn flag(&self, col: &str) -> StoreResult<bool>;
}

macro_rules! impl_columns {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, col: &str) -> StoreResult<String> {
                self.try_get(col).map_err(backend)
            }
            fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
                self.try_get(col).map_err(backend)
            }
            fn int(&self, col: &str) -> StoreResult<i64> {
                self.try_get(col).map_err(backend)
            }
            fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
                self.try_get(col).map_err(backend)
            }
            fn int32(&self, col: &str) -> StoreResult<i32> {
                self.try_get(col).map_err(backend)
            }
            fn flag(&self, col: &str) -> StoreResult<bool> {
                self.try_get(col).map_err(backend)
            }
        }
    };
}

impl_columns!(sqlx::sqlite::SqliteRow);
impl_columns!(sqlx::postgres::PgRow);
