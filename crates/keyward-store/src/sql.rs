//! The one bridge between the queries both backends share and sqlx: a statement
//! is written once, with `$N` placeholders (SQLite's driver accepts them too),
//! its arguments are plain values, and it runs on whichever database the store
//! opened. The few places where the databases differ in SQL are the methods of
//! [`Db`] that return a fragment; where they differ in more than a fragment, the
//! resource calls the backend's own module.
//!
//! Decision: a small enum dispatch instead of code generic over
//! `sqlx::Database`. Generic code needs a dozen higher-ranked bounds repeated on
//! every impl, and compiles each query twice; here each query is one function,
//! and the cost is a match and a `Vec` of arguments per statement, nothing next
//! to a round trip to the database.

use crate::columns::{backend, Columns};
use crate::StoreResult;
use keyward_core::KeyHash;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Database, Encode, IntoArguments, Postgres, Sqlite, Type};
use std::borrow::Cow;
use std::fmt::Write as _;

/// How many hashes one SQLite `IN` list holds, well under its limit on bound
/// parameters.
const HASHES_PER_QUERY: usize = 500;

/// The pools of an open store.
#[derive(Clone, Debug)]
pub enum Db {
    /// SQLite: one writer connection and a pool of readers (see `sqlite.rs`).
    Sqlite {
        /// The single connection every write goes through.
        writer: SqlitePool,
        /// Read-only connections.
        reader: SqlitePool,
    },
    /// PostgreSQL: one pool for reads and writes.
    Postgres(PgPool),
}

/// Gives the shared resource implementations the store's pools. Implemented by
/// [`crate::sqlite::SqliteStore`] and [`crate::postgres::PgStore`]; every
/// resource trait is implemented once for both through it.
pub trait SqlStore: Send + Sync + 'static {
    /// The store's pools.
    fn db(&self) -> &Db;
}

