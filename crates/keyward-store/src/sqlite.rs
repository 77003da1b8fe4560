//! SQLite backend, the single-node default.
//!
//! The file is in WAL mode and is opened twice: a pool of one writer connection and
//! a small pool of readers. Every write goes through the single writer, so writes
//! from the server's tasks queue in-process instead of contending for SQLite's file
//! lock (the source of `SQLITE_BUSY`), while readers proceed concurrently, as WAL
//! allows. Every write transaction starts with a write, so it takes the lock at once
//! and the busy timeout covers the rare other process (the CLI) writing the file.

use crate::common::{self, backend, write_error, HOUR_MS};
use crate::{
    AdminKey, AdminKeyRevocation, AuditEvent, Bucket, GroupBy, KeyRecord, KeyStatus, NewAdminKey,
    NewAuditEvent, NewKey, NewSecret, Org, Project, ProjectPolicy, Store, StoreError, StoreResult,
    UsageBucket, UsageEvent, UsageFilter, UsageGroup, UsageTotals,
};
use async_trait::async_trait;
use keyward_core::{AuditId, Budget, BudgetScope, KeyHash, KeyId, KeyPolicy, OrgId, ProjectId};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Sqlite};
use std::path::Path;
use std::time::Duration;

mod leaks;
mod usage_blocks;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/sqlite");

/// Revokes the active tokens of a parent (`?1` now, `?2` the parent's id).
const REVOKE_TOKENS: &str =
    "UPDATE keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, ?1) \
     WHERE parent_key_id = ?2 AND status = 'active'";

/// How long a connection waits for another process's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Reader connections; reads in WAL mode do not block each other or the writer.
const READERS: u32 = 4;
/// Rows per multi-row INSERT: 17 columns × 1,000 stays well under SQLite's limit of
/// 32,766 bound parameters.
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
            let add: Vec<String> = common::COUNTERS
                .iter()
                .map(|c| format!("{c} = usage_hourly_models.{c} + excluded.{c}"))
                .collect();
            format!(
                "INSERT INTO usage_hourly_models (key_id, hour_start, model, project_id, org_id, {}) \
                 VALUES {} ON CONFLICT (key_id, hour_start, model) DO UPDATE SET {}",
                common::COUNTERS.join(", "),
                values(rows, 5 + common::COUNTERS.len()),
                add.join(", ")
            )
        })
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
    writer: SqlitePool,
    reader: SqlitePool,
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
        MIGRATOR.run(&writer).await.map_err(common::migrate_error)?;
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
        Ok(Self { writer, reader })
    }

    /// Closes both pools, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
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

/// A rollup query: the summed counters, optionally with a grouping column (an
/// expression and its alias).
fn rollup_query<'a>(group: Option<(&str, &str)>, table: &str) -> QueryBuilder<'a, Sqlite> {
    let mut qb = QueryBuilder::new("SELECT ");
    if let Some((expr, alias)) = group {
        qb.push(expr).push(" AS ").push(alias).push(", ");
    }
    for (i, c) in common::COUNTERS.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        qb.push(format_args!("COALESCE(SUM({c}), 0) AS {c}"));
    }
    qb.push(" FROM ").push(table);
    qb
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
}

