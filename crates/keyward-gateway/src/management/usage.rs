//! Usage totals and time buckets, per key, project or organization.

use super::orgs::{resolve_org, resolve_project};
use super::{ApiError, Caller};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_api::usage::{Usage, UsageBucket, UsageGroup, UsageTotals};
use keyward_core::BudgetScope;
use keyward_core::KeyId;
use keyward_store::{Bucket, GroupBy, UsageFilter};
use serde::Deserialize;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The route of `/api/v1/usage`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new().routes(routes!(usage))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    key: Option<String>,
    project: Option<String>,
    org: Option<String>,
    /// Start, ms since the epoch (inclusive).
    from: Option<i64>,
    /// End, ms since the epoch (exclusive).
    to: Option<i64>,
    /// `hour`, `day` or `month` (UTC calendar months) to include a time series.
    bucket: Option<Bucket>,
    /// `key`, `project`, `model` or `tag` to include totals per group.
    group_by: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/usage", tag = "usage",  responses((status = 200, description = "Totals, and buckets or groups when asked for", body = keyward_api::usage::Usage)))]
pub async fn usage(
    State(state): State<SharedState>,
    caller: Caller,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Usage>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let mut filter = UsageFilter {
        from: q.from,
        to: q.to,
        ..Default::default()
    };
    if let Some(k) = q.key.as_deref() {
        let id = KeyId::parse(k).ok_or(ApiError::NotFound("key"))?;
        state
            .store
            .get_key(&id)
            .await?
            .filter(|k| caller.sees(&k.org_id))
            .ok_or(ApiError::NotFound("key"))?;
        filter.key = Some(id);
    }
    let org = caller.org_or_own(q.org.as_deref());
    if let Some(p) = q.project.as_deref() {
        let project = resolve_project(&state, org.as_deref(), p, false).await?;
        caller.check_org(&project.org_id, "project")?;
        filter.project = Some(project.id);
    } else if org.is_some() {
        let org = resolve_org(&state, org.as_deref()).await?;
        caller.check_org(&org.id, "organization")?;
        filter.org = Some(org.id);
    }
    // Read-your-writes on this node: events still waiting in the batch are written
    // first, so a caller sees the request it just made.
    state.usage.flush().await;
    let totals = state.store.usage_totals(&filter).await?;
    let mut body = Usage {
        key: filter.key.clone(),
        project: filter.project.clone(),
        org: filter.org.clone(),
        from: q.from,
        to: q.to,
        totals: api_totals(totals),
        buckets: None,
        reserved_micros: None,
        groups: None,
    };
    if let Some(b) = q.bucket {
        let buckets = state.store.usage_buckets(&filter, b).await?;
        body.buckets = Some(
            buckets
                .into_iter()
                .map(|b| UsageBucket {
                    start: b.start,
                    totals: api_totals(b.totals),
                })
                .collect(),
        );
    }
    if let Some(key) = &filter.key {
        // Money held right now by requests in flight against the key's budget.
        let now = state.clock.now_ms();
        let scope = BudgetScope::Key(key.to_string());
        let reserved = match state
            .store
            .budgets_for(std::slice::from_ref(&scope))
            .await?
            .first()
        {
            Some(b) => {
                state
                    .limits
                    .counters
                    .account(&(scope, b.period.start(now)))
                    .await
                    .reserved
            }
            None => 0,
        };
        body.reserved_micros = Some(reserved);
    }
    match q.group_by.as_deref() {
        None => {}
        Some("key") => {
            body.groups = Some(api_groups(
                state.store.usage_grouped(&filter, GroupBy::Key).await?,
            ))
        }
        Some("project") => {
            body.groups = Some(api_groups(
                state.store.usage_grouped(&filter, GroupBy::Project).await?,
            ))
        }
        Some("model") => {
            body.groups = Some(api_groups(
                state.store.usage_grouped(&filter, GroupBy::Model).await?,
            ))
        }
        Some("tag") => body.groups = Some(by_tag(&state, &filter).await?),
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "unknown group_by {other:?}: use key, project, model or tag"
            )))
        }
    }
    Ok(Json(body))
}

/// Totals per tag: each key's totals count toward every tag it carries; keys
/// without tags are grouped under `(untagged)`.
async fn by_tag(
    state: &crate::state::AppState,
    filter: &UsageFilter,
) -> Result<Vec<UsageGroup>, ApiError> {
    let per_key = state.store.usage_grouped(filter, GroupBy::Key).await?;
    let keys = state.store.list_keys(None).await?;
    let mut tags: std::collections::BTreeMap<String, keyward_store::UsageTotals> =
        Default::default();
    for g in per_key {
        let key_tags = keys
            .iter()
            .find(|k| k.id.as_str() == g.group)
            .map(|k| k.tags.clone())
            .unwrap_or_default();
        let names = if key_tags.is_empty() {
            vec!["(untagged)".to_owned()]
        } else {
            key_tags
        };
        for t in names {
            tags.entry(t).or_default().add(&g.totals);
        }
    }
    Ok(tags
        .into_iter()
        .map(|(tag, totals)| UsageGroup {
            group: tag,
            totals: api_totals(totals),
        })
        .collect())
}

/// Storage's sums as the API shows them (the same fields).
fn api_totals(t: keyward_store::UsageTotals) -> UsageTotals {
    UsageTotals {
        requests: t.requests,
        errors: t.errors,
        input_tokens: t.input_tokens,
        cached_input_tokens: t.cached_input_tokens,
        output_tokens: t.output_tokens,
        reasoning_tokens: t.reasoning_tokens,
        cost_micros: t.cost_micros,
        incomplete: t.incomplete,
    }
}

fn api_groups(groups: Vec<keyward_store::UsageGroup>) -> Vec<UsageGroup> {
    groups
        .into_iter()
        .map(|g| UsageGroup {
            group: g.group,
            totals: api_totals(g.totals),
        })
        .collect()
}