/// Where a statement runs: a pool, or a connection inside a transaction.
pub enum On<'c> {
    SqlitePool(&'c SqlitePool),
    SqliteConn(&'c mut SqliteConnection),
    PgPool(&'c PgPool),
    PgConn(&'c mut PgConnection),
}

impl Db {
    /// Where reads go: SQLite's readers, or the pool.
    pub fn reader(&self) -> On<'_> {
        match self {
            Db::Sqlite { reader, .. } => On::SqlitePool(reader),
            Db::Postgres(pool) => On::PgPool(pool),
        }
    }

    /// Where writes go: SQLite's single writer, or the pool.
    pub fn writer(&self) -> On<'_> {
        match self {
            Db::Sqlite { writer, .. } => On::SqlitePool(writer),
            Db::Postgres(pool) => On::PgPool(pool),
        }
    }

    /// Starts a transaction on the writer.
    pub async fn begin(&self) -> StoreResult<Tx> {
        Ok(match self {
            Db::Sqlite { writer, .. } => Tx::Sqlite(writer.begin().await.map_err(backend)?),
            Db::Postgres(pool) => Tx::Postgres(pool.begin().await.map_err(backend)?),
        })
    }

    /// Starts a read-only transaction that sees one snapshot of the database
    /// throughout: on a SQLite reader (WAL keeps its snapshot until the end),
    /// or at PostgreSQL's `REPEATABLE READ`. For reads of many statements that
    /// must agree with each other, such as walking the audit chains.
    pub async fn begin_snapshot(&self) -> StoreResult<Tx> {
        Ok(match self {
            Db::Sqlite { reader, .. } => Tx::Sqlite(reader.begin().await.map_err(backend)?),
            Db::Postgres(pool) => {
                let mut tx = pool.begin().await.map_err(backend)?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                    .execute(&mut *tx)
                    .await
                    .map_err(backend)?;
                Tx::Postgres(tx)
            }
        })
    }

    /// Appended to a `SELECT` of a row the transaction then changes, to hold
    /// other writers off it until commit: SQLite's single writer already does.
    pub fn for_update(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "",
            Db::Postgres(_) => " FOR UPDATE",
        }
    }

    /// The rows of `head <matches any hash> tail`, where `head` ends in the
    /// column holding hashes: `IN (…)` lists on SQLite, one array on PostgreSQL.
    pub async fn rows_by_hashes(
        &self,
        head: &str,
        tail: &str,
        hashes: &[KeyHash],
    ) -> StoreResult<Vec<Row>> {
        match self {
            Db::Sqlite { reader, .. } => {
                let mut out = Vec::new();
                for chunk in hashes.chunks(HASHES_PER_QUERY) {
                    let mut qb = Stmt::new(format!("{head} IN ("));
                    for (i, h) in chunk.iter().enumerate() {
                        if i > 0 {
                            qb.push(", ");
                        }
                        qb.push_bind(h.to_hex());
                    }
                    qb.push(")").push(tail);
                    out.extend(
                        qb.fetch_all(On::SqlitePool(reader))
                            .await
                            .map_err(backend)?,
                    );
                }
                Ok(out)
            }
            Db::Postgres(pool) => {
                let hex: Vec<String> = hashes.iter().map(KeyHash::to_hex).collect();
                let rows = sqlx::query(&format!("{head} = ANY($1){tail}"))
                    .bind(&hex)
                    .fetch_all(pool)
                    .await
                    .map_err(backend)?;
                Ok(rows.into_iter().map(Row::Postgres).collect())
            }
        }
    }

    /// Appended to a `SELECT` whose rows a claim then updates: on PostgreSQL
    /// concurrent claimers on other nodes skip each other's rows; SQLite's single
    /// writer already makes the claim one atomic statement.
    pub fn skip_locked(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "",
            Db::Postgres(_) => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// A parameter holding JSON text, as the column stores it: TEXT on SQLite,
    /// JSONB on PostgreSQL.
    pub fn json(&self, param: &str) -> String {
        match self {
            Db::Sqlite { .. } => param.to_owned(),
            Db::Postgres(_) => format!("CAST({param} AS JSONB)"),
        }
    }

    /// The start (ms) of the UTC calendar month holding `ms`, an SQL expression
    /// of milliseconds since the epoch.
    pub fn month_start(&self, ms: &str) -> String {
        match self {
            Db::Sqlite { .. } => format!(
                "CAST(strftime('%s', {ms} / 1000, 'unixepoch', 'start of month') AS INTEGER) * 1000"
            ),
            Db::Postgres(_) => format!(
                "CAST(EXTRACT(EPOCH FROM date_trunc('month', to_timestamp({ms} / 1000) AT TIME ZONE 'UTC')) AS BIGINT) * 1000"
            ),
        }
    }

    /// The collation that orders text by bytes: SQLite's default, named on
    /// PostgreSQL so that ties break the same whatever the database's collation.
    pub fn bytewise(&self) -> &'static str {
        match self {
            Db::Sqlite { .. } => "",
            Db::Postgres(_) => " COLLATE \"C\"",
        }
    }
}

