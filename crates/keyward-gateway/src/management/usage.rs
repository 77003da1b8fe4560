//! Usage totals and time buckets, per key, project or organization.

use super::orgs::{resolve_org, resolve_project};
use super::{ApiError, Caller};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_api::usage::{Usage, UsageBucket, UsageGroup, UsageSeries, UsageTotals, OTHER_GROUP};
use keyward_core::BudgetScope;
use keyward_core::KeyId;
use keyward_store::{Bucket, GroupBy, UsageFilter};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
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
    /// `key`, `project`, `model` or `tag` to include totals per group (and,
    /// with `bucket`, each group's time series).
    group_by: Option<String>,
    /// Keep the `top` most expensive groups; the rest are summed as `(other)`.
    top: Option<usize>,
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
        series: None,
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
    if let Some(by) = q.group_by.as_deref() {
        let by = Grouping::parse(by)?;
        let groups = grouped(&state, &filter, by, q.bucket, q.top).await?;
        body.groups = Some(groups.groups);
        body.series = groups.series;
    }
    Ok(Json(body))
}

/// What usage is grouped by: a rollup column, or tags (each key's usage
/// counted toward every tag it carries).
#[derive(Clone, Copy)]
enum Grouping {
    Column(GroupBy),
    Tag,
}

impl Grouping {
    fn parse(by: &str) -> Result<Self, ApiError> {
        Ok(match by {
            "key" => Grouping::Column(GroupBy::Key),
            "project" => Grouping::Column(GroupBy::Project),
            "model" => Grouping::Column(GroupBy::Model),
            "tag" => Grouping::Tag,
            other => {
                return Err(ApiError::BadRequest(format!(
                    "unknown group_by {other:?}: use key, project, model or tag"
                )))
            }
        })
    }
}

/// Groups and, with a bucket, their series.
struct Grouped {
    groups: Vec<UsageGroup>,
    series: Option<Vec<UsageSeries>>,
}

/// Totals per group (most expensive first, ties by name) and each group's
/// series, named for people, the groups beyond `top` summed as `(other)`.
async fn grouped(
    state: &crate::state::AppState,
    filter: &UsageFilter,
    by: Grouping,
    bucket: Option<Bucket>,
    top: Option<usize>,
) -> Result<Grouped, ApiError> {
    let column = match by {
        Grouping::Column(c) => c,
        Grouping::Tag => GroupBy::Key,
    };
    let rows = state.store.usage_grouped(filter, column).await?;
    let points = match bucket {
        Some(b) => Some(state.store.usage_series(filter, b, column).await?),
        None => None,
    };
    // Names of keys and projects, and each key's tags, for the groups at hand.
    let names: HashMap<String, (String, Vec<String>)> = match column {
        GroupBy::Key => state
            .store
            .list_keys(None)
            .await?
            .into_iter()
            .map(|k| (k.id.to_string(), (k.name, k.tags)))
            .collect(),
        GroupBy::Project => state
            .store
            .list_projects(None)
            .await?
            .into_iter()
            .map(|p| (p.id.to_string(), (p.name, Vec::new())))
            .collect(),
        GroupBy::Model => HashMap::new(),
    };
    // The group(s) one rollup row counts toward.
    let targets = |group: &str| -> Vec<String> {
        match by {
            Grouping::Column(_) => vec![group.to_owned()],
            Grouping::Tag => match names.get(group) {
                Some((_, tags)) if !tags.is_empty() => tags.clone(),
                _ => vec![UNTAGGED.to_owned()],
            },
        }
    };
    let mut totals: HashMap<String, keyward_store::UsageTotals> = HashMap::new();
    for row in &rows {
        for t in targets(&row.group) {
            totals.entry(t).or_default().add(&row.totals);
        }
    }
    let mut order: Vec<(String, keyward_store::UsageTotals)> = totals.into_iter().collect();
    order.sort_by(|a, b| {
        b.1.cost_micros
            .cmp(&a.1.cost_micros)
            .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
    });
    // Beyond `top`, everything is `(other)`.
    let kept: HashMap<String, usize> = order
        .iter()
        .take(top.unwrap_or(usize::MAX))
        .enumerate()
        .map(|(i, (g, _))| (g.clone(), i))
        .collect();
    let slot = |g: &str| kept.get(g).copied().unwrap_or(kept.len());
    let name_of = |g: &str| match by {
        Grouping::Column(_) => names.get(g).map(|(n, _)| n.clone()),
        Grouping::Tag => None,
    };
    let mut groups: Vec<UsageGroup> = order
        .iter()
        .take(kept.len())
        .map(|(g, t)| UsageGroup {
            group: g.clone(),
            name: name_of(g),
            totals: api_totals(*t),
        })
        .collect();
    let mut other = keyward_store::UsageTotals::default();
    for (_, t) in order.iter().skip(kept.len()) {
        other.add(t);
    }
    let has_other = order.len() > kept.len();
    if has_other {
        groups.push(UsageGroup {
            group: OTHER_GROUP.to_owned(),
            name: None,
            totals: api_totals(other),
        });
    }
    let series = points.map(|points| {
        // Per group slot, per bucket start: points arrive oldest bucket first.
        let mut cells: Vec<BTreeMap<i64, keyward_store::UsageTotals>> =
            vec![BTreeMap::new(); groups.len()];
        for p in &points {
            for t in targets(&p.group) {
                let i = slot(&t);
                cells[i].entry(p.start).or_default().add(&p.totals);
            }
        }
        groups
            .iter()
            .zip(cells)
            .map(|(g, cells)| UsageSeries {
                group: g.group.clone(),
                name: g.name.clone(),
                buckets: cells
                    .into_iter()
                    .map(|(start, t)| UsageBucket {
                        start,
                        totals: api_totals(t),
                    })
                    .collect(),
            })
            .collect()
    });
    Ok(Grouped { groups, series })
}

/// The tag group of keys without tags.
const UNTAGGED: &str = "(untagged)";

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
