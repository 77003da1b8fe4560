//! Gateway keys: create (the secret is shown once, here), list, get, revoke,
//! delete, rotate, and ephemeral tokens.

use super::extract::ApiJson;
use super::orgs::{resolve_project, valid_name};
use super::policy_input::{ToBudget, ToPolicy};
use super::{ApiError, Caller};
use crate::cluster::Invalidation;
use crate::error::GatewayError;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use keyward_api::keys::{
    self as api, BudgetInput, CreateKey, CreatedKey, EphemeralRequest, Key, KeyQuery, RotateKey,
    ROTATION_GRACE_DEFAULT_S, TOKEN_TTL_DEFAULT_S, TOKEN_TTL_MAX_S,
};
use keyward_api::List;
use keyward_core::{key, BudgetScope, KeyHash, KeyId, KeyKind, KeyPolicy, Secret};
use keyward_store::{KeyRecord, KeyStatus, NewAuditEvent, NewKey, NewSecret, Project};
use serde_json::{json, Value};
use std::net::SocketAddr;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// The routes of `/api/v1/keys` and the token mint.
pub fn router() -> OpenApiRouter<SharedState> {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(get_key, delete))
        .routes(routes!(revoke))
        .routes(routes!(rotate))
        .routes(routes!(ephemeral))
        .routes(routes!(token_for_holder))
}

/// A key's record as the API shows it: the one conversion from storage, used
/// by every answer that holds a key (clear-leak's too).
pub(super) fn answer_record(k: KeyRecord) -> api::KeyRecord {
    api::KeyRecord {
        id: k.id,
        project_id: k.project_id,
        org_id: k.org_id,
        name: k.name,
        hint: k.hint,
        status: k.status.as_str().into(),
        tags: k.tags,
        created_by: k.created_by,
        created_at: k.created_at,
        last_used_at: k.last_used_at,
        revoked_at: k.revoked_at,
        expires_at: k.expires_at,
        parent_id: k.parent_id,
        policy: k.policy,
        rotated_at: k.rotated_at,
    }
}

fn view(record: KeyRecord, project: Option<&Project>, now: i64) -> Key {
    let issued = record.rotated_at.unwrap_or(record.created_at);
    let rotation_due = record.status == KeyStatus::Active
        && record.expires_at.is_none_or(|t| t > now)
        && project
            .and_then(|p| p.policy.max_key_age_ms)
            .is_some_and(|max| now - issued > max);
    Key {
        ephemeral: record.parent_id.is_some(),
        rotation_due,
        record: answer_record(record),
    }
}

#[utoipa::path(post, path = "/api/v1/keys", tag = "keys",  responses((status = 201, description = "The key record and its secret (`key`), shown once", body = keyward_api::keys::CreatedKey)))]
pub async fn create(
    State(state): State<SharedState>,
    caller: Caller,
    ApiJson(req): ApiJson<CreateKey>,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
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
    let policy = req
        .policy
        .map(ToPolicy::into_policy)
        .transpose()?
        .unwrap_or_default();
    let id = KeyId::generate();
    let budget = req
        .budget
        .map(|b| b.into_budget(BudgetScope::Key(id.to_string())))
        .transpose()?;
    caller.require_recent(&state)?;
    let org = caller.org_or_own(req.org.as_deref());
    let create_project = req.create_project && caller.role.at_least(keyward_core::Role::Admin);
    let project = resolve_project(&state, org.as_deref(), &req.project, create_project).await?;
    caller.check_project_write(&state, &project).await?;
    let secret = state.config.key_format.generate(KeyKind::Standard);
    let record = store_key(
        &state,
        &NewKey {
            id,
            project_id: project.id.clone(),
            name: name.to_owned(),
            hash_hex: KeyHash::of(secret.expose()).to_hex(),
            hint: key::hint(secret.expose()),
            tags: req.tags,
            created_by: Some(caller.actor.clone()),
            created_at: now,
            expires_at,
            parent_id: None,
            parent_secret_hash: None,
            policy,
        },
        budget.as_ref(),
    )
    .await?;
    if !record.policy.origins.is_empty() {
        state.invalidate(Invalidation::Origins).await;
    }
    caller
        .audit(&state, Some(&record.org_id), "key.created", record.id.as_str(), json!({"name": record.name, "project_id": record.project_id, "policy": record.policy, "budget": budget}))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKey {
            record: view(record, Some(&project), now),
            key: secret.expose().to_owned(),
        }),
    ))
}

