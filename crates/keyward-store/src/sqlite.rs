//! SQLite backend, the single-node default.
//!
//! The file is in WAL mode and is opened twice: a pool of one writer connection and
//! a small pool of readers. Every write goes through the single writer, so writes
//! from the server's tasks queue in-process instead of contending for SQLite's file
//! lock (the source of `SQLITE_BUSY`), while readers proceed concurrently, as WAL
//! allows. Every write transaction starts with a write, so it takes the lock at once
//! and the busy timeout covers the rare other process (the CLI) writing the file.
//!
//! The queries are in `resources/`, shared with PostgreSQL; this module holds
//! what only SQLite does: opening the file, raw usage in blocks, rollups in
//! cached multi-row upserts, and lookups by many hashes in `IN (…)` lists.

use crate::columns::backend;
use crate::common;
use crate::sql::{Db, SqlStore};
use crate::{StoreError, StoreResult, UsageEvent};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::Sqlite;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

pub(crate) mod usage_blocks;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reader connections; reads in WAL mode do not block each other or the writer.
const READERS: u32 = 4;
/// Rows per multi-row INSERT. A batch is cut into chunks of these sizes, largest
/// first, so only five distinct statements exist: each is prepared once and
/// cached, where a chunk of any size would parse a new statement of thousands
/// of placeholders for almost every batch (measured: about 2 % of the gateway's
/// CPU at 35,000 requests/s).
const INSERT_CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// The usage INSERT statements, one text per chunk size, built once: building
/// thousands of placeholders per batch was itself a measurable cost.
mod statements {
    use super::INSERT_CHUNKS;
    use crate::common;
    use std::sync::OnceLock;

    fn cached(
        cache: &'static [OnceLock<String>; INSERT_CHUNKS.len()],
        rows: usize,
        build: impl FnOnce(usize) -> String,
    ) -> &'static str {
        let slot = INSERT_CHUNKS
            .iter()
            .position(|&n| n == rows)
            .expect("chunk sizes come from INSERT_CHUNKS");
        cache[slot].get_or_init(|| build(rows))
    }

    fn values(rows: usize, columns: usize) -> String {
        let row = format!("({})", vec!["?"; columns].join(", "));
        vec![row; rows].join(", ")
    }

    /// The hourly rollup upsert with `rows` rows: counters are added to the hour's.
    pub(super) fn usage_hourly(rows: usize) -> &'static str {
        static CACHE: [OnceLock<String>; INSERT_CHUNKS.len()] =
            [const { OnceLock::new() }; INSERT_CHUNKS.len()];
        cached(&CACHE, rows, |rows| {
            let add: Vec<String> = common::COUNTERS
                .iter()
                .map(|c| format!("{c} = usage_hourly.{c} + excluded.{c}"))
                .collect();
            format!(
                "INSERT INTO usage_hourly (key_id, hour_start, project_id, org_id, {}) VALUES {} \
                 ON CONFLICT (key_id, hour_start) DO UPDATE SET {}",
                common::COUNTERS.join(", "),
                values(rows, 4 + common::COUNTERS.len()),
                add.join(", ")
            )
        })
    }

    /// The per-model hourly rollup upsert with `rows` rows.
    pub(super) fn usage_hourly_models(rows: usize) -> &'static str {
        static CACHE: [OnceLock<String>; INSERT_CHUNKS.len()] =
            [const { OnceLock::new() }; INSERT_CHUNKS.len()];
        cached(&CACHE, rows, |rows| {
            model_rollup(
                "usage_hourly_models",
                "hour_start",
                "key_id, hour_start, model",
                rows,
            )
        })
    }

    /// The daily (per key and model) rollup upsert with `rows` rows.
    pub(super) fn usage_daily(rows: usize) -> &'static str {
        static CACHE: [OnceLock<String>; INSERT_CHUNKS.len()] =
            [const { OnceLock::new() }; INSERT_CHUNKS.len()];
        cached(&CACHE, rows, |rows| {
            model_rollup(
                "usage_daily",
                "day_start",
                "org_id, day_start, key_id, model",
                rows,
            )
        })
    }

    /// An upsert into a rollup of (key, `start`, model) rows whose primary key
    /// is `conflict`: counters are added to the row's.
    fn model_rollup(table: &str, start: &str, conflict: &str, rows: usize) -> String {
        let add: Vec<String> = common::COUNTERS
            .iter()
            .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
            .collect();
        format!(
            "INSERT INTO {table} (key_id, {start}, model, project_id, org_id, {}) \
             VALUES {} ON CONFLICT ({conflict}) DO UPDATE SET {}",
            common::COUNTERS.join(", "),
            values(rows, 5 + common::COUNTERS.len()),
            add.join(", ")
        )
    }
}

/// `items` cut into chunks of the sizes in [`INSERT_CHUNKS`].
fn insert_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let size = INSERT_CHUNKS.into_iter().find(|&n| n <= items.len())?;
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// The SQLite store. Cheap to clone (two pools).
#[derive(Clone, Debug)]
pub struct SqliteStore {
    db: Db,
}

impl SqlStore for SqliteStore {
    fn db(&self) -> &Db {
        &self.db
    }
}

/// The newest migration applied to the database, `None` on a new one.
async fn applied_version(writer: &SqlitePool) -> StoreResult<Option<i64>> {
    let tracked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations')",
    )
    .fetch_one(writer)
    .await
    .map_err(backend)?;
    if !tracked {
        return Ok(None);
    }
    sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
        .fetch_one(writer)
        .await
        .map_err(backend)
}

