//! PostgreSQL backend, for several gateway nodes sharing durable state.
//!
//! Batches travel as arrays (`UNNEST`), so a usage batch of any size is four
//! statements (the events and three rollups). Rows that concurrent transactions both update (rollups, keys'
//! `last_used_at`) are always locked in primary-key order, so batches cannot
//! deadlock.
//!
//! The queries are in `resources/`, shared with SQLite; this module holds what
//! only PostgreSQL does: connecting, those array statements, raw usage in a
//! table of its own, and lookups by many hashes with `= ANY($1)`.

use crate::columns::backend;
use crate::common;
use crate::sql::{Db, On, SqlStore, Stmt};
use crate::{StoreError, StoreResult, UsageEvent, UsageFilter};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;
use std::collections::BTreeMap;
use std::str::FromStr;

static MIGRATOR: Migrator = sqlx::migrate!("./migrations/postgres");

/// Connections per node; PostgreSQL's own default limit is 100 for all clients.
const MAX_CONNECTIONS: u32 = 10;

/// The PostgreSQL store. Cheap to clone (a pool).
#[derive(Clone, Debug)]
pub struct PgStore {
    db: Db,
}

impl SqlStore for PgStore {
    fn db(&self) -> &Db {
        &self.db
    }
}

impl PgStore {
    /// Connects to `url` and brings the schema up to date, in the server's default
    /// `search_path` (normally `public`).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        Self::connect_options(parse_url(url)?, None).await
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
        Self::connect_options(options, Some(schema)).await
    }

    async fn connect_options(options: PgConnectOptions, schema: Option<&str>) -> StoreResult<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .connect_with(options)
            .await
            .map_err(backend)?;
        let db = Db::Postgres(pool.clone());
        // The lock is held by a connection taken off the pool and closed at the
        // end: PostgreSQL drops a session's advisory locks when it ends, so the
        // lock is released on every path (an error, a refusal, a start cut short
        // by a dropped future), never left on a pooled connection.
        let mut conn = pool.acquire().await.map_err(backend)?.detach();
        let prepared = prepare_schema(&mut conn, &db, schema).await;
        let _ = conn.close().await;
        prepared?;
        Ok(Self { db })
    }

    /// Closes the pool, waiting for connections in use to be returned.
    pub async fn close(&self) {
        if let Db::Postgres(pool) = &self.db {
            pool.close().await;
        }
    }
}

/// Brings the schema up to date, once, however many nodes start at the same
/// time: everything runs under one advisory lock per database and schema, so a
/// second node waits, then finds the migrations applied and the legacy audit
/// events chained. sqlx's migrator takes its own lock (per database) inside
/// ours, always in that order, and does not release it when it fails; closing
/// `conn` does.
///
/// `CREATE SCHEMA IF NOT EXISTS` needs the lock too: two at once can both see
/// the schema missing and one fails on PostgreSQL's unique name index.
async fn prepare_schema(conn: &mut PgConnection, db: &Db, schema: Option<&str>) -> StoreResult<()> {
    sqlx::query(
        "SELECT pg_advisory_lock(hashtextextended('keyward schema ' || current_database() || '.' || $1, 0))",
    )
    .bind(schema.unwrap_or(""))
    .execute(&mut *conn)
    .await
    .map_err(backend)?;
    if let Some(schema) = schema {
        // `connect_with_schema` checked the name, so it can be spliced in unquoted.
        sqlx::query(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .execute(&mut *conn)
            .await
            .map_err(backend)?;
    }
    // Two statements: PostgreSQL resolves every table a statement names
    // before running it, even in a branch that is not taken.
    let tracked: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(backend)?;
    let applied: Option<i64> = if tracked {
        sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(&mut *conn)
            .await
            .map_err(backend)?
    } else {
        None
    };
    crate::columns::refuse_newer_schema(applied, &MIGRATOR)?;
    MIGRATOR
        .run_direct(&mut *conn)
        .await
        .map_err(crate::columns::migrate_error)?;
    common::chain_legacy_audit(db).await?;
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut *conn)
        .await
        .map_err(backend)?;
    Ok(())
}

