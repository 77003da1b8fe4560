//! Metered usage: raw events and the hourly rollups.

use crate::columns::{backend, Columns};
use crate::common::{self, HOUR_MS};
use crate::sql::{Db, SqlStore, Stmt};
use crate::{
    Bucket, GroupBy, StoreResult, UsageBucket, UsageEvent, UsageFilter, UsageGroup,
    UsageSeriesPoint, UsageTotals,
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
    /// Totals per time bucket and group, oldest bucket first and, within one,
    /// groups in byte order; empty cells omitted. `only`, when not empty: just
    /// these groups (a chart's top few).
    async fn usage_series(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
        by: GroupBy,
        only: &[String],
    ) -> StoreResult<Vec<UsageSeriesPoint>>;
    /// Raw events matching `filter`, newest first, at most `limit`.
    async fn usage_events(&self, filter: &UsageFilter, limit: i64) -> StoreResult<Vec<UsageEvent>>;
    /// Totals grouped by key, project or model, most expensive first.
    async fn usage_grouped(
        &self,
        filter: &UsageFilter,
        by: GroupBy,
    ) -> StoreResult<Vec<UsageGroup>>;
}

/// The rollup a query reads: the daily one when its range is whole UTC days
/// (each bound absent or at a midnight), else the hourly one, per model when
/// grouping by model. Either way a query reads at most one row per key (and
/// model) per period, however many requests the period held.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rollup {
    table: &'static str,
    /// Its period-start column.
    start: &'static str,
}

impl Rollup {
    const HOURLY: Rollup = Rollup {
        table: "usage_hourly",
        start: "hour_start",
    };
    const HOURLY_MODELS: Rollup = Rollup {
        table: "usage_hourly_models",
        start: "hour_start",
    };
    const DAILY: Rollup = Rollup {
        table: "usage_daily",
        start: "day_start",
    };

    /// For the range [`from`, `filter.to`), `from` already rounded down to
    /// its bucket (at least to the hour). `hourly_only`: hour buckets.
    fn for_range(
        filter: &UsageFilter,
        from: Option<i64>,
        by_model: bool,
        hourly_only: bool,
    ) -> Self {
        let whole_day = |t: Option<i64>| t.is_none_or(|t| t.rem_euclid(common::DAY_MS) == 0);
        if !hourly_only && whole_day(from) && whole_day(filter.to) {
            Rollup::DAILY
        } else if by_model {
            Rollup::HOURLY_MODELS
        } else {
            Rollup::HOURLY
        }
    }
}

/// The column `by` groups on.
fn group_column(by: GroupBy) -> &'static str {
    match by {
        GroupBy::Key => "key_id",
        GroupBy::Project => "project_id",
        GroupBy::Model => "model",
    }
}

/// A rollup query: the summed counters, after any grouping columns (each an
/// expression and its alias).
fn rollup_query<'a>(groups: &[(&str, &str)], table: &str) -> Stmt<'a> {
    let mut qb = Stmt::new("SELECT ");
    for (expr, alias) in groups {
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
        let from = common::rounded_from(filter, HOUR_MS);
        let rollup = Rollup::for_range(filter, from, false, false);
        let mut qb = rollup_query(&[], rollup.table);
        common::push_usage_filter(&mut qb, filter, rollup.start, from);
        let row = qb.fetch_one(self.db().reader()).await.map_err(backend)?;
        common::totals(&row)
    }

    async fn usage_buckets(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
    ) -> StoreResult<Vec<UsageBucket>> {
        let (expr, rollup, from) = bucket_query(self.db(), filter, bucket, false);
        let mut qb = rollup_query(&[(&expr, "bucket_start")], rollup.table);
        common::push_usage_filter(&mut qb, filter, rollup.start, from);
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

    async fn usage_series(
        &self,
        filter: &UsageFilter,
        bucket: Bucket,
        by: GroupBy,
        only: &[String],
    ) -> StoreResult<Vec<UsageSeriesPoint>> {
        let db = self.db();
        let (expr, rollup, from) = bucket_query(db, filter, bucket, by == GroupBy::Model);
        let column = group_column(by);
        let mut qb = rollup_query(&[(&expr, "bucket_start"), (column, "grp")], rollup.table);
        let filtered = common::push_usage_filter(&mut qb, filter, rollup.start, from);
        if !only.is_empty() {
            qb.push(if filtered { " AND " } else { " WHERE " })
                .push(column)
                .push(" IN (");
            for (i, group) in only.iter().enumerate() {
                if i > 0 {
                    qb.push(", ");
                }
                qb.push_bind(group.as_str());
            }
            qb.push(")");
        }
        qb.push(" GROUP BY bucket_start, ").push(column);
        qb.push(" ORDER BY bucket_start, ")
            .push(column)
            .push(db.bytewise());
        let rows = qb.fetch_all(db.reader()).await.map_err(backend)?;
        rows.iter()
            .map(|r| {
                Ok(UsageSeriesPoint {
                    start: r.int("bucket_start")?,
                    group: r.text("grp")?,
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
        // Every grouping reads a rollup, so a range is rounded out to whole hours.
        let from = common::rounded_from(filter, HOUR_MS);
        let rollup = Rollup::for_range(filter, from, by == GroupBy::Model, false);
        let column = group_column(by);
        let mut qb = rollup_query(&[(column, "grp")], rollup.table);
        common::push_usage_filter(&mut qb, filter, rollup.start, from);
        qb.push(" GROUP BY ").push(column);
        qb.push(" ORDER BY cost_micros DESC, ")
            .push(column)
            .push(db.bytewise());
        qb.all(db.reader(), common::usage_group).await
    }
}

/// A time-bucketed query's bucket expression, its rollup and where it starts:
/// `from` rounded down to its bucket's start, as the buckets are whole.
fn bucket_query(
    db: &Db,
    filter: &UsageFilter,
    bucket: Bucket,
    by_model: bool,
) -> (String, Rollup, Option<i64>) {
    let from = match bucket {
        Bucket::Hour => common::rounded_from(filter, HOUR_MS),
        Bucket::Day => common::rounded_from(filter, common::DAY_MS),
        Bucket::Month => filter.from.map(|f| Period::Month.start(f)),
    };
    let rollup = Rollup::for_range(filter, from, by_model, bucket == Bucket::Hour);
    let start = rollup.start;
    let expr = match bucket {
        Bucket::Hour => start.to_owned(),
        Bucket::Day => format!("{start} - {start} % 86400000"),
        Bucket::Month => db.month_start(start),
    };
    (expr, rollup, from)
}
