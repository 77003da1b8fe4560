//! Admin keys (`kwa_`) are keys too: listed, created (the secret is shown once,
//! here), revoked and rotated, every change audited. Leak reports disable them
//! (`crate::leaks::response`).
//!
//! Decisions:
//! - A rotation replaces the secret and the old one stops at once: there is no
//!   grace period, since the administrator who rotates receives the new secret
//!   in the answer, and an admin key is one person's or one tool's, not a fleet's.
//! - The last active admin key cannot be revoked (409): that would lock every
//!   administrator out. A leak report disables even the last one; restarting
//!   the server then writes a new initial key (see [`crate::bootstrap`]).
//! - Revoking a key that is already revoked or leaked changes nothing and
//!   answers its record, as revoking a gateway key does.
//! - Admin requests read the key from storage every time (no cache), so a
//!   revocation, rotation or leak is seen on the next request on every node.

use super::extract::ApiJson;
use super::orgs::valid_name;
use super::{ApiError, Caller};
use crate::state::{AppState, SharedState};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use keyward_api::admin_keys::{self as api, CreateAdminKey, CreatedAdminKey};
use keyward_api::List;
use keyward_core::{key, KeyHash, KeyId, KeyKind};
use keyward_store::{AdminKey, AdminKeyRevocation, NewAdminKey, NewSecret};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of `/api/v1/admin-keys`.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(rotate))
}

/// An admin key as the API shows it (never its secret).
fn answer(k: AdminKey) -> api::AdminKey {
    api::AdminKey {
        id: k.id,
        name: k.name,
        hint: k.hint,
        status: k.status.as_str().into(),
        created_at: k.created_at,
        revoked_at: k.revoked_at,
        rotated_at: k.rotated_at,
        created_by: k.created_by,
        org_id: k.org_id,
    }
}

/// An admin key of another organization is not found; the bootstrap key
/// sees every key, an organization's caller only that organization's.
fn visible(caller: &Caller, key: &AdminKey) -> bool {
    caller.org.is_none() || key.org_id == caller.org
}

/// The admin key `id`, if the caller may see it.
async fn find(state: &AppState, caller: &Caller, id: &str) -> Result<AdminKey, ApiError> {
    let id = KeyId::parse(id).ok_or(ApiError::NotFound("admin key"))?;
    state
        .store
        .get_admin_key(&id)
        .await?
        .filter(|k| visible(caller, k))
        .ok_or(ApiError::NotFound("admin key"))
}

/// `GET /api/v1/admin-keys`: every admin key, oldest first, without secrets.
#[utoipa::path(get, path = "/api/v1/admin-keys", tag = "admin-keys",  responses((status = 200, description = "Admin keys, without secrets", body = keyward_api::List<keyward_api::admin_keys::AdminKey>)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
) -> Result<Json<List<api::AdminKey>>, ApiError> {
    let keys = state.store.list_admin_keys().await?;
    Ok(Json(List::new(
        keys.into_iter()
            .filter(|k| visible(&caller, k))
            .map(answer)
            .collect(),
    )))
}

/// `POST /api/v1/admin-keys`.
#[utoipa::path(post, path = "/api/v1/admin-keys", tag = "admin-keys", request_body = keyward_api::admin_keys::CreateAdminKey, responses((status = 201, description = "The admin key and its secret, shown once", body = keyward_api::admin_keys::CreatedAdminKey)))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateAdminKey>,
) -> Result<(StatusCode, Json<CreatedAdminKey>), ApiError> {
    let name = valid_name(&req.name, "admin key")?;
    caller.require_recent(&state)?;
    let org = match caller.org_or_own(req.org.as_deref()) {
        Some(o) => {
            let org = super::orgs::resolve_org(&state, Some(&o)).await?;
            caller.check_org(&org.id, "organization")?;
            Some(org.id)
        }
        None => None,
    };
    let secret = state.config.key_format.generate(KeyKind::Admin);
    let record = state
        .store
        .create_admin_key(&NewAdminKey {
            id: KeyId::generate(),
            name: name.to_owned(),
            hash_hex: KeyHash::of(secret.expose()).to_hex(),
            hint: key::hint(secret.expose()),
            created_at: state.clock.now_ms(),
            created_by: Some(caller.actor.clone()),
            org_id: org,
        })
        .await?;
    caller
        .audit(
            &state,
            record.org_id.as_ref(),
            "admin_key.created",
            record.id.as_str(),
            json!({"name": record.name}),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedAdminKey {
            record: answer(record),
            key: secret.expose().to_owned(),
        }),
    ))
}