/// Parses a connection URL. The error never repeats the URL: it may hold a password.
fn parse_url(url: &str) -> StoreResult<PgConnectOptions> {
    PgConnectOptions::from_str(url)
        .map_err(|_| StoreError::Backend("invalid PostgreSQL connection URL".into()))
}

/// Records when keys were last used, in one statement.
pub(crate) async fn touch_keys(pool: &PgPool, uses: &BTreeMap<&str, i64>) -> StoreResult<()> {
    let (ids, times): (Vec<&str>, Vec<i64>) = uses.iter().map(|(k, v)| (*k, *v)).unzip();
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
    .execute(pool)
    .await
    .map_err(backend)?;
    Ok(())
}

/// Appends a batch to `usage_events` and adds it to the hourly and daily
/// rollups, each in one statement of arrays.
pub(crate) async fn insert_usage(pool: &PgPool, events: &[UsageEvent]) -> StoreResult<()> {
    let deltas = common::hourly_deltas(events);
    let columns = EventColumns::new(events);
    let mut tx = pool.begin().await.map_err(backend)?;
    sqlx::query(&format!(
        "INSERT INTO usage_events ({}) SELECT * FROM UNNEST(\
         $1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[], $6::TEXT[], $7::INTEGER[], \
         $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[], $13::BIGINT[], \
         $14::BIGINT[], $15::TEXT[], $16::BOOLEAN[], $17::BOOLEAN[])",
        common::USAGE_EVENT_COLUMNS
    ))
    .bind(&columns.key_id)
    .bind(&columns.project_id)
    .bind(&columns.org_id)
    .bind(&columns.at)
    .bind(&columns.endpoint)
    .bind(&columns.model)
    .bind(&columns.status)
    .bind(&columns.input_tokens)
    .bind(&columns.cached_input_tokens)
    .bind(&columns.output_tokens)
    .bind(&columns.reasoning_tokens)
    .bind(&columns.cost_micros)
    .bind(&columns.upstream_latency_ms)
    .bind(&columns.total_latency_ms)
    .bind(&columns.client_ip)
    .bind(&columns.streamed)
    .bind(&columns.incomplete)
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    let hourly = RollupColumns::new(deltas.iter().map(|((k, h), d)| (*k, *h, "", d)));
    upsert_rollup(
        &mut tx,
        "usage_hourly",
        "hour_start",
        "key_id, hour_start",
        false,
        &hourly,
    )
    .await?;
    for (table, start, primary, width) in [
        (
            "usage_hourly_models",
            "hour_start",
            "key_id, hour_start, model",
            common::HOUR_MS,
        ),
        (
            "usage_daily",
            "day_start",
            "org_id, day_start, key_id, model",
            common::DAY_MS,
        ),
    ] {
        let deltas = common::model_deltas(events, width);
        let columns = RollupColumns::new(deltas.iter().map(|((k, s, m), d)| (*k, *s, *m, d)));
        upsert_rollup(&mut tx, table, start, primary, true, &columns).await?;
    }
    tx.commit().await.map_err(backend)
}