/// An open transaction; dropped without [`Tx::commit`], it rolls back.
pub enum Tx {
    Sqlite(sqlx::Transaction<'static, Sqlite>),
    Postgres(sqlx::Transaction<'static, Postgres>),
}

impl Tx {
    /// Where a statement inside this transaction runs.
    pub fn on(&mut self) -> On<'_> {
        match self {
            Tx::Sqlite(tx) => On::SqliteConn(tx),
            Tx::Postgres(tx) => On::PgConn(tx),
        }
    }

    /// Commits.
    pub async fn commit(self) -> StoreResult<()> {
        match self {
            Tx::Sqlite(tx) => tx.commit().await,
            Tx::Postgres(tx) => tx.commit().await,
        }
        .map_err(backend)
    }
}

/// A row of either backend.
pub enum Row {
    Sqlite(SqliteRow),
    Postgres(PgRow),
}

impl Columns for Row {
    fn text(&self, col: &str) -> StoreResult<String> {
        match self {
            Row::Sqlite(r) => r.text(col),
            Row::Postgres(r) => r.text(col),
        }
    }
    fn opt_text(&self, col: &str) -> StoreResult<Option<String>> {
        match self {
            Row::Sqlite(r) => r.opt_text(col),
            Row::Postgres(r) => r.opt_text(col),
        }
    }
    fn int(&self, col: &str) -> StoreResult<i64> {
        match self {
            Row::Sqlite(r) => r.int(col),
            Row::Postgres(r) => r.int(col),
        }
    }
    fn opt_int(&self, col: &str) -> StoreResult<Option<i64>> {
        match self {
            Row::Sqlite(r) => r.opt_int(col),
            Row::Postgres(r) => r.opt_int(col),
        }
    }
    fn int32(&self, col: &str) -> StoreResult<i32> {
        match self {
            Row::Sqlite(r) => r.int32(col),
            Row::Postgres(r) => r.int32(col),
        }
    }
    fn flag(&self, col: &str) -> StoreResult<bool> {
        match self {
            Row::Sqlite(r) => r.flag(col),
            Row::Postgres(r) => r.flag(col),
        }
    }
}

/// A bound value: the types the shared queries bind.
#[derive(Debug)]
pub enum Arg<'a> {
    Text(Cow<'a, str>),
    OptText(Option<Cow<'a, str>>),
    Int(i64),
    OptInt(Option<i64>),
    Flag(bool),
}

impl<'a> From<&'a str> for Arg<'a> {
    fn from(v: &'a str) -> Self {
        Arg::Text(Cow::Borrowed(v))
    }
}
impl<'a> From<&'a String> for Arg<'a> {
    fn from(v: &'a String) -> Self {
        Arg::Text(Cow::Borrowed(v))
    }
}
impl From<String> for Arg<'_> {
    fn from(v: String) -> Self {
        Arg::Text(Cow::Owned(v))
    }
}
impl<'a> From<Option<&'a str>> for Arg<'a> {
    fn from(v: Option<&'a str>) -> Self {
        Arg::OptText(v.map(Cow::Borrowed))
    }
}
impl From<i64> for Arg<'_> {
    fn from(v: i64) -> Self {
        Arg::Int(v)
    }
}
impl From<Option<i64>> for Arg<'_> {
    fn from(v: Option<i64>) -> Self {
        Arg::OptInt(v)
    }
}
impl From<bool> for Arg<'_> {
    fn from(v: bool) -> Self {
        Arg::Flag(v)
    }
}

/// A statement and its arguments, built like sqlx's `query(..).bind(..)` or,
/// for statements assembled piece by piece, like its `QueryBuilder`.
pub struct Stmt<'a> {
    sql: Cow<'a, str>,
    args: Vec<Arg<'a>>,
}

impl<'a> Stmt<'a> {
    /// A statement of fixed text.
    pub fn new(sql: impl Into<Cow<'a, str>>) -> Self {
        Stmt {
            sql: sql.into(),
            args: Vec::new(),
        }
    }

    /// Binds the next numbered placeholder already in the text.
    pub fn bind(mut self, value: impl Into<Arg<'a>>) -> Self {
        self.args.push(value.into());
        self
    }

