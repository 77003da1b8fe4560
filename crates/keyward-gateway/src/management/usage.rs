//! Usage totals and time buckets, per key, project or organization.

use super::orgs::{resolve_org, resolve_project};
use super::{Admin, ApiError};
use crate::state::SharedState;
use axum::extract::{Query, State};
use axum::Json;
use keyward_core::KeyId;
use keyward_store::{Bucket, UsageFilter};
use serde::Deserialize;
use serde_json::{json, Value};

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
    /// `hour` or `day` to include a time series.
    bucket: Option<Bucket>,
}

pub async fn usage(
    State(state): State<SharedState>,
    _admin: Admin,
    q: Result<Query<UsageQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
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
            .ok_or(ApiError::NotFound("key"))?;
        filter.key = Some(id);
    }
    if let Some(p) = q.project.as_deref() {
        filter.project = Some(
            resolve_project(&state, q.org.as_deref(), p, false)
                .await?
                .id,
        );
    } else if q.org.is_some() {
        filter.org = Some(resolve_org(&state, q.org.as_deref()).await?.id);
    }
    // Read-your-writes on this node: events still waiting in the batch are written
    // first, so a caller sees the request it just made.
    state.usage.flush().await;
    let totals = state.store.usage_totals(&filter).await?;
    let mut body = json!({
        "key": filter.key, "project": filter.project, "org": filter.org,
        "from": q.from, "to": q.to,
        "requests": totals.requests, "errors": totals.errors,
        "input_tokens": totals.input_tokens, "cached_input_tokens": totals.cached_input_tokens,
        "output_tokens": totals.output_tokens, "reasoning_tokens": totals.reasoning_tokens,
        "cost_micros": totals.cost_micros,
    });
    if let Some(b) = q.bucket {
        body["buckets"] = json!(state.store.usage_buckets(&filter, b).await?);
    }
    Ok(Json(body))
}
