//! PostgreSQL backend, for several gateway nodes sharing durable state.
//!
//! Batches travel as arrays (`UNNEST`), so a usage batch of any size is two
//! statements. Rows that concurrent transactions both update (rollups, keys'
//! `last_used_at`) are always locked in key order, so batches cannot deadlock.

use crate::common::{self, backend, write_error, HOUR_MS};
use crate::{
    AdminKey, AdminKeyRevocation, AuditEvent, Bucket, GroupBy, KeyRecord, KeyStatus, NewAdminKey,
    NewAuditEvent, NewKey, NewSecret, Org, Project, ProjectPolicy, Store, StoreError, StoreResult,
    UsageBucket, UsageEvent, UsageFilter, UsageGroup, UsageTotals,
};
use async_trait::async_trait;
use keyward_core::{AuditId, Budget, BudgetScope, KeyHash, KeyId, KeyPolicy, OrgId, ProjectId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{Postgres, QueryBuilder};
use std::str::FromStr;

mod leaks;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Revokes the active tokens of a parent (`$1` now, `$2` the parent's id).
const REVOKE_TOKENS: &str =
    "UPDATE keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, $1) \
     WHERE parent_key_id = $2 AND status = 'active'";

/// Connections per node; PostgreSQL's own default limit is 100 for all clients.
const MAX_CONNECTIONS: u32 = 10;

/// The PostgreSQL store. Cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to `url` and brings the schema up to date, in the server's default
    /// `search_path` (normally `public`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_options(parse_url(url)?).await
    }

    /// Connects to `url` with every table in `schema` (created if missing) instead
    /// of the default `search_path`, and brings that schema up to date.
    ///
    /// Tests use it to give each test its own schema in one database, so they can
    /// run in parallel and be dropped afterwards (`DROP SCHEMA … CASCADE`); a
    /// deployment could use it to share a database with other applications. The
    /// name must be a plain lowercase identifier (`[a-z_][a-z0-9_]*`, at most 63
    /// characters).
    pub async fn connect_with_schema(url: &str, schema: &str) -> StoreResult<Self> {
        let plain = schema.len() <= 63
            && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && schema
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain {
            return Err(StoreError::Backend(format!(
                "invalid PostgreSQL schema name {schema:?}"
            )));
        }
        let options = parse_url(url)?.options([("search_path", schema)]);
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(backend)?;
        // The name was checked above, so it can be spliced in unquoted.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&pool)
            .await
            .map_err(backend)?;
        Self::migrate(pool).await
    }

    async fn connect_options(options: PgConnectOptions) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(backend)?;
        Self::migrate(pool).await
    }

    async fn migrate(pool: PgPool) -> StoreResult<Self> {
        MIGRATOR.run(&pool).await.map_err(common::migrate_error)?;
        Ok(Self { pool })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Parses a connection URL. The error never repeats the URL: it may hold a password.
fn parse_url(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Backend("invalid PostgreSQL connection URL".into()))
}

/// A rollup query: the summed counters, optionally with a grouping column (an
/// expression and its alias).
fn rollup_query<'a>(group: Option<(&str, &str)>) -> QueryBuilder<'a, Postgres> {
    let mut qb = QueryBuilder::new("SELECT ");
    if let Some((expr, alias)) = group {
        qb.push(expr).push(" AS ").push(alias).push(", ");
    }
    for (i, c) in common::COUNTERS.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        // SUM(BIGINT) is NUMERIC in PostgreSQL.
        qb.push(format_args!("CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}"));
    }
    qb.push(" FROM usage_hourly");
    qb
}

