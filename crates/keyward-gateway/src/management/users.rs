//! `/api/v1/users`: an organization's people. Owners (and admin keys) create
//! users, change roles, disable and unlock; admins read the list.

use super::extract::ApiJson;
use super::orgs::resolve_org;
use super::{ApiError, Caller};
use crate::state::{AppState, SharedState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_api::users::{self as api, CreateUser, UpdateUser};
use keyward_api::List;
use keyward_core::{OrgId, UserId};
use keyward_store::{NewUser, User};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of `/api/v1/users`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(update))
        .routes(routes!(invite))
}

/// `POST /api/v1/invitations`: a single-use link, valid 7 days, emailed to
/// the invitee and answered once to the caller (to hand over when email is
/// not configured).
#[utoipa::path(post, path = "/api/v1/invitations", tag = "users", request_body = keyward_api::users::CreateInvitation, responses((status = 201, description = "The invitation and its link, shown once", body = keyward_api::users::Invitation)))]
async fn invite(
    State(state): State<SharedState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    ApiJson(req): ApiJson<api::CreateInvitation>,
) -> Result<(StatusCode, Json<api::Invitation>), ApiError> {
    caller.require_recent(&state)?;
    let email = plausible_email(&req.email)?;
    let org = resolve_org(&state, caller.org_or_own(req.org.as_deref()).as_deref()).await?;
    caller.check_org(&org.id, "organization")?;
    if state.store.user_by_email(&email).await?.is_some() {
        return Err(ApiError::Conflict(
            "a user with this email already exists".into(),
        ));
    }
    let valid_ms = crate::auth::links::INVITATION_DAYS * 86_400_000;
    let secret = crate::auth::links::issue(
        &state,
        keyward_store::OneTimeKind::Invitation,
        None,
        Some(&org.id),
        json!({"email": email, "role": req.role}),
        valid_ms,
    )
    .await?;
    let url = format!(
        "{}/accept-invitation#token={secret}",
        crate::auth::links::link_base(&state, &headers)
    );
    let text = format!(
        "You are invited to the organization {} on keyward, as {}.\n\n\
         To accept, open this link within {} days and choose a password:\n\n{url}\n",
        org.name,
        req.role,
        crate::auth::links::INVITATION_DAYS
    );
    state
        .leaks
        .notifier
        .send_secret_mail(email.clone(), "You are invited".into(), text);
    caller
        .audit(
            &state,
            Some(&org.id),
            "user.invited",
            org.id.as_str(),
            json!({"email": email, "role": req.role}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(api::Invitation {
            email,
            role: req.role,
            org_id: org.id,
            expires_at: state.clock.now_ms() + valid_ms,
            invitation_url: url,
        }),
    ))
}

/// A lowercased email address, or a 400.
fn plausible_email(input: &str) -> Result<String, ApiError> {
    let email = input.trim().to_lowercase();
    let plausible = email.len() <= 254
        && email
            .split_once('@')
            .is_some_and(|(l, d)| !l.is_empty() && d.contains('.'))
        && !email.contains(|c: char| c.is_whitespace() || c == '<' || c == '>' || c == ',');
    if !plausible {
        return Err(ApiError::BadRequest(
            "email must be an email address".into(),
        ));
    }
    Ok(email)
}

fn answer(u: User) -> api::User {
    api::User {
        totp: u.has_totp(),
        id: u.id,
        email: u.email,
        org_id: u.org_id,
        role: u.role,
        created_at: u.created_at,
        disabled_at: u.disabled_at,
        locked_at: u.locked_at,
    }
}

/// `GET /api/v1/users`: the users of the caller's organization (the
/// bootstrap key: of `?org=`, by default the default organization).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", responses((status = 200, description = "Users", body = keyward_api::List<keyward_api::users::User>)))]
async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Result<Json<List<api::User>>, ApiError> {
    let org = resolve_org(
        &state,
        caller
            .org_or_own(q.get("org").map(String::as_str))
            .as_deref(),
    )
    .await?;
    caller.check_org(&org.id, "organization")?;
    let users = state.store.list_users(&org.id).await?;
    Ok(Json(List::new(users.into_iter().map(answer).collect())))
}

