//! Organizations and projects (minimal for now: create and list).

use super::extract::ApiJson;
use super::{ApiError, Caller};
use crate::state::{AppState, SharedState};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_api::orgs::{self as api, CreateOrg, CreateProject, ProjectQuery, SetProjectPolicy};
use keyward_api::List;
use keyward_core::{OrgId, ProjectId};
use keyward_store::{Org, Project, ProjectPolicy};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::bootstrap::DEFAULT_ORG;

/// The routes of `/api/v1/orgs` and `/api/v1/projects`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list_orgs, create_org))
        .routes(routes!(list_projects, create_project))
        .routes(routes!(set_project_policy))
}

/// `POST /api/v1/orgs`.
#[utoipa::path(post, path = "/api/v1/orgs", tag = "orgs", request_body = keyward_api::orgs::CreateOrg, responses((status = 201, description = "The organization", body = keyward_api::orgs::Org)))]
async fn create_org(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateOrg>,
) -> Result<(StatusCode, Json<api::Org>), ApiError> {
    caller.require_deployment()?;
    let name = valid_name(&req.name, "organization")?;
    let org = state.store.create_org(name, state.clock.now_ms()).await?;
    Ok((StatusCode::CREATED, Json(answer_org(org))))
}

/// `GET /api/v1/orgs`.
#[utoipa::path(get, path = "/api/v1/orgs", tag = "orgs",  responses((status = 200, description = "Every organization: `{\"data\": [org]}`", body = keyward_api::List<keyward_api::orgs::Org>)))]
async fn list_orgs(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<List<api::Org>>, ApiError> {
    let orgs = state.store.list_orgs().await?;
    Ok(Json(List::new(
        orgs.into_iter()
            .filter(|o| caller.sees(&o.id))
            .map(answer_org)
            .collect(),
    )))
}

/// `POST /api/v1/projects`.
#[utoipa::path(post, path = "/api/v1/projects", tag = "orgs", request_body = keyward_api::orgs::CreateProject, responses((status = 201, description = "The project", body = keyward_api::orgs::Project)))]
async fn create_project(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateProject>,
) -> Result<(StatusCode, Json<api::Project>), ApiError> {
    let org = resolve_org(&state, caller.org_or_own(req.org.as_deref()).as_deref()).await?;
    caller.check_org(&org.id, "organization")?;
    let name = valid_name(&req.name, "project")?;
    let project = state
        .store
        .create_project(&org.id, name, state.clock.now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(answer_project(project))))
}

/// `GET /api/v1/projects`.
#[utoipa::path(get, path = "/api/v1/projects", tag = "orgs",  responses((status = 200, description = "Projects: `{\"data\": [project]}`", body = keyward_api::List<keyward_api::orgs::Project>)))]
async fn list_projects(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<ProjectQuery>,
) -> Result<Json<List<api::Project>>, ApiError> {
    let org = match caller.org_or_own(q.org.as_deref()) {
        Some(o) => {
            let org = resolve_org(&state, Some(&o)).await?;
            caller.check_org(&org.id, "organization")?;
            Some(org.id)
        }
        None => None,
    };
    let projects = state.store.list_projects(org.as_ref()).await?;
    Ok(Json(List::new(
        projects.into_iter().map(answer_project).collect(),
    )))
}

/// An organization as the API shows it.
fn answer_org(o: Org) -> api::Org {
    api::Org {
        id: o.id,
        name: o.name,
        created_at: o.created_at,
    }
}

/// A project as the API shows it.
fn answer_project(p: Project) -> api::Project {
    api::Project {
        id: p.id,
        org_id: p.org_id,
        name: p.name,
        created_at: p.created_at,
        policy: api::ProjectPolicy {
            rpm: p.policy.rpm,
            tpm: p.policy.tpm,
            max_concurrent: p.policy.max_concurrent,
            max_key_age_ms: p.policy.max_key_age_ms,
        },
    }
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

/// Names (of organizations, projects, keys, tags) are 1-100 visible characters
/// without leading or trailing spaces. A name with an invisible character could
/// pass for another in lists and in the audit log (`prod` and `prod` with a
/// zero-width space), or reorder what is shown around it (bidi overrides), so
/// such names are refused, naming the character's code point.
pub fn valid_name<'a>(name: &'a str, what: &str) -> Result<&'a str, ApiError> {
    let ok = !name.is_empty() && name.chars().count() <= 100 && name.trim() == name;
    if !ok {
        return Err(ApiError::BadRequest(format!(
            "{what} name must be 1-100 visible characters without leading or trailing spaces"
        )));
    }
    if let Some((at, c)) = name.chars().enumerate().find(|&(_, c)| invisible(c)) {
        return Err(ApiError::BadRequest(format!(
            "{what} name has an invisible or control character (U+{:04X}) at position {}: \
             names must be visible text, with plain spaces only",
            c as u32,
            at + 1
        )));
    }
    Ok(name)
}

