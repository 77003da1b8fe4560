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
    /// Series for the `top` most expensive groups only; the rest are summed
    /// as one `(other)` series. `groups` still lists every group.
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
    // Each aggregation reads the rollup rows of the range once; the totals are
    // summed from what was read for the buckets or groups when those cover the
    // same range (a rollup query costs the rows it reads, not the events).
    let grouping = q.group_by.as_deref().map(Grouping::parse).transpose()?;
    let (buckets, grouped) = match grouping {
        Some(by) => {
            let mut g = grouped(&state, &filter, by, q.bucket, q.top).await?;
            (g.buckets.take(), Some(g))
        }
        None => match q.bucket {
            Some(b) => (Some(state.store.usage_buckets(&filter, b).await?), None),
            None => (None, None),
        },
    };
    let totals = match (&grouped, &buckets) {
        (Some(g), _) => g.totals,
        (None, Some(b)) if whole_buckets(q.from, q.bucket) => sum(b.iter().map(|b| &b.totals)),
        _ => state.store.usage_totals(&filter).await?,
    };
    let mut body = Usage {
        key: filter.key.clone(),
        project: filter.project.clone(),
        org: filter.org.clone(),
        from: q.from,
        to: q.to,
        totals: api_totals(totals),
        buckets: buckets.map(|buckets| {
            buckets
                .into_iter()
                .map(|b| UsageBucket {
                    start: b.start,
                    totals: api_totals(b.totals),
                })
                .collect()
        }),
        reserved_micros: None,
        groups: None,
        series: None,
    };
    if let Some(g) = grouped {
        body.groups = Some(g.groups);
        body.series = g.series;
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
    Ok(Json(body))
}

/// Whether buckets starting at `from` cover exactly what the totals count:
/// the totals round `from` down to its hour, buckets to their own start.
fn whole_buckets(from: Option<i64>, bucket: Option<Bucket>) -> bool {
    const HOUR_MS: i64 = 3_600_000;
    let Some(from) = from else { return true };
    match bucket {
        Some(Bucket::Hour) => true,
        Some(Bucket::Day) => from.rem_euclid(24 * HOUR_MS) == 0,
        Some(Bucket::Month) => keyward_core::Period::Month.start(from) == from,
        None => false,
    }
}

/// The sum of some totals.
fn sum<'a>(
    all: impl Iterator<Item = &'a keyward_store::UsageTotals>,
) -> keyward_store::UsageTotals {
    let mut out = keyward_store::UsageTotals::default();
    for t in all {
        out.add(t);
    }
    out
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

/// Groups and, with a bucket, their series; the totals they add up to; and
/// the buckets, read beside them.
struct Grouped {
    groups: Vec<UsageGroup>,
    series: Option<Vec<UsageSeries>>,
    totals: keyward_store::UsageTotals,
    buckets: Option<Vec<keyward_store::UsageBucket>>,
}

/// Totals per group (most expensive first, ties by name), named for people,
/// and the series of the `top` most expensive groups (all without `top`), the
/// rest summed as one `(other)` series.
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
    // Names of keys and projects, and each key's tags, for the groups at hand.
    let names = async {
        Ok::<HashMap<String, (String, Vec<String>)>, keyward_store::StoreError>(match column {
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
        })
    };
    let buckets = async {
        match bucket {
            Some(b) => state.store.usage_buckets(filter, b).await.map(Some),
            None => Ok(None),
        }
    };
    // Independent reads, on the store's several reader connections at once.
    let (rows, names, buckets) =
        tokio::try_join!(state.store.usage_grouped(filter, column), names, buckets)?;
    let totals = sum(rows.iter().map(|r| &r.totals));
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
    let mut per_group: HashMap<String, keyward_store::UsageTotals> = HashMap::new();
    for row in &rows {
        for t in targets(&row.group) {
            per_group.entry(t).or_default().add(&row.totals);
        }
    }
    let mut order: Vec<(String, keyward_store::UsageTotals)> = per_group.into_iter().collect();
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
    // A chart of the top few reads the series of those few only; "(other)"
    // is then what the buckets hold beyond them.
    let only: Vec<String> = match by {
        Grouping::Column(_) if kept.len() < order.len() => order
            .iter()
            .take(kept.len())
            .map(|(g, _)| g.clone())
            .collect(),
        _ => Vec::new(),
    };
    let points = match bucket {
        Some(b) => Some(state.store.usage_series(filter, b, column, &only).await?),
        None => None,
    };
    let name_of = |g: &str| match by {
        Grouping::Column(_) => names.get(g).map(|(n, _)| n.clone()),
        Grouping::Tag => None,
    };
    let groups: Vec<UsageGroup> = order
        .iter()
        .map(|(g, t)| UsageGroup {
            group: g.clone(),
            name: name_of(g),
            totals: api_totals(*t),
        })
        .collect();
    let series = points.map(|points| {
        // Per kept group (then "(other)"), per bucket start.
        let slots = kept.len() + usize::from(kept.len() < order.len());
        let mut cells: Vec<BTreeMap<i64, keyward_store::UsageTotals>> =
            vec![BTreeMap::new(); slots];
        for p in &points {
            for t in targets(&p.group) {
                cells[slot(&t)].entry(p.start).or_default().add(&p.totals);
            }
        }
        // With a bucket there are buckets; "(other)" is needed when `only` is set.
        if let (false, Some(buckets)) = (only.is_empty(), buckets.as_deref()) {
            // "(other)" per bucket: the bucket's totals less the kept groups'.
            let mut rest: BTreeMap<i64, keyward_store::UsageTotals> =
                buckets.iter().map(|b| (b.start, b.totals)).collect();
            for kept in &cells[..kept.len()] {
                for (start, t) in kept {
                    if let Some(r) = rest.get_mut(start) {
                        r.subtract(t);
                    }
                }
            }
            rest.retain(|_, t| *t != keyward_store::UsageTotals::default());
            cells[kept.len()] = rest;
        }
        let names = groups
            .iter()
            .take(kept.len())
            .map(|g| (g.group.clone(), g.name.clone()))
            .chain((slots > kept.len()).then(|| (OTHER_GROUP.to_owned(), None)));
        names
            .zip(cells)
            .map(|((group, name), cells)| UsageSeries {
                group,
                name,
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
    Ok(Grouped {
        groups,
        series,
        totals,
        buckets,
    })
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
