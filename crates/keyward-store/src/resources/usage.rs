//! Metered usage: raw events and the hourly rollups.

use crate::columns::{backend, Columns};
use crate::common::{self, HOUR_MS};
use crate::sql::{Db, SqlStore, Stmt};
use crate::{
    Bucket, GroupBy, StoreResult, UsageBucket, UsageEvent, UsageFilter, UsageGroup, UsageTotals,
};
use async_trait::async_trait;
use keyward_core::Period;

/// Metered usage: raw events and the hourly rollups.
#[async_trait]
pub trait UsageStore: Send + Sync {
    /// Appends usage events and adds them to the hourly rollups, atomically: after
    /// a successful return every event is counted exactly once.
    async fn insert_usage(&self, events: &[UsageEvent]) -> StoreResult<()>;
    /// Totals over the rollups matching `filter`.
    async fn usage_totals(&self, filter: &UsageFilter) -> StoreResult<UsageTotals>;
    /// Totals per hour, day or calendar month (UTC), oldest first, empty
    /// buckets omitted.
    async fn usage_buckets(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> StoreResult<Vec<UsageBucket>>;
    /// Raw events matching `filter`, newest first, at most `limit`.
    async fn usage_events(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageEvent>>;
    /// Totals grouped by key or project (from the hourly rollups) or by model
    /// (from the per-model rollup on SQLite, the events on PostgreSQL), most
    /// expensive first.
    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>>;
}

/// A rollup query: the summed counters, optionally with a grouping column (an
/// expression and its alias).
fn rollup_query<'a>(group: Option<(&str, &str)>, table: &str) -> Stmt<'a> {
    let mut qb = Stmt::new("SELECT ");
    if let Some((expr, alias)) = group {
        qb.push(expr).push(" AS ").push(alias).push(", ");
    }
    for (i, c) in common::COUNTERS.iter().enumerate() {
        if i > 0 {
            qb.push(", ");
        }
        // SUM(BIGINT) is NUMERIC in PostgreSQL; the cast changes nothing on SQLite.
        qb.push(&format!("CAST(COALESCE(SUM({c}), 0) AS BIGINT) AS {c}"));
    }
    qb.push(" FROM ").push(table);
    qb
}

#[async_trait]
impl<S: SqlStore> UsageStore for S {
    async fn insert_usage(&self, events: &[UsageEvent]) -> StoreResult<()> {
        if events.is_empty() {
            return Ok(());
        }
        match self.db() {
            Db::Sqlite { writer, .. } => crate::sqlite::insert_usage(writer, events).await,
            Db::Postgres(pool) => crate::postgres::insert_usage(pool, events).await,
        }
    }

    async fn usage_totals(&self, filter: &UsageFilter) -> StoreResult<UsageTotals> {
        let mut qb = rollup_query(None, "usage_hourly");
        common::push_usage_filter(
            &mut qb,
            filter,
            "hour_start",
            common::rounded_from(filter, HOUR_MS),
        );
        let row = qb.fetch_one(self.db().reader()).await.map_err(backend)?;
        common::totals(&row)
    }

    async fn usage_buckets(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> StoreResult<Vec<UsageBucket>> {
        // `from` rounds down to its bucket's start, as the buckets are whole.
        let (expr, from) = match bucket {
            Bucket::Hour => (
                "hour_start".to_owned(),
                common::rounded_from(filter, HOUR_MS),
            ),
            Bucket::Day => (
                "hour_start - hour_start % 86400000".to_owned(),
                common::rounded_from(filter, common::DAY_MS),
            ),
            Bucket::Month => (
                self.db().month_start("hour_start"),
                filter.from.map(|f| Period::Month.start(f)),
            ),
        };
        let mut qb = rollup_query(Some((&expr, "bucket_start")), "usage_hourly");
        common::push_usage_filter(&mut qb, filter, "hour_start", from);
        qb.push(" GROUP BY bucket_start ORDER BY bucket_start");
        let rows = qb.fetch_all(self.db().reader()).await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(UsageBucket {
                    start: r.int("bucket_start")?,
                    totals: common::totals(r)?,
                })
            })
            .collect()
    }

    async fn usage_events(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageEvent>> {
        match self.db() {
            Db::Sqlite { reader, .. } => {
                crate::sqlite::usage_blocks::latest(reader, filter, limit).await
            }
            Db::Postgres(pool) => crate::postgres::usage_events(pool, filter, limit).await,
        }
    }

    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>> {
        let db = self.db();
        // PostgreSQL keeps raw events in a table and no per-model rollup.
        if let (GroupBy::Model, Db::Postgres(pool)) = (by, db) {
            return crate::postgres::usage_by_model(pool, filter).await;
        }
        // Every grouping reads a rollup, so a range is rounded out to whole hours.
        let (column, table) = match by {
            GroupBy::Key => ("key_id", "usage_hourly"),
            GroupBy::Project => ("project_id", "usage_hourly"),
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
        qb.push(" ORDER BY cost_micros DESC, ")
            .push(column)
            .push(db.bytewise());
        qb.all(db.reader(), common::usage_group).await
    }
}