/// `GET /api/v1/keys`: every key, or a project's (`project`, a name within
/// `org` or an id), or an organization's (`org` alone). A filter that names
/// nothing is a 404, never the whole list: a script acting on "the keys of X"
/// must not act on everyone's.
#[utoipa::path(get, path = "/api/v1/keys", tag = "keys",  responses((status = 200, description = "Keys: `{\"data\": [key]}`", body = keyward_api::List<keyward_api::keys::Key>)))]
pub async fn list(
    State(state): State<SharedState>,
    caller: Caller,
    Query(q): Query<KeyQuery>,
) -> Result<Json<List<Key>>, ApiError> {
    let asked_org = caller.org_or_own(q.org.as_deref());
    let (project, org) = match (q.project.as_deref(), asked_org.as_deref()) {
        (Some(p), org) => {
            let project = resolve_project(&state, org, p, false).await?;
            caller.check_org(&project.org_id, "project")?;
            (Some(project.id), None)
        }
        (None, Some(o)) => {
            let org = super::orgs::resolve_org(&state, Some(o)).await?;
            caller.check_org(&org.id, "organization")?;
            (None, Some(org.id))
        }
        (None, None) => (None, None),
    };
    let projects = state.store.list_projects(org.as_ref()).await?;
    let now = state.clock.now_ms();
    let views: Vec<Key> = state
        .store
        .list_keys(project.as_ref())
        .await?
        .into_iter()
        .filter(|k| org.as_ref().is_none_or(|o| *o == k.org_id) && caller.sees(&k.org_id))
        .map(|k| {
            let p = projects.iter().find(|p| p.id == k.project_id);
            view(k, p, now)
        })
        .collect();
    Ok(Json(List::new(views)))
}

