//! Gateway keys: create (the secret is shown once, here), list, get, revoke, delete.

use super::orgs::{resolve_project, valid_name};
use super::{Admin, ApiError};
use crate::state::{AppState, SharedState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_core::{key, KeyHash, KeyId, KeyKind};
use keyward_store::{KeyRecord, KeyStatus, NewAuditEvent, NewKey};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Project id or name.
    project: String,
    /// Organization id or name, when `project` is a name (default organization otherwise).
    org: Option<String>,
    name: String,
    #[serde(default)]
    tags: Vec<String>,
    /// Seconds until the key expires.
    expires_in_seconds: Option<i64>,
    /// Create the project when no project has that name.
    #[serde(default)]
    create_project: bool,
}

/// A new key: the record plus its secret, which is never shown again.
#[derive(Serialize)]
pub struct CreatedKey {
    #[serde(flatten)]
    record: KeyRecord,
    key: String,
}

pub async fn create(
    State(state): State<SharedState>,
    admin: Admin,
    body: Result<Json<CreateKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let Json(req) = body?;
    let name = valid_name(&req.name, "key")?;
    for t in &req.tags {
        valid_name(t, "tag")?;
    }
    if req.tags.len() > 32 {
        return Err(ApiError::BadRequest("a key has at most 32 tags".into()));
    }
    let now = state.clock.now_ms();
    let expires_at = match req.expires_in_seconds {
        None => None,
        Some(s) if (1..=10 * 365 * 86_400).contains(&s) => Some(now + s * 1000),
        Some(_) => {
            return Err(ApiError::BadRequest(
                "expires_in_seconds must be between 1 and 10 years".into(),
            ))
        }
    };
    let project =
        resolve_project(&state, req.org.as_deref(), &req.project, req.create_project).await?;
    let secret = state.config.key_format.generate(KeyKind::Standard);
    let record = state
        .store
        .create_key(&NewKey {
            id: KeyId::generate(),
            project_id: project.id,
            name: name.to_owned(),
            hash_hex: KeyHash::of(secret.expose()).to_hex(),
            hint: key::hint(secret.expose()),
            tags: req.tags,
            created_by: Some(admin.id.to_string()),
            created_at: now,
            expires_at,
        })
        .await?;
    audit(
        &state,
        &admin,
        "key.created",
        &record,
        json!({"name": record.name, "project_id": record.project_id}),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            record,
            key: secret.expose().to_owned(),
        }),
    ))
}

#[derive(Deserialize)]
pub struct ListQuery {
    project: Option<String>,
    org: Option<String>,
}

pub async fn list(
    State(state): State<SharedState>,
    _admin: Admin,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let project = match q.project.as_deref() {
        Some(p) => Some(
            resolve_project(&state, q.org.as_deref(), p, false)
                .await?
                .id,
        ),
        None => None,
    };
    Ok(Json(
        json!({ "data": state.store.list_keys(project.as_ref()).await? }),
    ))
}

pub async fn get(
    State(state): State<SharedState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<KeyRecord>, ApiError> {
    let id = KeyId::parse(&id).ok_or(ApiError::NotFound("key"))?;
    state
        .store
        .get_key(&id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("key"))
}

/// Revokes a key. Takes effect on the next request: the cache entry is dropped
/// after the store is updated. A key that is already not active keeps its status
/// (a leaked key stays marked leaked).
pub async fn revoke(
    State(state): State<SharedState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<KeyRecord>, ApiError> {
    let id = KeyId::parse(&id).ok_or(ApiError::NotFound("key"))?;
    let current = state
        .store
        .get_key(&id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    if current.status != KeyStatus::Active {
        return Ok(Json(current));
    }
    let record = state
        .store
        .set_key_status(&id, KeyStatus::Revoked, state.clock.now_ms())
        .await?;
    state.keys.invalidate(&id);
    audit(&state, &admin, "key.revoked", &record, json!({})).await?;
    Ok(Json(record))
}

pub async fn delete(
    State(state): State<SharedState>,
    admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = KeyId::parse(&id).ok_or(ApiError::NotFound("key"))?;
    let record = state
        .store
        .get_key(&id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    state.store.delete_key(&id).await?;
    state.keys.invalidate(&id);
    audit(
        &state,
        &admin,
        "key.deleted",
        &record,
        json!({"name": record.name}),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn audit(
    state: &AppState,
    admin: &Admin,
    action: &str,
    key: &KeyRecord,
    detail: Value,
) -> Result<(), ApiError> {
    state
        .store
        .append_audit(&NewAuditEvent {
            at: state.clock.now_ms(),
            actor: admin.id.to_string(),
            action: action.to_owned(),
            target: key.id.to_string(),
            detail,
        })
        .await?;
    Ok(())
}