/// The organization a new user joins: named, or the caller's. The bootstrap
/// key creates one that does not exist yet (the first owner of a new
/// organization is made this way).
async fn org_for_new_user(
    state: &AppState,
    caller: &Caller,
    asked: Option<&str>,
) -> Result<OrgId, ApiError> {
    let asked = caller.org_or_own(asked);
    match resolve_org(state, asked.as_deref()).await {
        Ok(org) => {
            caller.check_org(&org.id, "organization")?;
            Ok(org.id)
        }
        Err(ApiError::NotFound(_)) if caller.org.is_none() => {
            let name =
                super::orgs::valid_name(asked.as_deref().unwrap_or_default(), "organization")?;
            Ok(state.store.create_org(name, state.clock.now_ms()).await?.id)
        }
        Err(e) => Err(e),
    }
}

/// `POST /api/v1/users`.
#[utoipa::path(post, path = "/api/v1/users", tag = "users", request_body = keyward_api::users::CreateUser, responses((status = 201, description = "The user", body = keyward_api::users::User)))]
async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<(StatusCode, Json<api::User>), ApiError> {
    caller.require_recent(&state)?;
    let email = plausible_email(&req.email)?;
    let org_id = org_for_new_user(&state, &caller, req.org.as_deref()).await?;
    let org_name = state
        .store
        .get_org(&org_id)
        .await?
        .map(|o| o.name)
        .unwrap_or_default();
    crate::auth::rules::check_new_password(&state, &req.password, false, &[&email, &org_name])
        .await?;
    let hash = crate::auth::rules::hash_password(&req.password).await?;
    let user = state
        .store
        .create_user(&NewUser {
            org_id,
            email,
            password_hash: Some(hash),
            role: req.role,
            created_at: state.clock.now_ms(),
        })
        .await?;
    caller
        .audit(
            &state,
            Some(&user.org_id),
            "user.created",
            user.id.as_str(),
            json!({"email": user.email, "role": user.role}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(answer(user))))
}

/// `PATCH /api/v1/users/{id}`: role, disabled, unlock. A role change or a
/// disable takes effect on the user's next request (their cached sessions
/// are dropped); disabling also ends every session.
#[utoipa::path(patch, path = "/api/v1/users/{id}", tag = "users", request_body = keyward_api::users::UpdateUser, params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The user", body = keyward_api::users::User)))]
async fn update(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Json<api::User>, ApiError> {
    caller.require_recent(&state)?;
    let id = UserId::parse(&id).ok_or(ApiError::NotFound("user"))?;
    let user = state
        .store
        .get_user(&id)
        .await?
        .filter(|u| caller.sees(&u.org_id))
        .ok_or(ApiError::NotFound("user"))?;
    if caller.user() == Some(&user.id) && (req.role.is_some() || req.disabled == Some(true)) {
        return Err(ApiError::Conflict(
            "you cannot change your own role or disable yourself: ask another owner".into(),
        ));
    }
    if let Some(role) = req.role {
        state.store.set_role(&id, role).await?;
        caller
            .audit(
                &state,
                Some(&user.org_id),
                "user.role_changed",
                id.as_str(),
                json!({"from": user.role, "to": role}),
            )
            .await?;
    }
    match req.disabled {
        Some(true) => {
            state
                .store
                .set_disabled(&id, Some(state.clock.now_ms()))
                .await?;
            crate::auth::session::end_all(&state, &id, None, "account disabled").await?;
            caller
                .audit(
                    &state,
                    Some(&user.org_id),
                    "user.disabled",
                    id.as_str(),
                    json!({}),
                )
                .await?;
        }
        Some(false) => {
            state.store.set_disabled(&id, None).await?;
            caller
                .audit(
                    &state,
                    Some(&user.org_id),
                    "user.enabled",
                    id.as_str(),
                    json!({}),
                )
                .await?;
        }
        None => {}
    }
    if req.unlock == Some(true) {
        state.store.unlock_user(&id).await?;
        caller
            .audit(
                &state,
                Some(&user.org_id),
                "user.unlocked",
                id.as_str(),
                json!({}),
            )
            .await?;
    }
    crate::auth::session::forget_user(&state, &id).await;
    let user = state
        .store
        .get_user(&id)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(answer(user)))
}
