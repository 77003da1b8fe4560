//! Budgets on organizations, projects and keys.

use super::extract::ApiJson;
use super::orgs::{resolve_org, resolve_project};
use super::policy_input::ToBudget;
use super::{ApiError, Caller};
use crate::cluster::Invalidation;
use crate::state::{AppState, SharedState};
use axum::extract::State;
use axum::Json;
use keyward_api::budgets::{BudgetStatus, ScopeRef, SetBudget};
use keyward_api::keys::BudgetInput;
use keyward_api::{Deleted, List};
use keyward_core::Budget;
use keyward_core::{BudgetScope, KeyId, OrgId};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of `/api/v1/budgets`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(list, set, delete))
}

/// The scope a request names, if the caller may see it.
async fn scope_of(
    state: &AppState,
    caller: &Caller,
    org: Option<&str>,
    project: Option<&str>,
    key: Option<&str>,
) -> Result<BudgetScope, ApiError> {
    match (org, project, key) {
        (Some(o), None, None) => {
            let org = resolve_org(state, Some(o)).await?;
            caller.check_org(&org.id, "organization")?;
            Ok(BudgetScope::Org(org.id.to_string()))
        }
        (o, Some(p), None) => {
            let o = caller.org_or_own(o);
            let project = resolve_project(state, o.as_deref(), p, false).await?;
            caller.check_org(&project.org_id, "project")?;
            Ok(BudgetScope::Project(project.id.to_string()))
        }
        (None, None, Some(k)) => {
            let id = KeyId::parse(k).ok_or(ApiError::NotFound("key"))?;
            state
                .store
                .get_key(&id)
                .await?
                .filter(|key| caller.sees(&key.org_id))
                .ok_or(ApiError::NotFound("key"))?;
            Ok(BudgetScope::Key(id.to_string()))
        }
        _ => Err(ApiError::BadRequest(
            "name exactly one of org, project (optionally with its org) or key".into(),
        )),
    }
}

/// `PUT /api/v1/budgets`: create or replace a budget.
#[utoipa::path(put, path = "/api/v1/budgets", tag = "budgets", request_body = keyward_api::budgets::SetBudget, responses((status = 200, description = "The budget")))]
async fn set(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<SetBudget>,
) -> Result<Json<Budget>, ApiError> {
    // Validate the amount before looking anything up, so bad input stores nothing.
    let mut budget = BudgetInput {
        usd: req.usd,
        period: req.period,
        soft: req.soft,
    }
    .into_budget(BudgetScope::Org(String::new()))?;
    caller.require_recent(&state)?;
    let scope = scope_of(
        &state,
        &caller,
        req.org.as_deref(),
        req.project.as_deref(),
        req.key.as_deref(),
    )
    .await?;
    budget.scope = scope.clone();
    let now = state.clock.now_ms();
    state.store.set_budget(&budget, now).await?;
    state
        .invalidate(Invalidation::Budget(scope.id().to_owned()))
        .await;
    let org = scope_org(&state, &scope).await?;
    caller
        .audit(
            &state,
            org.as_ref(),
            "budget.set",
            scope.id(),
            json!(budget),
        )
        .await?;
    Ok(Json(budget))
}

/// `GET /api/v1/budgets`: every budget with its spend in the current period.
#[utoipa::path(get, path = "/api/v1/budgets", tag = "budgets",  responses((status = 200, description = "Every budget with its current period", body = keyward_api::List<keyward_api::budgets::BudgetStatus>)))]
async fn list(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<List<BudgetStatus>>, ApiError> {
    let now = state.clock.now_ms();
    // Spend still waiting in the usage batch must show, as admission counts it.
    state.limits.unwritten.flush().await;
    let mut out = Vec::new();
    for b in state.store.list_budgets().await? {
        if !scope_visible(&state, &caller, &b.scope).await? {
            continue;
        }
        let start = b.period.start(now);
        let account = state
            .limits
            .counters
            .account(&(b.scope.clone(), start))
            .await;
        let spent = crate::limits::admission::spent_since(&state.limits, &b.scope, start).await?;
        out.push(BudgetStatus {
            budget: b,
            period_start: start,
            spent_micros: spent,
            reserved_micros: account.reserved,
        });
    }
    Ok(Json(List::new(out)))
}

/// Whether the caller may see a budget of `scope` (its organization's).
async fn scope_visible(
    state: &AppState,
    caller: &Caller,
    scope: &BudgetScope,
) -> Result<bool, ApiError> {
    if caller.org.is_none() {
        return Ok(true);
    }
    let org = scope_org(state, scope).await?;
    Ok(org.is_some_and(|o| caller.sees(&o)))
}

/// The organization a budget's scope belongs to (`None` once it is gone).
async fn scope_org(state: &AppState, scope: &BudgetScope) -> Result<Option<OrgId>, ApiError> {
    Ok(match scope {
        BudgetScope::Org(id) => OrgId::parse(id),
        BudgetScope::Project(id) => match keyward_core::ProjectId::parse(id) {
            Some(p) => state.store.get_project(&p).await?.map(|p| p.org_id),
            None => None,
        },
        BudgetScope::Key(id) => match KeyId::parse(id) {
            Some(k) => state.store.get_key(&k).await?.map(|k| k.org_id),
            None => None,
        },
    })
}

/// `DELETE /api/v1/budgets`: removes the budget of one scope.
#[utoipa::path(delete, path = "/api/v1/budgets", tag = "budgets", request_body = keyward_api::budgets::ScopeRef, responses((status = 200, description = "`{\"deleted\": scope}`")))]
async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<ScopeRef>,
) -> Result<Json<Deleted<BudgetScope>>, ApiError> {
    let scope = scope_of(
        &state,
        &caller,
        req.org.as_deref(),
        req.project.as_deref(),
        req.key.as_deref(),
    )
    .await?;
    let org = scope_org(&state, &scope).await?;
    state.store.delete_budget(&scope).await?;
    state
        .invalidate(Invalidation::Budget(scope.id().to_owned()))
        .await;
    caller
        .audit(
            &state,
            org.as_ref(),
            "budget.deleted",
            scope.id(),
            json!(scope),
        )
        .await?;
    Ok(Json(Deleted { deleted: scope }))
}