#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The key record", body = keyward_api::keys::Key)))]
pub async fn get_key(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Key>, ApiError> {
    let record = find(&state, &caller, &id, false).await?;
    let project = state.store.get_project(&record.project_id).await?;
    Ok(Json(view(record, project.as_ref(), state.clock.now_ms())))
}

/// Revokes a key and the ephemeral tokens derived from it. Takes effect on the
/// next request: cache entries are dropped after the store is updated. A key that
/// is already not active keeps its status (a leaked key stays marked leaked).
#[utoipa::path(post, path = "/api/v1/keys/{id}/revoke", tag = "keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The key record", body = keyward_api::keys::Key)))]
pub async fn revoke(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Key>, ApiError> {
    let current = find(&state, &caller, &id, true).await?;
    if current.status != KeyStatus::Active {
        return Ok(Json(view(current, None, state.clock.now_ms())));
    }
    let now = state.clock.now_ms();
    let record = state
        .store
        .set_key_status(&current.id, KeyStatus::Revoked, now)
        .await?;
    let mut ended = vec![record.id.clone()];
    ended.extend(state.store.revoke_tokens(&record.id, now).await?);
    state.invalidate(Invalidation::Keys(ended)).await;
    caller
        .audit(
            &state,
            Some(&record.org_id),
            "key.revoked",
            record.id.as_str(),
            json!({}),
        )
        .await?;
    Ok(Json(view(record, None, now)))
}

#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 204, description = "Deleted")))]
pub async fn delete(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let record = find(&state, &caller, &id, true).await?;
    state.store.delete_key(&record.id).await?;
    state
        .invalidate(Invalidation::Keys(vec![record.id.clone()]))
        .await;
    caller
        .audit(
            &state,
            Some(&record.org_id),
            "key.deleted",
            record.id.as_str(),
            json!({"name": record.name}),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a new secret for the same key record (same id, limits, history). The old
/// secret works for the grace period. A leaked key's old secret stops at once and
/// the key becomes active again with the new secret — an explicit, audited step.
/// Tokens minted with an old secret stop with it: at once with no grace (the
/// store revokes them), at the end of the grace otherwise (`verify` checks the
/// secret's expiry); tokens minted with the new secret are unaffected.
#[utoipa::path(post, path = "/api/v1/keys/{id}/rotate", tag = "keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 200, description = "The key record and its new secret", body = keyward_api::keys::CreatedKey)))]
pub async fn rotate(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<CreatedKey>, ApiError> {
    let req: RotateKey = optional_json(&body)?;
    caller.require_recent(&state)?;
    let record = find(&state, &caller, &id, true).await?;
    if record.parent_id.is_some() {
        return Err(ApiError::Conflict(
            "ephemeral tokens are not rotated; ask for a new token".into(),
        ));
    }
    let leaked = record.status == KeyStatus::Leaked;
    if !matches!(record.status, KeyStatus::Active | KeyStatus::Leaked) {
        return Err(ApiError::Conflict(format!(
            "a {} key cannot be rotated",
            record.status.as_str()
        )));
    }
    let grace = match req.grace_seconds {
        None => ROTATION_GRACE_DEFAULT_S,
        Some(g) if (0..=30 * 86_400).contains(&g) => g,
        Some(_) => {
            return Err(ApiError::BadRequest(
                "grace_seconds must be between 0 and 30 days".into(),
            ))
        }
    };
    let grace = if leaked { 0 } else { grace };
    let now = state.clock.now_ms();
    let secret = state.config.key_format.generate(KeyKind::Standard);
    let rotated = state
        .store
        .rotate_key(
            &record.id,
            &new_secret(&secret),
            now,
            now + grace * 1000,
            leaked,
        )
        .await?;
    // Cached tokens carry their parent secret's state as it was read.
    let mut stale = vec![rotated.id.clone()];
    stale.extend(
        state
            .store
            .child_keys(&rotated.id)
            .await?
            .into_iter()
            .map(|token| token.id),
    );
    state.invalidate(Invalidation::Keys(stale)).await;
    caller
        .audit(
            &state,
            Some(&rotated.org_id),
            "key.rotated",
            rotated.id.as_str(),
            json!({"grace_seconds": grace, "previous_status": record.status}),
        )
        .await?;
    let project = state.store.get_project(&rotated.project_id).await?;
    Ok(Json(CreatedKey {
        record: view(rotated, project.as_ref(), now),
        key: secret.expose().to_owned(),
    }))
}

/// `POST /api/v1/keys/{id}/ephemeral` (admin). The token is bound to the
/// parent's current secret, and dies with it.
#[utoipa::path(post, path = "/api/v1/keys/{id}/ephemeral", tag = "keys",  params(("id" = String, Path, description = "The object's id")), responses((status = 201, description = "The token record and its secret", body = keyward_api::keys::CreatedKey)))]
pub async fn ephemeral(
    State(state): State<SharedState>,
    caller: Caller,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<CreatedKey>), ApiError> {
    let parent = find(&state, &caller, &id, true).await?;
    let req: EphemeralRequest = optional_json(&body)?;
    let secret = state
        .store
        .current_secret(&parent.id)
        .await?
        .ok_or(ApiError::NotFound("key"))?;
    let actor = caller.actor.clone();
    let created = issue_token(&state, &parent, &secret, None, req, &actor).await?;
    caller
        .audit(
            &state,
            Some(&parent.org_id),
            "token.minted",
            parent.id.as_str(),
            json!({"token_id": created.record.record.id, "expires_at": created.record.record.expires_at}),
        )
        .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// The endpoint a key's policy must allow for its holder to mint tokens. No
/// preset includes it (`all` means all of `/v1`): handing out credentials is
/// granted explicitly, with this pattern, or by a key with no endpoint list.
pub const MINT_METHOD: &str = "POST";
/// See [`MINT_METHOD`].
pub const MINT_PATH: &str = "/keyward/v1/tokens";

/// `POST /keyward/v1/tokens`: the holder of a standard key asks for a token to
/// hand to a browser or mobile client. Minting is a request of that key like
/// any other: it obeys the key's networks (the client address as the gateway
/// computes it, trusted proxies included) and endpoints, and counts toward its
/// rate limits; refusals are the gateway's. Each mint is audited, folded per
/// key by `state.audit_sampler` (a holder can mint at will).
#[utoipa::path(post, path = "/keyward/v1/tokens", tag = "keys",  responses((status = 201, description = "A token minted by the holder of a gateway key", body = keyward_api::keys::CreatedKey)))]
pub async fn token_for_holder(
    State(state): State<SharedState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let presented =
        crate::request::credentials::presented_key(&headers).ok_or(GatewayError::MissingKey)?;
    let caller = crate::proxy::verify::verify_caller(&state, presented, None).await?;
    if caller.parent.is_some() {
        return Err(ApiError::BadRequest(
            "an ephemeral token cannot issue tokens".into(),
        ));
    }
    let client_ip = state.config.client_ip.client_ip(peer.ip(), &headers);
    let mut permit = crate::limits::admission::admit_local(
        &state.limits,
        &caller,
        MINT_METHOD,
        MINT_PATH,
        client_ip,
        headers
            .get(axum::http::header::ORIGIN)
            .map(|o| o.to_str().unwrap_or("")),
    )
    .await?;
    let req: EphemeralRequest = optional_json(&body)?;
    // The secret presented is the one the token lives and dies with.
    let secret = state
        .config
        .key_format
        .parse(presented)
        .map_err(|_| GatewayError::Internal)?
        .hash;
    let parent = &caller.key;
    let actor = parent.id.to_string();
    let created = issue_token(
        &state,
        parent,
        &secret,
        parent.secret_expires_at,
        req,
        &actor,
    )
    .await?;
    permit.commit();
    let rate_headers = permit.headers;
    permit.finish(0);
    let now = state.clock.now_ms();
    if let Some(folded) = state
        .audit_sampler
        .sample(&format!("token.minted:{}", parent.id), now)
    {
        audit(
            &state,
            &actor,
            "token.minted",
            parent,
            json!({
                "token_id": created.record.record.id,
                "expires_at": created.record.record.expires_at,
                "client_ip": crate::request::client_ip::text(client_ip),
                "folded": folded,
            }),
        )
        .await?;
    }
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    crate::rate_headers::write_headers(response.headers_mut(), &rate_headers);
    Ok(response)
}

/// Stores a token derived from `parent`, bound to the parent secret `secret`
/// (SHA-256), which stops working at `secret_expires_at` if set.
async fn issue_token(
    state: &AppState,
    parent: &KeyRecord,
    secret: &KeyHash,
    secret_expires_at: Option<i64>,
    req: EphemeralRequest,
    actor: &str,
) -> Result<CreatedKey, ApiError> {
    if parent.parent_id.is_some() || parent.status != KeyStatus::Active {
        return Err(ApiError::Conflict(
            "tokens can only be derived from an active standard key".into(),
        ));
    }
    let ttl = match req.ttl_seconds {
        None => TOKEN_TTL_DEFAULT_S,
        Some(t) if (1..=TOKEN_TTL_MAX_S).contains(&t) => t,
        Some(_) => {
            return Err(ApiError::BadRequest(format!(
                "ttl_seconds must be between 1 and {TOKEN_TTL_MAX_S}"
            )))
        }
    };
    let now = state.clock.now_ms();
    // A token never outlives its parent, nor the secret it was minted with.
    let expires_at = [Some(now + ttl * 1000), parent.expires_at, secret_expires_at]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(now);
    // The token is checked against its own policy and its parent's, so it can
    // never exceed the parent; its own policy narrows further.
    let policy: KeyPolicy = req
        .policy
        .map(ToPolicy::into_policy)
        .transpose()?
        .unwrap_or_default();
    // Checked at request time too; refusing here tells the caller at once.
    if let Some(o) = policy
        .origins
        .iter()
        .find(|o| !parent.policy.lists_origin(o))
    {
        return Err(ApiError::BadRequest(format!(
            "origin {o} is not one of the parent key's allowed origins: a token can only narrow them"
        )));
    }
    let id = KeyId::generate();
    let budget = req
        .budget_usd
        .map(|usd| {
            BudgetInput {
                usd,
                period: Some("none".into()),
                soft: None,
            }
            .into_budget(BudgetScope::Key(id.to_string()))
        })
        .transpose()?;
    let token = state.config.key_format.generate(KeyKind::Ephemeral);
    let record = store_key(
        state,
        &NewKey {
            id,
            project_id: parent.project_id.clone(),
            name: format!("{} (ephemeral)", parent.name),
            hash_hex: KeyHash::of(token.expose()).to_hex(),
            hint: key::hint(token.expose()),
            tags: parent.tags.clone(),
            created_by: Some(actor.to_owned()),
            created_at: now,
            expires_at: Some(expires_at),
            parent_id: Some(parent.id.clone()),
            parent_secret_hash: Some(secret.to_hex()),
            policy,
        },
        budget.as_ref(),
    )
    .await?;
    Ok(CreatedKey {
        record: view(record, None, now),
        key: token.expose().to_owned(),
    })
}

/// Stores a key and, when asked, its budget; a key is never left without the
/// budget it was created with.
async fn store_key(
    state: &AppState,
    key: &NewKey,
    budget: Option<&keyward_core::Budget>,
) -> Result<KeyRecord, ApiError> {
    let record = state.store.create_key(key).await?;
    if let Some(b) = budget {
        if let Err(e) = state.store.set_budget(b, key.created_at).await {
            let _ = state.store.delete_key(&record.id).await;
            return Err(e.into());
        }
    }
    Ok(record)
}

/// A JSON body that may be left out entirely.
fn optional_json<T: serde::de::DeserializeOwned + Default>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

fn new_secret(secret: &Secret) -> NewSecret {
    NewSecret {
        hash_hex: KeyHash::of(secret.expose()).to_hex(),
        hint: key::hint(secret.expose()),
    }
}

/// The key `id` if the caller may see it (its organization), and, for a
/// change (`write`), change it (a member: a project they belong to).
pub(crate) async fn find(
    state: &AppState,
    caller: &Caller,
    id: &str,
    write: bool,
) -> Result<KeyRecord, ApiError> {
    let id = KeyId::parse(id).ok_or(ApiError::NotFound("key"))?;
    let record = state
        .store
        .get_key(&id)
        .await?
        .filter(|k| caller.sees(&k.org_id))
        .ok_or(ApiError::NotFound("key"))?;
    if write && caller.role == keyward_core::Role::Member {
        let project = state
            .store
            .get_project(&record.project_id)
            .await?
            .ok_or(ApiError::NotFound("key"))?;
        caller.check_project_write(state, &project).await?;
    }
    Ok(record)
}

async fn audit(
    state: &AppState,
    actor: &str,
    action: &str,
    key: &KeyRecord,
    detail: Value,
) -> Result<(), ApiError> {
    state
        .store
        .append_audit(&NewAuditEvent {
            at: state.clock.now_ms(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            target: key.id.to_string(),
            detail,
            org_id: Some(key.org_id.clone()),
            ..Default::default()
        })
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{OrgId, ProjectId};
    use serde::Serialize;

    /// A key record with every optional field set (`full`) or none of them.
    fn record(full: bool) -> KeyRecord {
        KeyRecord {
            id: KeyId::generate(),
            project_id: ProjectId::generate(),
            org_id: OrgId::generate(),
            name: "app".into(),
            hint: "kw_…abcd".into(),
            status: if full {
                KeyStatus::Leaked
            } else {
                KeyStatus::Active
            },
            tags: if full { vec!["prod".into()] } else { vec![] },
            created_by: full.then(|| "kwa".into()),
            created_at: 1,
            last_used_at: full.then_some(2),
            revoked_at: full.then_some(3),
            expires_at: full.then_some(4),
            parent_id: full.then(KeyId::generate),
            policy: if full {
                KeyPolicy {
                    rpm: Some(5),
                    models: vec!["gpt-*".into()],
                    ..Default::default()
                }
            } else {
                KeyPolicy::default()
            },
            rotated_at: full.then_some(6),
            secret_expires_at: full.then_some(7),
            minted_from: None,
        }
    }

    /// Key answers used to be the storage record flattened with the two derived
    /// flags (and the secret): the API types must put the same bytes on the
    /// wire, and the CLI must read them back without loss.
    #[test]
    fn key_answers_are_the_bytes_the_storage_record_gave() {
        #[derive(Serialize)]
        struct Before<'a> {
            #[serde(flatten)]
            record: &'a KeyRecord,
            ephemeral: bool,
            rotation_due: bool,
            key: &'a str,
        }
        for full in [true, false] {
            let record = record(full);
            let before = Before {
                record: &record,
                ephemeral: full,
                rotation_due: false,
                key: "kw_secret",
            };
            let created = CreatedKey {
                record: view(record.clone(), None, 10),
                key: "kw_secret".into(),
            };
            let sent = serde_json::to_string(&created).unwrap();
            assert_eq!(sent, serde_json::to_string(&before).unwrap());
            let read: CreatedKey = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, created);
            assert_eq!(read.record.ephemeral, full);
        }
    }

    /// Clear-leak answers the record alone (see `leaks::clear`): the bytes the
    /// storage record gave, never its storage-only fields.
    #[test]
    fn a_cleared_key_is_the_bytes_the_storage_record_gave() {
        for full in [true, false] {
            let record = record(full);
            let sent = serde_json::to_string(&answer_record(record.clone())).unwrap();
            assert_eq!(sent, serde_json::to_string(&record).unwrap());
            assert!(!sent.contains("secret_expires_at"), "{sent}");
            let read: api::KeyRecord = serde_json::from_str(&sent).unwrap();
            assert_eq!(read, answer_record(record));
        }
    }
}