/// `POST /api/v1/admin-keys/{id}/revoke`: refused on the next request.
#[utoipa::path(post, path = "/api/v1/admin-keys/{id}/revoke", tag = "admin-keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The admin key", body = keyward_api::admin_keys::AdminKey)))]
pub async fn revoke(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<api::AdminKey>, ApiError> {
    let id = find(&state, &caller, &id).await?.id;
    let now = state.clock.now_ms();
    let record = match state.store.revoke_admin_key(&id, now).await? {
        AdminKeyRevocation::Revoked(record) => record,
        AdminKeyRevocation::NotActive(record) => return Ok(Json(answer(record))),
        AdminKeyRevocation::LastActive => {
            return Err(ApiError::Conflict(
                "this is the last active admin key: create another one before revoking it".into(),
            ))
        }
    };
    caller
        .audit(
            &state,
            record.org_id.as_ref(),
            "admin_key.revoked",
            record.id.as_str(),
            json!({"name": record.name}),
        )
        .await?;
    retire_initial_key_file(&state, &record.id, "its key was revoked").await;
    Ok(Json(answer(record)))
}

/// `POST /api/v1/admin-keys/{id}/rotate`: a new secret, shown once; the old
/// one stops at once. A leaked key becomes active again with the new secret.
#[utoipa::path(post, path = "/api/v1/admin-keys/{id}/rotate", tag = "admin-keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The admin key and its new secret", body = keyward_api::admin_keys::CreatedAdminKey)))]
pub async fn rotate(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<CreatedAdminKey>, ApiError> {
    let current = find(&state, &caller, &id).await?;
    let id = current.id.clone();
    let secret = state.config.key_format.generate(KeyKind::Admin);
    let new = NewSecret {
        hash_hex: KeyHash::of(secret.expose()).to_hex(),
        hint: key::hint(secret.expose()),
    };
    let record = state
        .store
        .rotate_admin_key(&id, &new, state.clock.now_ms())
        .await?
        .ok_or_else(|| ApiError::Conflict("a revoked admin key cannot be rotated".into()))?;
    caller
        .audit(
            &state,
            record.org_id.as_ref(),
            "admin_key.rotated",
            record.id.as_str(),
            json!({"name": record.name, "previous_status": current.status}),
        )
        .await?;
    retire_initial_key_file(&state, &record.id, "its key was rotated").await;
    Ok(Json(CreatedAdminKey {
        record: answer(record),
        key: secret.expose().to_owned(),
    }))
}

/// Removes the initial admin key file if it holds admin key `id` (see
/// [`crate::bootstrap`]).
pub async fn retire_initial_key_file(state: &AppState, id: &KeyId, reason: &str) {
    crate::bootstrap::retire_initial_key_file(
        &state.initial_admin_key,
        &state.store,
        &state.clock,
        id,
        reason,
    )
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    /// Admin keys used to be answered as their storage record, a new secret
    /// beside it: the API types must put the same bytes on the wire, and the
    /// CLI must read them back without loss.
    #[test]
    fn admin_key_answers_are_the_bytes_the_storage_record_gave() {
        #[derive(Serialize)]
        struct Before<'a> {
            #[serde(flatten)]
            record: &'a AdminKey,
            key: &'a str,
        }
        for full in [true, false] {
            let record = AdminKey {
                id: KeyId::generate(),
                name: "ops".into(),
                hint: "kwa_…abcd".into(),
                status: if full {
                    keyward_store::KeyStatus::Revoked
                } else {
                    keyward_store::KeyStatus::Active
                },
                created_at: 1,
                revoked_at: full.then_some(2),
                rotated_at: full.then_some(3),
                created_by: full.then(|| "kwa".into()),
                org_id: full.then(keyward_core::OrgId::generate),
            };
            let sent = serde_json::to_string(&answer(record.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&record).unwrap());
            let created = CreatedAdminKey {
                record: answer(record.clone()),
                key: "kwa_secret".into(),
            };
            let sent = serde_json::to_string(&created).unwrap();
            let before = Before {
                record: &record,
                key: "kwa_secret",
            };
            assert_eq!(sent, serde_json::to_string(&before).unwrap());
            let read: CreatedAdminKey = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, created);
        }
    }
}