/// Characters that show nothing, or change how the text around them is shown:
/// controls (Cc), every format character (Cf: zero-width spaces and joiners,
/// bidi marks, embeddings, overrides and isolates, the BOM, invisible
/// operators, tags…), whitespace other than the ASCII space, blank-looking
/// letters (Hangul fillers, the braille blank), variation selectors and other
/// invisible marks, private-use characters and noncharacters.
fn invisible(c: char) -> bool {
    (c.is_whitespace() && c != ' ')
        || c.is_control()
        || format_char(c)
        || matches!(c as u32,
        // Combining grapheme joiner; Khmer inherent vowels; Mongolian variation
        // selectors; Hangul fillers; braille blank; variation selectors.
        0x034F | 0x17B4 | 0x17B5 | 0x180B..=0x180F | 0x115F | 0x1160 | 0x3164 | 0xFFA0
        | 0x2800 | 0xFE00..=0xFE0F | 0xE0100..=0xE01EF
        // Private use.
        | 0xE000..=0xF8FF | 0xF0000..=0x10FFFF
        // Noncharacters.
        | 0xFDD0..=0xFDEF | 0xFFFE | 0xFFFF | 0x1FFFE | 0x1FFFF)
}

/// Unicode general category Cf (format), as of Unicode 15.1.
fn format_char(c: char) -> bool {
    matches!(c as u32,
        0x00AD | 0x0600..=0x0605 | 0x061C | 0x06DD | 0x070F | 0x0890 | 0x0891 | 0x08E2
        | 0x180E | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// `PUT /api/v1/projects/{id}/policy`: the project's shared limits and key-age rule.
#[utoipa::path(put, path = "/api/v1/projects/{id}/policy", tag = "orgs", request_body = keyward_api::orgs::SetProjectPolicy, params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The project", body = keyward_api::orgs::Project)))]
async fn set_project_policy(
    State(state): State<SharedState>,
    caller: Caller,
    axum::extract::Path(project): axum::extract::Path<String>,
    ApiJson(req): ApiJson<SetProjectPolicy>,
) -> Result<Json<api::Project>, ApiError> {
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
    let own = caller.org_or_own(None);
    let project = resolve_project(&state, own.as_deref(), &project, false).await?;
    caller.check_org(&project.org_id, "project")?;
    let policy = ProjectPolicy {
        rpm: req.rpm,
        tpm: req.tpm,
        max_concurrent: req.max_concurrent,
        max_key_age_ms: req.max_key_age_days.map(|d| i64::from(d) * 86_400_000),
    };
    let updated = state.store.set_project_policy(&project.id, &policy).await?;
    state
        .invalidate(crate::cluster::Invalidation::Project(project.id.clone()))
        .await;
    caller
        .audit(
            &state,
            Some(&project.org_id),
            "project.policy_set",
            project.id.as_str(),
            json!(policy),
        )
        .await?;
    Ok(Json(answer_project(updated)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Organizations and projects used to be answered as their storage
    /// records: the API types must put the same bytes on the wire (a limit that
    /// is not set left out, not `null`), and read back without loss.
    #[test]
    fn org_and_project_answers_are_the_bytes_the_storage_records_gave() {
        let org = Org {
            id: OrgId::generate(),
            name: "acme".into(),
            created_at: 1,
        };
        let sent = serde_json::to_string(&answer_org(org.clone())).unwrap();
        assert_eq!(sent, serde_json::to_string(&org).unwrap());
        let full = ProjectPolicy {
            rpm: Some(1),
            tpm: Some(2),
            max_concurrent: Some(3),
            max_key_age_ms: Some(4),
        };
        for policy in [ProjectPolicy::default(), full] {
            let project = Project {
                id: ProjectId::generate(),
                org_id: org.id.clone(),
                name: "web".into(),
                created_at: 2,
                policy,
            };
            let sent = serde_json::to_string(&answer_project(project.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&project).unwrap());
            let read: api::Project = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, answer_project(project));
        }
        let bare = serde_json::to_value(answer_project(Project {
            id: ProjectId::generate(),
            org_id: org.id,
            name: "web".into(),
            created_at: 2,
            policy: ProjectPolicy::default(),
        }))
        .unwrap();
        assert_eq!(bare["policy"], serde_json::json!({}));
    }

    #[test]
    fn names_with_invisible_characters_are_refused() {
        for ok in ["prod", "web app", "clé-ü", "日本語", "a.b_c-1", "🔑"] {
            assert!(valid_name(ok, "key").is_ok(), "{ok:?}");
        }
        for bad in [
            "pro\u{200B}d",
            "\u{202E}dorp",
            "prod\u{2066}x\u{2069}",
            "\u{FEFF}prod",
            "pro\u{00AD}d",
            "pro\u{2060}d",
            "a\u{0007}b",
            "a\u{00A0}b",
            "a\u{3000}b",
            "a\u{FE0F}",
            "a\u{E0041}",
            "\u{3164}",
            "a\u{E000}",
            "a\u{061C}b",
            "",
            " prod",
        ] {
            assert!(valid_name(bad, "key").is_err(), "{bad:?}");
        }
        let e = valid_name("pro\u{200B}d", "key").unwrap_err().to_string();
        assert!(e.contains("U+200B") && e.contains("position 4"), "{e}");
    }
}