#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn create_org(&self, name: &str, now_ms: i64) -> StoreResult<Org> {
        let org = Org {
            id: OrgId::generate(),
            name: name.to_owned(),
            created_at: now_ms,
        };
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES (?, ?, ?)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.writer)
            .await
            .map_err(|e| write_error(e, "org", "org"))?;
        Ok(org)
    }

    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {} FROM orgs WHERE name = ?", common::ORG_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::org).transpose()
    }

    async fn get_org(&self, id: &OrgId) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {} FROM orgs WHERE id = ?", common::ORG_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::org).transpose()
    }

    async fn list_orgs(&self) -> StoreResult<Vec<Org>> {
        let sql = format!(
            "SELECT {} FROM orgs ORDER BY created_at, id",
            common::ORG_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(common::org).collect()
    }

    async fn create_project(&self, org: &OrgId, name: &str, now_ms: i64) -> StoreResult<Project> {
        let project = Project {
            id: ProjectId::generate(),
            org_id: org.clone(),
            name: name.to_owned(),
            created_at: now_ms,
            policy: ProjectPolicy::default(),
        };
        sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES (?, ?, ?, ?)")
            .bind(project.id.as_str())
            .bind(project.org_id.as_str())
            .bind(&project.name)
            .bind(project.created_at)
            .execute(&self.writer)
            .await
            .map_err(|e| write_error(e, "project", "org"))?;
        Ok(project)
    }

    async fn project_by_name(&self, org: &OrgId, name: &str) -> StoreResult<Option<Project>> {
        let sql = format!(
            "SELECT {} FROM projects WHERE org_id = ? AND name = ?",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(name)
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::project).transpose()
    }

    async fn get_project(&self, id: &ProjectId) -> StoreResult<Option<Project>> {
        let sql = format!(
            "SELECT {} FROM projects WHERE id = ?",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::project).transpose()
    }

    async fn list_projects(&self, org: Option<&OrgId>) -> StoreResult<Vec<Project>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {} FROM projects",
            common::PROJECT_COLUMNS
        ));
        if let Some(org) = org {
            qb.push(" WHERE org_id = ").push_bind(org.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(common::project).collect()
    }

    async fn create_key(&self, key: &NewKey) -> StoreResult<KeyRecord> {
        let hash_hex = common::canonical_hash(&key.hash_hex)?;
        let tags = common::encode_tags(&key.tags)?;
        let policy = common::encode_json(&key.policy, "key policy")?;
        let parent_secret_hash = key
            .parent_secret_hash
            .as_deref()
            .map(common::canonical_hash)
            .transpose()?;
        let mut tx = self.writer.begin().await.map_err(backend)?;
        // The org is taken from the project, so a key can never disagree with it.
        let org_id: Option<String> = sqlx::query_scalar(
            "INSERT INTO keys (id, project_id, org_id, name, hint, status, tags, created_by, created_at, expires_at, \
             parent_key_id, parent_secret_hash, policy) \
             SELECT ?, p.id, p.org_id, ?, ?, 'active', ?, ?, ?, ?, ?, ?, ? FROM projects p WHERE p.id = ? \
             RETURNING org_id",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(&key.hint)
        .bind(&tags)
        .bind(key.created_by.as_deref())
        .bind(key.created_at)
        .bind(key.expires_at)
        .bind(key.parent_id.as_ref().map(KeyId::as_str))
        .bind(parent_secret_hash.as_deref())
        .bind(&policy)
        .bind(key.project_id.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| write_error(e, "key", "project"))?;
        let org_id = org_id.ok_or(StoreError::NotFound("project"))?;
        sqlx::query("INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES (?, ?, ?, ?, NULL)")
            .bind(&hash_hex)
            .bind(key.id.as_str())
            .bind(&key.hint)
            .bind(key.created_at)
            .execute(&mut *tx)
            .await
            .map_err(|e| write_error(e, "key", "key"))?;
        tx.commit().await.map_err(backend)?;
        Ok(KeyRecord {
            id: key.id.clone(),
            project_id: key.project_id.clone(),
            org_id: OrgId::from_trusted(org_id),
            name: key.name.clone(),
            hint: key.hint.clone(),
            status: KeyStatus::Active,
            tags: key.tags.clone(),
            created_by: key.created_by.clone(),
            created_at: key.created_at,
            last_used_at: None,
            revoked_at: None,
            expires_at: key.expires_at,
            parent_id: key.parent_id.clone(),
            policy: key.policy.clone(),
            rotated_at: None,
            secret_expires_at: None,
            minted_from: None,
        })
    }

    async fn key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<KeyRecord>> {
        let sql = format!(
            "SELECT {}, s.secret_expires_at, {} FROM keys \
             JOIN (SELECT key_id, expires_at AS secret_expires_at FROM key_secrets WHERE hash_hex = ?) s \
             ON s.key_id = keys.id",
            common::KEY_COLUMNS,
            common::MINTED_FROM_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(hash.to_hex())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| common::key(r, true)).transpose()
    }

    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {} FROM keys WHERE id = ?", common::KEY_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| common::key(r, false)).transpose()
    }

    async fn list_keys(&self, project: Option<&ProjectId>) -> StoreResult<Vec<KeyRecord>> {
        let mut qb =
            QueryBuilder::<Sqlite>::new(format!("SELECT {} FROM keys", common::KEY_COLUMNS));
        if let Some(project) = project {
            qb.push(" WHERE project_id = ").push_bind(project.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(|r| common::key(r, false)).collect()
    }

    async fn set_key_status(
        &self,
        id: &KeyId,
        status: KeyStatus,
        now_ms: i64,
    ) -> StoreResult<KeyRecord> {
        // `revoked_at` records when the key first left `active`; going back to
        // `active` clears it.
        let sql = format!(
            "UPDATE keys SET status = ?1, \
             revoked_at = CASE WHEN ?1 = 'active' THEN NULL ELSE COALESCE(revoked_at, ?2) END \
             WHERE id = ?3 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(status.as_str())
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        let row = row.ok_or(StoreError::NotFound("key"))?;
        common::key(&row, false)
    }

    async fn delete_key(&self, id: &KeyId) -> StoreResult<()> {
        // Secrets go with the key (ON DELETE CASCADE); usage has no foreign key.
        let done = sqlx::query("DELETE FROM keys WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.writer)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("key"));
        }
        Ok(())
    }

    async fn touch_keys(&self, last_used: &[(KeyId, i64)]) -> StoreResult<()> {
        let uses = common::latest_uses(last_used);
        if uses.is_empty() {
            return Ok(());
        }
        let mut tx = self.writer.begin().await.map_err(backend)?;
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

    async fn create_admin_key(&self, key: &NewAdminKey) -> StoreResult<AdminKey> {
        let hash_hex = common::canonical_hash(&key.hash_hex)?;
        sqlx::query(
            "INSERT INTO admin_keys (id, name, hash_hex, hint, status, created_at, created_by) \
             VALUES (?, ?, ?, ?, 'active', ?, ?)",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(&hash_hex)
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(key.created_by.as_deref())
        .execute(&self.writer)
        .await
        .map_err(|e| write_error(e, "admin key", "admin key"))?;
        Ok(AdminKey {
            id: key.id.clone(),
            name: key.name.clone(),
            hint: key.hint.clone(),
            status: KeyStatus::Active,
            created_at: key.created_at,
            revoked_at: None,
            rotated_at: None,
            created_by: key.created_by.clone(),
        })
    }

    async fn admin_key_by_hash(&self, hash: &KeyHash) -> StoreResult<Option<AdminKey>> {
        let sql = format!(
            "SELECT {} FROM admin_keys WHERE hash_hex = ?",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(hash.to_hex())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn count_admin_keys(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM admin_keys")
            .fetch_one(&self.reader)
            .await
            .map_err(backend)
    }

    async fn list_admin_keys(&self) -> StoreResult<Vec<AdminKey>> {
        let sql = format!(
            "SELECT {} FROM admin_keys ORDER BY created_at, id",
            common::ADMIN_KEY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(common::admin_key).collect()
    }

    async fn get_admin_key(&self, id: &KeyId) -> StoreResult<Option<AdminKey>> {
        let sql = format!(
            "SELECT {} FROM admin_keys WHERE id = ?",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.reader)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn admin_keys_by_hashes(
        &self,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<(KeyHash, AdminKey)>> {
        self.leaks_admin_keys_by_hashes(hashes).await
    }

    async fn revoke_admin_key(&self, id: &KeyId, now_ms: i64) -> StoreResult<AdminKeyRevocation> {
        // One statement on the one writer connection: the count and the change
        // cannot interleave with another revocation.
        let sql = format!(
            "UPDATE admin_keys SET status = 'revoked', revoked_at = ?1 \
             WHERE id = ?2 AND status = 'active' \
             AND (SELECT COUNT(*) FROM admin_keys WHERE status = 'active') > 1 RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        if let Some(row) = row {
            return Ok(AdminKeyRevocation::Revoked(common::admin_key(&row)?));
        }
        let key = self
            .get_admin_key(id)
            .await?
            .ok_or(StoreError::NotFound("admin key"))?;
        Ok(if key.status == KeyStatus::Active {
            AdminKeyRevocation::LastActive
        } else {
            AdminKeyRevocation::NotActive(key)
        })
    }

    async fn mark_admin_key_leaked(
        &self,
        id: &KeyId,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>> {
        let sql = format!(
            "UPDATE admin_keys SET status = 'leaked', revoked_at = COALESCE(revoked_at, ?1) \
             WHERE id = ?2 AND status = 'active' RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn rotate_admin_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>> {
        let hash_hex = common::canonical_hash(&secret.hash_hex)?;
        let sql = format!(
            "UPDATE admin_keys SET hash_hex = ?1, hint = ?2, rotated_at = ?3, \
             status = 'active', revoked_at = NULL \
             WHERE id = ?4 AND status IN ('active', 'leaked') RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(&hash_hex)
            .bind(&secret.hint)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(|e| write_error(e, "admin key", "admin key"))?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn insert_usage(&self, events: &[UsageEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let block = usage_blocks::encode(events)?;
        let deltas: Vec<_> = common::hourly_deltas(events).into_iter().collect();
        let model_deltas: Vec<_> = common::hourly_model_deltas(events).into_iter().collect();
        let mut tx = self.writer.begin().await.map_err(backend)?;
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
        for chunk in insert_chunks(&model_deltas) {
            let mut q = sqlx::query(statements::usage_hourly_models(chunk.len()));
            for ((key, hour, model), d) in chunk {
                q = q.bind(*key).bind(*hour).bind(*model);
                q = bind_totals(q.bind(d.project_id).bind(d.org_id), d);
            }
            q.execute(&mut *tx).await.map_err(backend)?;
        }
        tx.commit().await.map_err(backend)
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> StoreResult<UsageTotals> {
        let mut qb = rollup_query(None, "usage_hourly");
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, HOUR_MS),
        );
        let row = qb.build().fetch_one(&self.reader).await.map_err(backend)?;
        common::totals(&row)
    }

    async fn usage_buckets(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> StoreResult<Vec<UsageBucket>> {
        let (expr, width) = match bucket {
            Bucket::Hour => ("hour_start", HOUR_MS),
            Bucket::Day => ("hour_start - hour_start % 86400000", common::DAY_MS),
        };
        let mut qb = rollup_query(Some((expr, "bucket_start")), "usage_hourly");
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, width),
        );
        qb.push(" GROUP BY bucket_start ORDER BY bucket_start");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(UsageBucket {
                    start: common::Columns::int(r, "bucket_start")?,
                    totals: common::totals(r)?,
                })
            })
            .collect()
    }

    async fn usage_events(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageEvent>> {
        usage_blocks::latest(&self.reader, filter, limit).await
    }

    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent> {
        let id = AuditId::generate();
        sqlx::query("INSERT INTO audit_events (id, at, actor, action, target, detail) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(id.as_str())
            .bind(event.at)
            .bind(&event.actor)
            .bind(&event.action)
            .bind(&event.target)
            .bind(common::encode_detail(&event.detail)?)
            .execute(&self.writer)
            .await
            .map_err(|e| write_error(e, "audit event", "audit event"))?;
        Ok(AuditEvent {
            id,
            at: event.at,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            detail: event.detail.clone(),
        })
    }

    async fn list_audit(&self, target: Option<&str>, limit: i64) -> StoreResult<Vec<AuditEvent>> {
        let mut qb = QueryBuilder::<Sqlite>::new(
            "SELECT id, at, actor, action, target, detail FROM audit_events",
        );
        if let Some(target) = target {
            qb.push(" WHERE target = ").push_bind(target);
        }
        qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(common::audit_event).collect()
    }

    async fn set_key_policy(&self, id: &KeyId, policy: &KeyPolicy) -> StoreResult<KeyRecord> {
        let sql = format!(
            "UPDATE keys SET policy = ? WHERE id = ? RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(common::encode_json(policy, "key policy")?)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        common::key(&row.ok_or(StoreError::NotFound("key"))?, false)
    }

    async fn set_project_policy(
        &self,
        id: &ProjectId,
        policy: &ProjectPolicy,
    ) -> StoreResult<Project> {
        let sql = format!(
            "UPDATE projects SET policy = ? WHERE id = ? RETURNING {}",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(common::encode_json(policy, "project policy")?)
            .bind(id.as_str())
            .fetch_optional(&self.writer)
            .await
            .map_err(backend)?;
        common::project(&row.ok_or(StoreError::NotFound("project"))?)
    }

    async fn rotate_key(
        &self,
        id: &KeyId,
        secret: &NewSecret,
        now_ms: i64,
        old_expires_at: i64,
        reactivate: bool,
    ) -> StoreResult<KeyRecord> {
        let hash_hex = common::canonical_hash(&secret.hash_hex)?;
        let mut tx = self.writer.begin().await.map_err(backend)?;
        // The key row first: it finds out whether the key exists, and starts the
        // transaction with a write (see the module docs).
        let sql = format!(
            "UPDATE keys SET hint = ?1, rotated_at = ?2, \
             status = CASE WHEN ?3 THEN 'active' ELSE status END, \
             revoked_at = CASE WHEN ?3 THEN NULL ELSE revoked_at END \
             WHERE id = ?4 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(&secret.hint)
            .bind(now_ms)
            .bind(reactivate)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        let record = common::key(&row.ok_or(StoreError::NotFound("key"))?, false)?;
        // Never extends a grace period an earlier rotation already set.
        sqlx::query(
            "UPDATE key_secrets SET expires_at = ?1 \
             WHERE key_id = ?2 AND (expires_at IS NULL OR expires_at > ?1)",
        )
        .bind(old_expires_at)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query("INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES (?, ?, ?, ?, NULL)")
            .bind(&hash_hex)
            .bind(id.as_str())
            .bind(&secret.hint)
            .bind(now_ms)
            .execute(&mut *tx)
            .await
            .map_err(|e| write_error(e, "key", "key"))?;
        if old_expires_at <= now_ms {
            // Every existing token was minted with a secret that ends now.
            sqlx::query(REVOKE_TOKENS)
                .bind(now_ms)
                .bind(id.as_str())
                .execute(&mut *tx)
                .await
                .map_err(backend)?;
        }
        tx.commit().await.map_err(backend)?;
        Ok(record)
    }

    async fn child_keys(&self, parent: &KeyId) -> StoreResult<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {} FROM keys WHERE parent_key_id = ? ORDER BY created_at, id",
            common::KEY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(parent.as_str())
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(|r| common::key(r, false)).collect()
    }

    async fn revoke_tokens(&self, parent: &KeyId, now_ms: i64) -> StoreResult<Vec<KeyId>> {
        let ids: Vec<String> = sqlx::query_scalar(&format!("{REVOKE_TOKENS} RETURNING id"))
            .bind(now_ms)
            .bind(parent.as_str())
            .fetch_all(&self.writer)
            .await
            .map_err(backend)?;
        Ok(ids.into_iter().map(KeyId::from_trusted).collect())
    }

    async fn current_secret(&self, id: &KeyId) -> StoreResult<Option<KeyHash>> {
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT hash_hex FROM key_secrets WHERE key_id = ? AND expires_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.reader)
        .await
        .map_err(backend)?;
        hash.map(|h| {
            KeyHash::from_hex(&h)
                .ok_or_else(|| StoreError::Backend("stored hash is not hex".into()))
        })
        .transpose()
    }

    async fn set_budget(&self, budget: &Budget, now_ms: i64) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO budgets (scope, scope_id, amount_micros, period, soft_thresholds, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?) \
             ON CONFLICT (scope, scope_id) DO UPDATE SET amount_micros = excluded.amount_micros, \
             period = excluded.period, soft_thresholds = excluded.soft_thresholds, \
             updated_at = excluded.updated_at",
        )
        .bind(budget.scope.kind())
        .bind(budget.scope.id())
        .bind(budget.amount_micros.0)
        .bind(budget.period.as_str())
        .bind(common::encode_json(&budget.soft_thresholds, "budget thresholds")?)
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> StoreResult<()> {
        let mut tx = self.writer.begin().await.map_err(backend)?;
        let done = sqlx::query("DELETE FROM budgets WHERE scope = ? AND scope_id = ?")
            .bind(scope.kind())
            .bind(scope.id())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("budget"));
        }
        // A budget set again later starts with no alerts sent.
        sqlx::query("DELETE FROM budget_alerts WHERE scope = ? AND scope_id = ?")
            .bind(scope.kind())
            .bind(scope.id())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn budgets_for(&self, scopes: &[BudgetScope]) -> StoreResult<Vec<Budget>> {
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {} FROM budgets WHERE ",
            common::BUDGET_COLUMNS
        ));
        for (i, scope) in scopes.iter().enumerate() {
            if i > 0 {
                qb.push(" OR ");
            }
            qb.push("(scope = ")
                .push_bind(scope.kind())
                .push(" AND scope_id = ")
                .push_bind(scope.id())
                .push(")");
        }
        qb.push(" ORDER BY scope, scope_id");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(common::budget).collect()
    }

    async fn list_budgets(&self) -> StoreResult<Vec<Budget>> {
        let sql = format!(
            "SELECT {} FROM budgets ORDER BY scope, scope_id",
            common::BUDGET_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.reader)
            .await
            .map_err(backend)?;
        rows.iter().map(common::budget).collect()
    }

    async fn record_budget_alert(
        &self,
        scope: &BudgetScope,
        period_start: i64,
        threshold: u32,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO budget_alerts (scope, scope_id, period_start, threshold, at) \
             VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
        )
        .bind(scope.kind())
        .bind(scope.id())
        .bind(period_start)
        .bind(i64::from(threshold))
        .bind(now_ms)
        .execute(&self.writer)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>> {
        // Both groupings read a rollup, so a range is rounded out to whole hours.
        let (column, table) = match by {
            GroupBy::Key => ("key_id", "usage_hourly"),
            GroupBy::Model => ("model", "usage_hourly_models"),
        };
        let mut qb = rollup_query(Some((column, "grp")), table);
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, HOUR_MS),
        );
        qb.push(" GROUP BY ").push(column);
        qb.push(" ORDER BY cost_micros DESC, grp");
        let rows = qb.build().fetch_all(&self.reader).await.map_err(backend)?;
        rows.iter().map(common::usage_group).collect()
    }

    // Leaks, webhooks and notifications: see `leaks.rs` next to this file.

    async fn keys_by_hashes(&self, hashes: &[KeyHash]) -> StoreResult<Vec<(KeyHash, KeyRecord)>> {
        self.leaks_keys_by_hashes(hashes).await
    }

    async fn mark_key_leaked(&self, id: &KeyId, now_ms: i64) -> StoreResult<Option<KeyRecord>> {
        self.leaks_mark_key_leaked(id, now_ms).await
    }

    async fn clear_key_leak(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        self.leaks_clear_key_leak(id).await
    }

    async fn insert_leak_report(
        &self,
        report: &crate::NewLeakReport,
    ) -> StoreResult<Option<crate::LeakReport>> {
        self.leaks_insert_report(report).await
    }

    async fn list_leak_reports(
        &self,
        key: Option<&KeyId>,
        limit: i64,
    ) -> StoreResult<Vec<crate::LeakReport>> {
        self.leaks_list_reports(key, limit).await
    }

    async fn create_webhook(&self, webhook: &crate::NewWebhook) -> StoreResult<crate::Webhook> {
        self.leaks_create_webhook(webhook).await
    }

    async fn list_webhooks(&self) -> StoreResult<Vec<crate::Webhook>> {
        self.leaks_list_webhooks().await
    }

    async fn delete_webhook(&self, id: &keyward_core::WebhookId) -> StoreResult<()> {
        self.leaks_delete_webhook(id).await
    }

    async fn replace_webhook_secret(
        &self,
        id: &keyward_core::WebhookId,
        expected: &keyward_core::Secret,
        new: &keyward_core::Secret,
    ) -> StoreResult<bool> {
        self.leaks_replace_webhook_secret(id, expected, new).await
    }

    async fn create_recipient(
        &self,
        recipient: &crate::Recipient,
    ) -> StoreResult<crate::Recipient> {
        self.leaks_create_recipient(recipient).await
    }

    async fn list_recipients(&self) -> StoreResult<Vec<crate::Recipient>> {
        self.leaks_list_recipients().await
    }

    async fn delete_recipient(&self, id: &keyward_core::RecipientId) -> StoreResult<()> {
        self.leaks_delete_recipient(id).await
    }

    async fn enqueue_deliveries(&self, deliveries: &[crate::NewDelivery]) -> StoreResult<u64> {
        self.leaks_enqueue(deliveries).await
    }

    async fn claim_due_deliveries(
        &self,
        now_ms: i64,
        lease_until: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::Delivery>> {
        self.leaks_claim_due(now_ms, lease_until, limit).await
    }

    async fn record_attempt(&self, result: &crate::AttemptResult) -> StoreResult<()> {
        self.leaks_record_attempt(result).await
    }

    async fn list_deliveries(
        &self,
        target: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<crate::Delivery>> {
        self.leaks_list_deliveries(target, limit).await
    }
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