#[async_trait]
impl Store for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
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
        sqlx::query("INSERT INTO orgs (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(org.id.as_str())
            .bind(&org.name)
            .bind(org.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| write_error(e, "org", "org"))?;
        Ok(org)
    }

    async fn org_by_name(&self, name: &str) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {} FROM orgs WHERE name = $1", common::ORG_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::org).transpose()
    }

    async fn get_org(&self, id: &OrgId) -> StoreResult<Option<Org>> {
        let sql = format!("SELECT {} FROM orgs WHERE id = $1", common::ORG_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
            .fetch_all(&self.pool)
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
        sqlx::query("INSERT INTO projects (id, org_id, name, created_at) VALUES ($1, $2, $3, $4)")
            .bind(project.id.as_str())
            .bind(project.org_id.as_str())
            .bind(&project.name)
            .bind(project.created_at)
            .execute(&self.pool)
            .await
            .map_err(|e| write_error(e, "project", "org"))?;
        Ok(project)
    }

    async fn project_by_name(&self, org: &OrgId, name: &str) -> StoreResult<Option<Project>> {
        let sql = format!(
            "SELECT {} FROM projects WHERE org_id = $1 AND name = $2",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(org.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::project).transpose()
    }

    async fn get_project(&self, id: &ProjectId) -> StoreResult<Option<Project>> {
        let sql = format!(
            "SELECT {} FROM projects WHERE id = $1",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::project).transpose()
    }

    async fn list_projects(&self, org: Option<&OrgId>) -> StoreResult<Vec<Project>> {
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM projects",
            common::PROJECT_COLUMNS
        ));
        if let Some(org) = org {
            qb.push(" WHERE org_id = ").push_bind(org.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The org is taken from the project, so a key can never disagree with it.
        let org_id: Option<String> = sqlx::query_scalar(
            "INSERT INTO keys (id, project_id, org_id, name, hint, status, tags, created_by, created_at, expires_at, \
             parent_key_id, parent_secret_hash, policy) \
             SELECT $1, p.id, p.org_id, $2, $3, 'active', $4, $5, $6, $7, $8, $9, $10 FROM projects p \
             WHERE p.id = $11 RETURNING org_id",
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
        sqlx::query(
            "INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES ($1, $2, $3, $4, NULL)",
        )
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
             JOIN (SELECT key_id, expires_at AS secret_expires_at FROM key_secrets WHERE hash_hex = $1) s \
             ON s.key_id = keys.id",
            common::KEY_COLUMNS,
            common::MINTED_FROM_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| common::key(r, true)).transpose()
    }

    async fn get_key(&self, id: &KeyId) -> StoreResult<Option<KeyRecord>> {
        let sql = format!("SELECT {} FROM keys WHERE id = $1", common::KEY_COLUMNS);
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(|r| common::key(r, false)).transpose()
    }

    async fn list_keys(&self, project: Option<&ProjectId>) -> StoreResult<Vec<KeyRecord>> {
        let mut qb =
            QueryBuilder::<Postgres>::new(format!("SELECT {} FROM keys", common::KEY_COLUMNS));
        if let Some(project) = project {
            qb.push(" WHERE project_id = ").push_bind(project.as_str());
        }
        qb.push(" ORDER BY created_at, id");
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
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
            "UPDATE keys SET status = $1, \
             revoked_at = CASE WHEN $1 = 'active' THEN NULL ELSE COALESCE(revoked_at, $2) END \
             WHERE id = $3 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(status.as_str())
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        let row = row.ok_or(StoreError::NotFound("key"))?;
        common::key(&row, false)
    }

    async fn delete_key(&self, id: &KeyId) -> StoreResult<()> {
        // Secrets go with the key (ON DELETE CASCADE); usage has no foreign key.
        let done = sqlx::query("DELETE FROM keys WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
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
        let (ids, times): (Vec<&str>, Vec<i64>) = uses.into_iter().unzip();
        // Lock the rows in id order first: two nodes touching overlapping keys then
        // queue instead of deadlocking.
        sqlx::query(
            "WITH v AS (SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v (id, at)), \
             locked AS (SELECT keys.id FROM keys JOIN v ON v.id = keys.id ORDER BY keys.id FOR UPDATE OF keys) \
             UPDATE keys SET last_used_at = v.at FROM v, locked \
             WHERE keys.id = v.id AND locked.id = v.id \
             AND (keys.last_used_at IS NULL OR keys.last_used_at < v.at)",
        )
        .bind(&ids)
        .bind(&times)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn create_admin_key(&self, key: &NewAdminKey) -> StoreResult<AdminKey> {
        let hash_hex = common::canonical_hash(&key.hash_hex)?;
        sqlx::query(
            "INSERT INTO admin_keys (id, name, hash_hex, hint, status, created_at, created_by) \
             VALUES ($1, $2, $3, $4, 'active', $5, $6)",
        )
        .bind(key.id.as_str())
        .bind(&key.name)
        .bind(&hash_hex)
        .bind(&key.hint)
        .bind(key.created_at)
        .bind(key.created_by.as_deref())
        .execute(&self.pool)
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
            "SELECT {} FROM admin_keys WHERE hash_hex = $1",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(hash.to_hex())
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn count_admin_keys(&self) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT COUNT(*) FROM admin_keys")
            .fetch_one(&self.pool)
            .await
            .map_err(backend)
    }

    async fn list_admin_keys(&self) -> StoreResult<Vec<AdminKey>> {
        let sql = format!(
            "SELECT {} FROM admin_keys ORDER BY created_at, id",
            common::ADMIN_KEY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(common::admin_key).collect()
    }

    async fn get_admin_key(&self, id: &KeyId) -> StoreResult<Option<AdminKey>> {
        let sql = format!(
            "SELECT {} FROM admin_keys WHERE id = $1",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // Locking every active admin key makes concurrent revocations take
        // turns, so each counts what the one before it left.
        let active: Vec<String> = sqlx::query_scalar(
            "SELECT id FROM admin_keys WHERE status = 'active' ORDER BY id FOR UPDATE",
        )
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        if active.iter().any(|a| a == id.as_str()) && active.len() < 2 {
            return Ok(AdminKeyRevocation::LastActive);
        }
        let sql = format!(
            "UPDATE admin_keys SET status = 'revoked', revoked_at = $1 \
             WHERE id = $2 AND status = 'active' RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        if let Some(row) = row {
            return Ok(AdminKeyRevocation::Revoked(common::admin_key(&row)?));
        }
        let key = self
            .get_admin_key(id)
            .await?
            .ok_or(StoreError::NotFound("admin key"))?;
        Ok(AdminKeyRevocation::NotActive(key))
    }

    async fn mark_admin_key_leaked(
        &self,
        id: &KeyId,
        now_ms: i64,
    ) -> StoreResult<Option<AdminKey>> {
        let sql = format!(
            "UPDATE admin_keys SET status = 'leaked', revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 AND status = 'active' RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
            "UPDATE admin_keys SET hash_hex = $1, hint = $2, rotated_at = $3, \
             status = 'active', revoked_at = NULL \
             WHERE id = $4 AND status IN ('active', 'leaked') RETURNING {}",
            common::ADMIN_KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(&hash_hex)
            .bind(&secret.hint)
            .bind(now_ms)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| write_error(e, "admin key", "admin key"))?;
        row.as_ref().map(common::admin_key).transpose()
    }

    async fn insert_usage(&self, events: &[UsageEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        let deltas = common::hourly_deltas(events);
        let events = EventColumns::new(events);
        let rollups = RollupColumns::new(&deltas);
        let mut tx = self.pool.begin().await.map_err(backend)?;
        sqlx::query(&format!(
            "INSERT INTO usage_events ({}) SELECT * FROM UNNEST(\
             $1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::INTEGER[], \
             $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], \
             $14::BIGINT[], $15::TEXT[], $16::BOOLEAN[], $17::BOOLEAN[])",
            common::USAGE_EVENT_COLUMNS
        ))
        .bind(&events.key_id)
        .bind(&events.project_id)
        .bind(&events.org_id)
        .bind(&events.at)
        .bind(&events.endpoint)
        .bind(&events.model)
        .bind(&events.status)
        .bind(&events.input_tokens)
        .bind(&events.cached_input_tokens)
        .bind(&events.output_tokens)
        .bind(&events.reasoning_tokens)
        .bind(&events.cost_micros)
        .bind(&events.upstream_latency_ms)
        .bind(&events.total_latency_ms)
        .bind(&events.client_ip)
        .bind(&events.streamed)
        .bind(&events.incomplete)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // ORDER BY makes the row-lock order explicit (see the module docs).
        let counters = common::COUNTERS.join(", ");
        let updates: Vec<String> = common::COUNTERS
            .iter()
            .map(|c| format!("{c} = usage_hourly.{c} + excluded.{c}"))
            .collect();
        sqlx::query(&format!(
            "INSERT INTO usage_hourly (key_id, hour_start, project_id, org_id, {counters}) \
             SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::BIGINT[], $6::BIGINT[], \
             $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[]) \
             AS v (key_id, hour_start, project_id, org_id, {counters}) \
             ORDER BY key_id, hour_start \
             ON CONFLICT (key_id, hour_start) DO UPDATE SET {}",
            updates.join(", ")
        ))
        .bind(&rollups.key_id)
        .bind(&rollups.hour_start)
        .bind(&rollups.project_id)
        .bind(&rollups.org_id)
        .bind(&rollups.requests)
        .bind(&rollups.errors)
        .bind(&rollups.input_tokens)
        .bind(&rollups.cached_input_tokens)
        .bind(&rollups.output_tokens)
        .bind(&rollups.reasoning_tokens)
        .bind(&rollups.cost_micros)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> StoreResult<UsageTotals> {
        let mut qb = rollup_query(None);
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, HOUR_MS),
        );
        let row = qb.build().fetch_one(&self.pool).await.map_err(backend)?;
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
        let mut qb = rollup_query(Some((expr, "bucket_start")));
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, width),
        );
        qb.push(" GROUP BY bucket_start ORDER BY bucket_start");
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
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
        let mut qb = QueryBuilder::<Postgres>::new(format!(
            "SELECT {} FROM usage_events",
            common::USAGE_EVENT_COLUMNS
        ));
        common::push_usage_filter(&mut qb, filter, "at", filter.from);
        qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(common::usage_event).collect()
    }

    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent> {
        let id = AuditId::generate();
        sqlx::query(
            "INSERT INTO audit_events (id, at, actor, action, target, detail) \
             VALUES ($1, $2, $3, $4, $5, CAST($6 AS JSONB))",
        )
        .bind(id.as_str())
        .bind(event.at)
        .bind(&event.actor)
        .bind(&event.action)
        .bind(&event.target)
        .bind(common::encode_detail(&event.detail)?)
        .execute(&self.pool)
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
        let mut qb = QueryBuilder::<Postgres>::new(
            "SELECT id, at, actor, action, target, CAST(detail AS TEXT) AS detail FROM audit_events",
        );
        if let Some(target) = target {
            qb.push(" WHERE target = ").push_bind(target);
        }
        qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(limit.max(0));
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(common::audit_event).collect()
    }

    async fn set_key_policy(&self, id: &KeyId, policy: &KeyPolicy) -> StoreResult<KeyRecord> {
        let sql = format!(
            "UPDATE keys SET policy = $1 WHERE id = $2 RETURNING {}",
            common::KEY_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(common::encode_json(policy, "key policy")?)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
            "UPDATE projects SET policy = $1 WHERE id = $2 RETURNING {}",
            common::PROJECT_COLUMNS
        );
        let row = sqlx::query(&sql)
            .bind(common::encode_json(policy, "project policy")?)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
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
        let mut tx = self.pool.begin().await.map_err(backend)?;
        // The key row first: it finds out whether the key exists, and its row lock
        // makes concurrent rotations of one key take turns.
        let sql = format!(
            "UPDATE keys SET hint = $1, rotated_at = $2, \
             status = CASE WHEN $3 THEN 'active' ELSE status END, \
             revoked_at = CASE WHEN $3 THEN NULL ELSE revoked_at END \
             WHERE id = $4 RETURNING {}",
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
            "UPDATE key_secrets SET expires_at = $1 \
             WHERE key_id = $2 AND (expires_at IS NULL OR expires_at > $1)",
        )
        .bind(old_expires_at)
        .bind(id.as_str())
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        sqlx::query(
            "INSERT INTO key_secrets (hash_hex, key_id, hint, created_at, expires_at) VALUES ($1, $2, $3, $4, NULL)",
        )
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
            "SELECT {} FROM keys WHERE parent_key_id = $1 ORDER BY created_at, id",
            common::KEY_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(parent.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(|r| common::key(r, false)).collect()
    }

    async fn revoke_tokens(&self, parent: &KeyId, now_ms: i64) -> StoreResult<Vec<KeyId>> {
        let ids: Vec<String> = sqlx::query_scalar(&format!("{REVOKE_TOKENS} RETURNING id"))
            .bind(now_ms)
            .bind(parent.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(ids.into_iter().map(KeyId::from_trusted).collect())
    }

    async fn current_secret(&self, id: &KeyId) -> StoreResult<Option<KeyHash>> {
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT hash_hex FROM key_secrets WHERE key_id = $1 AND expires_at IS NULL \
             ORDER BY created_at DESC LIMIT 1",
        )
        .bind(id.as_str())
        .fetch_optional(&self.pool)
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
             VALUES ($1, $2, $3, $4, $5, $6) \
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
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let done = sqlx::query("DELETE FROM budgets WHERE scope = $1 AND scope_id = $2")
            .bind(scope.kind())
            .bind(scope.id())
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound("budget"));
        }
        // A budget set again later starts with no alerts sent.
        sqlx::query("DELETE FROM budget_alerts WHERE scope = $1 AND scope_id = $2")
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
        let (kinds, ids): (Vec<&str>, Vec<&str>) =
            scopes.iter().map(|s| (s.kind(), s.id())).unzip();
        let sql = format!(
            "SELECT {} FROM budgets \
             WHERE (scope, scope_id) IN (SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[])) \
             ORDER BY scope, scope_id",
            common::BUDGET_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .bind(&kinds)
            .bind(&ids)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        rows.iter().map(common::budget).collect()
    }

    async fn list_budgets(&self) -> StoreResult<Vec<Budget>> {
        let sql = format!(
            "SELECT {} FROM budgets ORDER BY scope, scope_id",
            common::BUDGET_COLUMNS
        );
        let rows = sqlx::query(&sql)
            .fetch_all(&self.pool)
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
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(scope.kind())
        .bind(scope.id())
        .bind(period_start)
        .bind(i64::from(threshold))
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(done.rows_affected() == 1)
    }

    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>> {
        // Ties are broken by byte order ("C"), as SQLite does, whatever the
        // database's collation.
        let aligned;
        let mut qb = match by {
            GroupBy::Key => {
                let mut qb = rollup_query(Some(("key_id", "grp")));
                common::push_usage_filter(
                    &mut qb,
                    filter,
                    "hour_start",
                    common::rounded_from(filter, HOUR_MS),
                );
                qb.push(" GROUP BY key_id ORDER BY cost_micros DESC, key_id COLLATE \"C\"");
                qb
            }
            GroupBy::Model => {
                aligned = common::hour_aligned(filter);
                // SUM(BIGINT) is NUMERIC in PostgreSQL.
                let mut qb = QueryBuilder::<Postgres>::new(
                    "SELECT model AS grp, COUNT(*) AS requests, \
                     CAST(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END) AS BIGINT) AS errors",
                );
                for c in &common::COUNTERS[2..] {
                    qb.push(format_args!(", CAST(SUM({c}) AS BIGINT) AS {c}"));
                }
                qb.push(" FROM usage_events");
                common::push_usage_filter(&mut qb, &aligned, "at", aligned.from);
                qb.push(" GROUP BY model ORDER BY cost_micros DESC, model COLLATE \"C\"");
                qb
            }
        };
        let rows = qb.build().fetch_all(&self.pool).await.map_err(backend)?;
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

/// A usage batch as one array per column, for `UNNEST`.
struct EventColumns<'a> {
    key_id: Vec<&'a str>,
    project_id: Vec<&'a str>,
    org_id: Vec<&'a str>,
    at: Vec<i64>,
    endpoint: Vec<&'a str>,
    model: Vec<&'a str>,
    status: Vec<i32>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    cost_micros: Vec<i64>,
    upstream_latency_ms: Vec<i64>,
    total_latency_ms: Vec<i64>,
    client_ip: Vec<Option<&'a str>>,
    streamed: Vec<bool>,
    incomplete: Vec<bool>,
}

impl<'a> EventColumns<'a> {
    fn new(events: &'a [UsageEvent]) -> Self {
        let col = |f: fn(&'a UsageEvent) -> i64| events.iter().map(f).collect::<Vec<_>>();
        Self {
            key_id: events.iter().map(|e| e.key_id.as_str()).collect(),
            project_id: events.iter().map(|e| e.project_id.as_str()).collect(),
            org_id: events.iter().map(|e| e.org_id.as_str()).collect(),
            at: col(|e| e.at),
            endpoint: events.iter().map(|e| e.endpoint.as_str()).collect(),
            model: events.iter().map(|e| e.model.as_str()).collect(),
            status: events.iter().map(|e| i32::from(e.status)).collect(),
            input_tokens: col(|e| e.input_tokens),
            cached_input_tokens: col(|e| e.cached_input_tokens),
            output_tokens: col(|e| e.output_tokens),
            reasoning_tokens: col(|e| e.reasoning_tokens),
            cost_micros: col(|e| e.cost_micros.0),
            upstream_latency_ms: col(|e| e.upstream_latency_ms),
            total_latency_ms: col(|e| e.total_latency_ms),
            client_ip: events.iter().map(|e| e.client_ip.as_deref()).collect(),
            streamed: events.iter().map(|e| e.streamed).collect(),
            incomplete: events.iter().map(|e| e.incomplete).collect(),
        }
    }
}

/// Rollup deltas as one array per column, for `UNNEST`.
struct RollupColumns<'a> {
    key_id: Vec<&'a str>,
    hour_start: Vec<i64>,
    project_id: Vec<&'a str>,
    org_id: Vec<&'a str>,
    requests: Vec<i64>,
    errors: Vec<i64>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    cost_micros: Vec<i64>,
}

impl<'a> RollupColumns<'a> {
    fn new(deltas: &std::collections::BTreeMap<(&'a str, i64), common::HourlyDelta<'a>>) -> Self {
        let col =
            |f: fn(&UsageTotals) -> i64| deltas.values().map(|d| f(&d.totals)).collect::<Vec<_>>();
        Self {
            key_id: deltas.keys().map(|(k, _)| *k).collect(),
            hour_start: deltas.keys().map(|(_, h)| *h).collect(),
            project_id: deltas.values().map(|d| d.project_id).collect(),
            org_id: deltas.values().map(|d| d.org_id).collect(),
            requests: col(|t| t.requests),
            errors: col(|t| t.errors),
            input_tokens: col(|t| t.input_tokens),
            cached_input_tokens: col(|t| t.cached_input_tokens),
            output_tokens: col(|t| t.output_tokens),
            reasoning_tokens: col(|t| t.reasoning_tokens),
            cost_micros: col(|t| t.cost_micros),
        }
    }
}
