//! Organizations and projects (minimal for now: create and list).

use super::{Admin, ApiError};
use crate::state::{AppState, SharedState};
use axum::extract::rejection::JsonRejection;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_core::{OrgId, ProjectId};
use keyward_store::{NewAuditEvent, Org, Project, ProjectPolicy};
use serde::Deserialize;
use serde_json::{json, Value};

/// The organization created on first start; requests that name none use it.
pub const DEFAULT_ORG: &str = "default";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateOrg {
    name: String,
}

pub async fn create_org(
    State(state): State<SharedState>,
    _admin: Admin,
    body: Result<Json<CreateOrg>, JsonRejection>,
) -> Result<(StatusCode, Json<Org>), ApiError> {
    let Json(req) = body?;
    let name = valid_name(&req.name, "organization")?;
    let org = state.store.create_org(name, state.clock.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(org)))
}

pub async fn list_orgs(
    State(state): State<SharedState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({ "data": state.store.list_orgs().await? })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateProject {
    name: String,
    org: Option<String>,
}

pub async fn create_project(
    State(state): State<SharedState>,
    _admin: Admin,
    body: Result<Json<CreateProject>, JsonRejection>,
) -> Result<(StatusCode, Json<Project>), ApiError> {
    let Json(req) = body?;
    let org = resolve_org(&state, req.org.as_deref()).await?;
    let name = valid_name(&req.name, "project")?;
    let project = state
        .store
        .create_project(&org.id, name, state.clock.now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(project)))
}

#[derive(Deserialize)]
pub struct ProjectQuery {
    org: Option<String>,
}

pub async fn list_projects(
    State(state): State<SharedState>,
    _admin: Admin,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<Value>, ApiError> {
    let org = match q.org.as_deref() {
        Some(o) => Some(resolve_org(&state, Some(o)).await?.id),
        None => None,
    };
    Ok(Json(
        json!({ "data": state.store.list_projects(org.as_ref()).await? }),
    ))
}

/// An organization named by id or name (the default organization when `None`).
pub async fn resolve_org(state: &AppState, org: Option<&str>) -> Result<Org, ApiError> {
    let org = org.unwrap_or(DEFAULT_ORG);
    let found = match OrgId::parse(org) {
        Some(id) => state.store.get_org(&id).await?,
        None => state.store.org_by_name(org).await?,
    };
    found.ok_or(ApiError::NotFound("organization"))
}

/// A project named by id, or by name within `org`; created when `create` is set
/// and no project has that name.
pub async fn resolve_project(
    state: &AppState,
    org: Option<&str>,
    project: &str,
    create: bool,
) -> Result<Project, ApiError> {
    if let Some(id) = ProjectId::parse(project) {
        return state
            .store
            .get_project(&id)
            .await?
            .ok_or(ApiError::NotFound("project"));
    }
    let org = resolve_org(state, org).await?;
    if let Some(p) = state.store.project_by_name(&org.id, project).await? {
        return Ok(p);
    }
    if !create {
        return Err(ApiError::NotFound("project"));
    }
    let name = valid_name(project, "project")?;
    match state
        .store
        .create_project(&org.id, name, state.clock.now_ms())
        .await
    {
        Ok(p) => Ok(p),
        // Another request created it first.
        Err(keyward_store::StoreError::Duplicate(_)) => state
            .store
            .project_by_name(&org.id, project)
            .await?
            .ok_or(ApiError::NotFound("project")),
        Err(e) => Err(e.into()),
    }
}

/// Names are 1-100 printable characters without leading or trailing spaces.
pub fn valid_name<'a>(name: &'a str, what: &str) -> Result<&'a str, ApiError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 100
        && name.trim() == name
        && !name.chars().any(char::is_control);
    if ok {
        Ok(name)
    } else {
        Err(ApiError::BadRequest(format!(
            "{what} name must be 1-100 printable characters without leading or trailing spaces"
        )))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectPolicyInput {
    rpm: Option<u32>,
    tpm: Option<u32>,
    max_concurrent: Option<u32>,
    /// Keys older than this many days are flagged for rotation.
    max_key_age_days: Option<u32>,
}

/// `PUT /api/v1/projects/{id}/policy`: the project's shared limits and key-age rule.
pub async fn set_project_policy(
    State(state): State<SharedState>,
    admin: Admin,
    axum::extract::Path(project): axum::extract::Path<String>,
    body: Result<Json<ProjectPolicyInput>, JsonRejection>,
) -> Result<Json<Project>, ApiError> {
    let Json(req) = body?;
    for (name, v) in [
        ("rpm", req.rpm),
        ("tpm", req.tpm),
        ("max_concurrent", req.max_concurrent),
        ("max_key_age_days", req.max_key_age_days),
    ] {
        if v == Some(0) {
            return Err(ApiError::BadRequest(format!("{name} must be at least 1")));
        }
    }
    let project = resolve_project(&state, None, &project, false).await?;
    let policy = ProjectPolicy {
        rpm: req.rpm,
        tpm: req.tpm,
        max_concurrent: req.max_concurrent,
        max_key_age_ms: req.max_key_age_days.map(|d| i64::from(d) * 86_400_000),
    };
    let updated = state.store.set_project_policy(&project.id, &policy).await?;
    state.projects.remove(&project.id);
    state
        .store
        .append_audit(&NewAuditEvent {
            at: state.clock.now_ms(),
            actor: admin.id.to_string(),
            action: "project.policy_set".into(),
            target: project.id.to_string(),
            detail: json!(policy),
        })
        .await?;
    Ok(Json(updated))
}