    /// Appends text.
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.to_mut().push_str(sql);
        self
    }

    /// Appends a placeholder for `value`, numbered after those bound so far.
    pub fn push_bind(&mut self, value: impl Into<Arg<'a>>) -> &mut Self {
        self.args.push(value.into());
        let n = self.args.len();
        // Writing to a String cannot fail.
        let _ = write!(self.sql.to_mut(), "${n}");
        self
    }

    /// The sqlx query for one backend, its arguments bound in order.
    fn query<DB>(&self) -> sqlx::query::Query<'_, DB, <DB as Database>::Arguments<'_>>
    where
        DB: Database,
        for<'q> &'q str: Encode<'q, DB> + Type<DB>,
        for<'q> Option<&'q str>: Encode<'q, DB> + Type<DB>,
        for<'q> i64: Encode<'q, DB> + Type<DB>,
        for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
        for<'q> bool: Encode<'q, DB> + Type<DB>,
        for<'q> <DB as Database>::Arguments<'q>: IntoArguments<'q, DB>,
    {
        let mut q = sqlx::query::<DB>(&self.sql);
        for arg in &self.args {
            q = match arg {
                Arg::Text(v) => q.bind(v.as_ref()),
                Arg::OptText(v) => q.bind(v.as_deref()),
                Arg::Int(v) => q.bind(*v),
                Arg::OptInt(v) => q.bind(*v),
                Arg::Flag(v) => q.bind(*v),
            };
        }
        q
    }

    /// Every row, decoded by `decode`.
    pub async fn all<T>(
        &self,
        on: On<'_>,
        decode: impl FnMut(&Row) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let rows = self.fetch_all(on).await.map_err(backend)?;
        rows.iter().map(decode).collect()
    }

    /// The first row, if any, decoded by `decode`.
    pub async fn optional<T>(
        &self,
        on: On<'_>,
        decode: impl FnOnce(&Row) -> StoreResult<T>,
    ) -> StoreResult<Option<T>> {
        let row = self.fetch_optional(on).await.map_err(backend)?;
        row.as_ref().map(decode).transpose()
    }

    /// Every row.
    pub async fn fetch_all(&self, on: On<'_>) -> Result<Vec<Row>, sqlx::Error> {
        Ok(match on {
            On::SqlitePool(e) => wrap(self.query::<Sqlite>().fetch_all(e).await?, Row::Sqlite),
            On::SqliteConn(e) => wrap(self.query::<Sqlite>().fetch_all(e).await?, Row::Sqlite),
            On::PgPool(e) => wrap(self.query::<Postgres>().fetch_all(e).await?, Row::Postgres),
            On::PgConn(e) => wrap(self.query::<Postgres>().fetch_all(e).await?, Row::Postgres),
        })
    }

    /// The first row, if any.
    pub async fn fetch_optional(&self, on: On<'_>) -> Result<Option<Row>, sqlx::Error> {
        Ok(match on {
            On::SqlitePool(e) => self
                .query::<Sqlite>()
                .fetch_optional(e)
                .await?
                .map(Row::Sqlite),
            On::SqliteConn(e) => self
                .query::<Sqlite>()
                .fetch_optional(e)
                .await?
                .map(Row::Sqlite),
            On::PgPool(e) => self
                .query::<Postgres>()
                .fetch_optional(e)
                .await?
                .map(Row::Postgres),
            On::PgConn(e) => self
                .query::<Postgres>()
                .fetch_optional(e)
                .await?
                .map(Row::Postgres),
        })
    }

    /// Exactly one row; none is an error.
    pub async fn fetch_one(&self, on: On<'_>) -> Result<Row, sqlx::Error> {
        self.fetch_optional(on)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// Runs the statement; the number of rows it changed.
    pub async fn execute(&self, on: On<'_>) -> Result<u64, sqlx::Error> {
        Ok(match on {
            On::SqlitePool(e) => self.query::<Sqlite>().execute(e).await?.rows_affected(),
            On::SqliteConn(e) => self.query::<Sqlite>().execute(e).await?.rows_affected(),
            On::PgPool(e) => self.query::<Postgres>().execute(e).await?.rows_affected(),
            On::PgConn(e) => self.query::<Postgres>().execute(e).await?.rows_affected(),
        })
    }
}

fn wrap<R>(rows: Vec<R>, into: fn(R) -> Row) -> Vec<Row> {
    rows.into_iter().map(into).collect()
}