impl SqliteStore {
    /// Opens (creating it and its directory if missing) the database at `path` and
    /// brings its schema up to date.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Backend(format!("creating {}: {e}", dir.display())))?;
        }
        create_private(path)?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        // The writer is kept open for the life of the store: it also keeps the WAL
        // and its index alive between bursts.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .map_err(backend)?;
        crate::columns::refuse_newer_schema(applied_version(&writer).await?, &MIGRATOR)?;
        MIGRATOR
            .run(&writer)
            .await
            .map_err(crate::columns::migrate_error)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(READERS)
            .connect_with(options.pragma("query_only", "ON"))
            .await
            .map_err(backend)?;
        for (file, mode) in files_open_to_others(path) {
            tracing::warn!(
                file = %file.display(),
                mode = %format_args!("{mode:04o}"),
                "the database file is readable or writable by other users; \
                 `chmod 600` it (and its -wal and -shm files)"
            );
        }
        let db = Db::Sqlite { writer, reader };
        common::chain_legacy_audit(&db).await?;
        Ok(Self { db })
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        if let Db::Sqlite { writer, reader } = &self.db {
            reader.close().await;
            writer.close().await;
        }
    }
}

/// Creates the database file, readable and writable by its owner only, when it
/// does not exist yet. SQLite would create it `0644` (less the umask); its `-wal`
/// and `-shm` files take the database file's mode, so they are private too.
/// An existing file is left as it is: [`files_open_to_others`] warns about it.
fn create_private(path: &Path) -> StoreResult<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Backend(format!(
            "creating {}: {e}",
            path.display()
        ))),
    }
}

/// The database's files (the file, `-wal`, `-shm`) that exist and grant any
/// permission to the group or to others, with their modes.
///
/// Decision: such files are reported, not changed. They were made that way by an
/// earlier version or by the operator (a backup agent's group, say); changing
/// them behind the operator's back could break that, while a warning at every
/// start says what to do. Files keyward creates are private from the start.
pub fn files_open_to_others(path: &Path) -> Vec<(std::path::PathBuf, u32)> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                let file = std::path::PathBuf::from(name);
                let mode = std::fs::metadata(&file).ok()?.permissions().mode() & 0o777;
                (mode & 0o077 != 0).then_some((file, mode))
            })
            .collect()
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Vec::new()
    }
}

/// Binds a rollup row's counters, in the order of [`common::COUNTERS`].
fn bind_totals<'q>(
    q: sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>>,
    d: &common::HourlyDelta<'_>,
) -> sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments<'q>> {
    let t = &d.totals;
    q.bind(t.requests)
        .bind(t.errors)
        .bind(t.input_tokens)
        .bind(t.cached_input_tokens)
        .bind(t.output_tokens)
        .bind(t.reasoning_tokens)
        .bind(t.cost_micros)
        .bind(t.incomplete)
}

/// Records when keys were last used: one small update per key, all on the
/// single writer in one transaction.
pub(crate) async fn touch_keys(writer: &SqlitePool, uses: &BTreeMap<&str, i64>) -> StoreResult<()> {
    let mut tx = writer.begin().await.map_err(backend)?;
    for (id, at) in uses {
        sqlx::query("UPDATE keys SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)")
            .bind(at)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    tx.commit().await.map_err(backend)
}

/// Appends a batch as one block and adds it to the hourly and daily rollups.
pub(crate) async fn insert_usage(writer: &SqlitePool, events: &[UsageEvent]) -> StoreResult<()> {
    let block = usage_blocks::encode(events)?;
    let deltas: Vec<_> = common::hourly_deltas(events).into_iter().collect();
    let model_deltas: Vec<_> = common::model_deltas(events, common::HOUR_MS)
        .into_iter()
        .collect();
    let daily_deltas: Vec<_> = common::model_deltas(events, common::DAY_MS)
        .into_iter()
        .collect();
    let mut tx = writer.begin().await.map_err(backend)?;
    sqlx::query(
        "INSERT INTO usage_event_blocks (first_at, last_at, events, body) VALUES (?, ?, ?, ?)",
    )
    .bind(block.first_at)
    .bind(block.last_at)
    .bind(block.events)
    .bind(block.body)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    for chunk in insert_chunks(&deltas) {
        let mut q = sqlx::query(statements::usage_hourly(chunk.len()));
        for ((key, hour), d) in chunk {
            q = bind_totals(
                q.bind(*key).bind(*hour).bind(d.project_id).bind(d.org_id),
                d,
            );
        }
        q.execute(&mut *tx).await.map_err(backend)?;
    }
    for (deltas, statement) in [
        (
            &model_deltas,
            statements::usage_hourly_models as fn(usize) -> &'static str,
        ),
        (&daily_deltas, statements::usage_daily),
    ] {
        for chunk in insert_chunks(deltas) {
            let mut q = sqlx::query(statement(chunk.len()));
            for ((key, start, model), d) in chunk {
                q = q.bind(*key).bind(*start).bind(*model);
                q = bind_totals(q.bind(d.project_id).bind(d.org_id), d);
            }
            q.execute(&mut *tx).await.map_err(backend)?;
        }
    }
    tx.commit().await.map_err(backend)
}

#[cfg(test)]
mod tests {
    use super::insert_chunks;

    #[test]
    fn insert_chunks_cover_every_row_once_in_few_sizes() {
        for n in [0usize, 1, 3, 4, 17, 255, 256, 1000, 2001] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<&[usize]> = insert_chunks(&rows).collect();
            assert_eq!(chunks.concat(), rows);
            assert!(chunks
                .iter()
                .all(|c| [256, 64, 16, 4, 1].contains(&c.len())));
        }
    }
}
