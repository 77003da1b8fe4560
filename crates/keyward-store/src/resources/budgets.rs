//! Spending budgets and the alerts sent about them.

use crate::columns::backend;
use crate::common;
use crate::sql::{SqlStore, Stmt};
use crate::{StoreError, StoreResult};
use async_trait::async_trait;
use keyward_core::{Budget, BudgetScope};

/// Spending budgets and the alerts sent about them.
#[async_trait]
pub trait BudgetStore: Send + Sync {
    /// Creates or replaces the budget of `budget.scope`.
    async fn set_budget(&self, budget: &Budget, now_ms: i64) -> StoreResult<()>;
    /// Removes a budget; `NotFound` if there is none.
    async fn delete_budget(&self, scope: &BudgetScope) -> StoreResult<()>;
    /// The budgets of these scopes (those that have one).
    async fn budgets_for(&self, scopes: &[BudgetScope]) -> StoreResult<Vec<Budget>>;
    /// Every budget.
    async fn list_budgets(&self) -> StoreResult<Vec<Budget>>;
    /// Records that `threshold` percent of a budget was crossed in the period that
    /// starts at `period_start`; true the first time only (so alerts fire once).
    async fn record_budget_alert(
        &self,
        scope: &BudgetScope,
        period_start: i64,
        threshold: u32,
        now_ms: i64,
    ) -> StoreResult<bool>;
}

#[async_trait]
impl<S: SqlStore> BudgetStore for S {
    async fn set_budget(&self, budget: &Budget, now_ms: i64) -> StoreResult<()> {
        let db = self.db();
        Stmt::new(
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
        .execute(db.writer())
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn delete_budget(&self, scope: &BudgetScope) -> StoreResult<()> {
        let db = self.db();
        let mut tx = db.begin().await?;
        let done = Stmt::new("DELETE FROM budgets WHERE scope = $1 AND scope_id = $2")
            .bind(scope.kind())
            .bind(scope.id())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        if done == 0 {
            return Err(StoreError::NotFound("budget"));
        }
        // A budget set again later starts with no alerts sent.
        Stmt::new("DELETE FROM budget_alerts WHERE scope = $1 AND scope_id = $2")
            .bind(scope.kind())
            .bind(scope.id())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        tx.commit().await
    }

    async fn budgets_for(&self, scopes: &[BudgetScope]) -> StoreResult<Vec<Budget>> {
        let db = self.db();
        if scopes.is_empty() {
            return Ok(Vec::new());
        }
        let mut qb = Stmt::new(format!(
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
        qb.all(db.reader(), common::budget).await
    }

    async fn list_budgets(&self) -> StoreResult<Vec<Budget>> {
        let db = self.db();
        let sql = format!(
            "SELECT {} FROM budgets ORDER BY scope, scope_id",
            common::BUDGET_COLUMNS
        );
        Stmt::new(&sql).all(db.reader(), common::budget).await
    }

    async fn record_budget_alert(
        &self,
        scope: &BudgetScope,
        period_start: i64,
        threshold: u32,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let db = self.db();
        let done = Stmt::new(
            "INSERT INTO budget_alerts (scope, scope_id, period_start, threshold, at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(scope.kind())
        .bind(scope.id())
        .bind(period_start)
        .bind(i64::from(threshold))
        .bind(now_ms)
        .execute(db.writer())
        .await
        .map_err(backend)?;
        Ok(done == 1)
    }
}