/// Adds `rows` (per key and `start`, and per model when `with_model`) to a
/// rollup whose primary key is `primary`, in one statement of arrays. ORDER BY
/// the primary key makes the row-lock order explicit (see the module docs).
async fn upsert_rollup(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    table: &str,
    start: &str,
    primary: &str,
    with_model: bool,
    rows: &RollupColumns<'_>,
) -> StoreResult<()> {
    let counters = common::COUNTERS.join(", ");
    let updates: Vec<String> = common::COUNTERS
        .iter()
        .map(|c| format!("{c} = {table}.{c} + excluded.{c}"))
        .collect();
    let (model, model_array) = if with_model {
        ("model, ", "$13::TEXT[], ")
    } else {
        ("", "")
    };
    let sql = format!(
        "INSERT INTO {table} (key_id, {start}, {model}project_id, org_id, {counters}) \
         SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], {model_array}$3::TEXT[], $4::TEXT[], \
         $5::BIGINT[], $6::BIGINT[], $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], \
         $11::BIGINT[], $12::BIGINT[]) \
         AS v (key_id, {start}, {model}project_id, org_id, {counters}) \
         ORDER BY {primary} \
         ON CONFLICT ({primary}) DO UPDATE SET {}",
        updates.join(", ")
    );
    let mut q = sqlx::query(&sql)
        .bind(&rows.key_id)
        .bind(&rows.start)
        .bind(&rows.project_id)
        .bind(&rows.org_id)
        .bind(&rows.requests)
        .bind(&rows.errors)
        .bind(&rows.input_tokens)
        .bind(&rows.cached_input_tokens)
        .bind(&rows.output_tokens)
        .bind(&rows.reasoning_tokens)
        .bind(&rows.cost_micros)
        .bind(&rows.incomplete);
    if with_model {
        q = q.bind(&rows.model);
    }
    q.execute(&mut **tx).await.map_err(backend)?;
    Ok(())
}

/// Raw events matching `filter`, newest first, at most `limit`.
pub(crate) async fn usage_events(
    pool: &PgPool,
    filter: &UsageFilter,
    limit: i64,
) -> StoreResult<Vec<UsageEvent>> {
    let mut qb = Stmt::new(format!(
        "SELECT {} FROM usage_events",
        common::USAGE_EVENT_COLUMNS
    ));
    common::push_usage_filter(&mut qb, filter, "at", filter.from);
    qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
        .push_bind(limit.max(0));
    let rows = qb.fetch_all(On::PgPool(pool)).await.map_err(backend)?;
    rows.iter().map(common::usage_event).collect()
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
    start: Vec<i64>,
    /// Empty strings for a rollup without a model column (not bound then).
    model: Vec<&'a str>,
    project_id: Vec<&'a str>,
    org_id: Vec<&'a str>,
    requests: Vec<i64>,
    errors: Vec<i64>,
    input_tokens: Vec<i64>,
    cached_input_tokens: Vec<i64>,
    output_tokens: Vec<i64>,
    reasoning_tokens: Vec<i64>,
    cost_micros: Vec<i64>,
    incomplete: Vec<i64>,
}

impl<'a> RollupColumns<'a> {
    /// From (key, period start, model, delta) rows.
    fn new<'d>(
        rows: impl Iterator<Item = (&'a str, i64, &'a str, &'d common::HourlyDelta<'a>)>,
    ) -> Self
    where
        'a: 'd,
    {
        let mut out = RollupColumns {
            key_id: vec![],
            start: vec![],
            model: vec![],
            project_id: vec![],
            org_id: vec![],
            requests: vec![],
            errors: vec![],
            input_tokens: vec![],
            cached_input_tokens: vec![],
            output_tokens: vec![],
            reasoning_tokens: vec![],
            cost_micros: vec![],
            incomplete: vec![],
        };
        for (key, start, model, d) in rows {
            let t = &d.totals;
            out.key_id.push(key);
            out.start.push(start);
            out.model.push(model);
            out.project_id.push(d.project_id);
            out.org_id.push(d.org_id);
            out.requests.push(t.requests);
            out.errors.push(t.errors);
            out.input_tokens.push(t.input_tokens);
            out.cached_input_tokens.push(t.cached_input_tokens);
            out.output_tokens.push(t.output_tokens);
            out.reasoning_tokens.push(t.reasoning_tokens);
            out.cost_micros.push(t.cost_micros);
            out.incomplete.push(t.incomplete);
        }
        out
    }
}
