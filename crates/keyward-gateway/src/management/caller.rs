//! Who calls the management API, and what they may touch.
//!
//! Three kinds of caller: the deployment's bootstrap admin key (no
//! organization: it acts in every one, and each use is audited), an admin key
//! scoped to one organization (an owner of it, for automation), and a person
//! signed in with a session cookie (their organization, their role).
//!
//! Two checks, both on every request:
//! - **Role**, by route, before the handler runs: [`minimum_role`] is the one
//!   table of who may call what (viewers read; members manage keys; admins
//!   also budgets, webhooks, projects; owners also users and admin keys).
//! - **Object**, in the handler: an object of another organization is "not
//!   found", never "forbidden", so that ids cannot be probed
//!   ([`Caller::check_org`]); a member writes only keys of projects they
//!   belong to ([`Caller::check_project_write`]).

use super::ApiError;
use crate::auth::SignedIn;
use crate::state::{AppState, SharedState};
use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::Method;
use keyward_core::{KeyId, KeyKind, OrgId, Role, UserId};
use keyward_store::{KeyStatus, NewAuditEvent, Project};
use std::net::SocketAddr;
use std::sync::Arc;

/// The authenticated caller of a management request.
#[derive(Clone, Debug)]
pub struct Caller {
    /// Recorded as the actor in audit events: an admin key id or a user id.
    pub actor: String,
    /// The one organization the caller acts in; `None`: the bootstrap key.
    pub org: Option<OrgId>,
    /// What the caller may do there.
    pub role: Role,
    /// How the caller authenticated.
    pub via: Via,
    /// Where the request came from, for the audit log.
    pub source: Source,
}

/// A request's source address and user agent, as audit events record them.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The client's address (behind trusted proxies: the one they name).
    pub ip: Option<String>,
    /// The `User-Agent`, cut to 512 bytes.
    pub user_agent: Option<String>,
}

/// How a caller authenticated.
#[derive(Clone, Debug)]
pub enum Via {
    /// An admin key (`kwa_…`).
    AdminKey(KeyId),
    /// A session cookie.
    Session(Box<SignedIn>),
}

/// The least role a route needs. Reads need a viewer, key operations a
/// member (limited to their projects by the handler), the organization's
/// users and admin keys an owner, everything else an admin.
pub fn minimum_role(method: &Method, route: &str) -> Role {
    let read = matches!(*method, Method::GET | Method::HEAD);
    if route.starts_with("/api/v1/admin-keys")
        || route.starts_with("/api/v1/users")
        || route.starts_with("/api/v1/invitations")
    {
        return if read { Role::Admin } else { Role::Owner };
    }
    if read {
        return Role::Viewer;
    }
    match route {
        "/api/v1/keys"
        | "/api/v1/keys/{id}"
        | "/api/v1/keys/{id}/revoke"
        | "/api/v1/keys/{id}/rotate"
        | "/api/v1/keys/{id}/ephemeral"
        | "/api/v1/keys/{id}/clear-leak"
        | "/api/v1/leaks"
        | "/api/v1/scan-uploads" => Role::Member,
        "/api/v1/orgs" => Role::Owner,
        _ => Role::Admin,
    }
}

impl Caller {
    /// Whether the caller may see objects of `org`.
    pub fn sees(&self, org: &OrgId) -> bool {
        self.org.as_ref().is_none_or(|mine| mine == org)
    }

    /// An object of another organization is not found.
    pub fn check_org(&self, org: &OrgId, what: &'static str) -> Result<(), ApiError> {
        if self.sees(org) {
            Ok(())
        } else {
            Err(ApiError::NotFound(what))
        }
    }

    /// The organization lists are limited to (`None`: all, the bootstrap key).
    pub fn org_filter(&self) -> Option<&OrgId> {
        self.org.as_ref()
    }

    /// The organization a request names, defaulting to the caller's own: a
    /// scoped caller that names nothing means its organization.
    pub fn org_or_own(&self, asked: Option<&str>) -> Option<String> {
        asked
            .map(str::to_owned)
            .or_else(|| self.org.as_ref().map(|o| o.to_string()))
    }

    /// The user behind a session, if any.
    pub fn user(&self) -> Option<&UserId> {
        match &self.via {
            Via::Session(s) => Some(&s.user().id),
            Via::AdminKey(_) => None,
        }
    }

    /// May the caller change keys of `project`? Its organization, and for a
    /// member, membership of the project.
    pub async fn check_project_write(
        &self,
        state: &AppState,
        project: &Project,
    ) -> Result<(), ApiError> {
        self.check_org(&project.org_id, "project")?;
        if self.role == Role::Member {
            let user = self.user().ok_or(ApiError::NotFound("project"))?;
            if !state.store.is_project_member(&project.id, user).await? {
                return Err(ApiError::Forbidden(
                    "members manage only the keys of projects they belong to".into(),
                ));
            }
        }
        Ok(())
    }

    /// A sensitive action (create or rotate a key, raise a budget, add a
    /// webhook, change roles): a session must have signed in or
    /// re-authenticated recently. Admin keys are machine credentials with no
    /// second step to ask for; they are scoped and audited instead.
    pub fn require_recent(&self, state: &AppState) -> Result<(), ApiError> {
        match &self.via {
            Via::Session(s) => s.require_recent(state),
            Via::AdminKey(_) => Ok(()),
        }
    }

    /// Appends an event about an object of `org` (the caller's own when
    /// `None`), with the caller as actor and the request's source, to that
    /// organization's chain: its admins see what was done to their objects,
    /// whoever did it, the bootstrap key included.
    pub async fn audit(
        &self,
        state: &AppState,
        org: Option<&OrgId>,
        action: &str,
        target: &str,
        detail: serde_json::Value,
    ) -> Result<(), ApiError> {
        state
            .store
            .append_audit(&NewAuditEvent {
                at: state.clock.now_ms(),
                actor: self.actor.clone(),
                action: action.to_owned(),
                target: target.to_owned(),
                detail,
                org_id: org.or(self.org.as_ref()).cloned(),
                ip: self.source.ip.clone(),
                user_agent: self.source.user_agent.clone(),
            })
            .await?;
        Ok(())
    }

    /// Only the deployment's bootstrap key may (create organizations).
    pub fn require_deployment(&self) -> Result<(), ApiError> {
        match (&self.via, &self.org) {
            (Via::AdminKey(_), None) => Ok(()),
            _ => Err(ApiError::Forbidden(
                "only the deployment's bootstrap admin key may do this".into(),
            )),
        }
    }
}

impl FromRequestParts<SharedState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &SharedState) -> Result<Self, ApiError> {
        let mut caller = match crate::request::credentials::presented_key(&parts.headers) {
            Some(presented) => by_admin_key(state, presented).await?,
            None => {
                let signed_in = SignedIn::from_request_parts(parts, state).await?;
                let user = signed_in.user();
                Caller {
                    actor: user.id.to_string(),
                    org: Some(user.org_id.clone()),
                    role: user.role,
                    via: Via::Session(Box::new(signed_in)),
                    source: Source::default(),
                }
            }
        };
        if let Some(ConnectInfo(peer)) = parts.extensions.get::<ConnectInfo<SocketAddr>>() {
            let origin = crate::auth::session::Origin::of(state, peer.ip(), &parts.headers);
            caller.source = Source {
                ip: Some(origin.ip_text()),
                user_agent: origin.user_agent,
            };
        }
        let route = parts
            .extensions
            .get::<MatchedPath>()
            .map_or(parts.uri.path(), |m| m.as_str());
        let needed = minimum_role(&parts.method, route);
        if !caller.role.at_least(needed) {
            return Err(ApiError::Forbidden(format!(
                "this needs the {needed} role; you are {}",
                caller.role
            )));
        }
        if let (Via::AdminKey(id), None) = (&caller.via, &caller.org) {
            audit_bootstrap_use(state, id, &caller.source, &parts.method, parts.uri.path()).await;
        }
        Ok(caller)
    }
}

async fn by_admin_key(state: &Arc<AppState>, presented: &str) -> Result<Caller, ApiError> {
    let parsed = state
        .config
        .key_format
        .parse(presented)
        .map_err(|_| ApiError::Unauthorized)?;
    if parsed.kind != KeyKind::Admin {
        return Err(ApiError::Unauthorized);
    }
    let admin = state
        .store
        .admin_key_by_hash(&parsed.hash)
        .await?
        .ok_or(ApiError::Unauthorized)?;
    if admin.status != KeyStatus::Active {
        return Err(ApiError::Unauthorized);
    }
    // Another admin key at work: the initial key file has done its job.
    if let Some((path, held)) = state.initial_admin_key.retire_unless_holds(&admin.id) {
        crate::bootstrap::audit_file_removed(
            &state.store,
            &state.clock,
            &held,
            &path,
            "another admin key was used",
        )
        .await;
    }
    Ok(Caller {
        actor: admin.id.to_string(),
        org: admin.org_id,
        role: Role::Owner,
        via: Via::AdminKey(admin.id),
        source: Source::default(),
    })
}

/// The bootstrap key can do anything anywhere: every use is on the record.
/// Each change it makes is audited by its handler with the key as the actor;
/// on top, its use itself is recorded, folded per minute (the first use of a
/// minute is written with the number of uses folded since the last one), so
/// that a script polling with it cannot push real events out of the log.
async fn audit_bootstrap_use(
    state: &AppState,
    id: &KeyId,
    source: &Source,
    method: &Method,
    path: &str,
) {
    let now = state.clock.now_ms();
    let kind = format!("admin_key.bootstrap_used:{id}");
    let Some(folded) = state.audit_sampler.sample(&kind, now) else {
        return;
    };
    let event = NewAuditEvent {
        at: now,
        actor: id.to_string(),
        action: "admin_key.bootstrap_used".into(),
        target: id.to_string(),
        detail: serde_json::json!({"method": method.as_str(), "path": path, "uses_folded": folded}),
        ip: source.ip.clone(),
        user_agent: source.user_agent.clone(),
        ..Default::default()
    };
    if let Err(e) = state.store.append_audit(&event).await {
        tracing::error!(error = %e, "could not record a use of the bootstrap admin key");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn viewers_read_members_manage_keys_owners_manage_people() {
        assert_eq!(minimum_role(&Method::GET, "/api/v1/keys"), Role::Viewer);
        assert_eq!(minimum_role(&Method::POST, "/api/v1/keys"), Role::Member);
        assert_eq!(minimum_role(&Method::PUT, "/api/v1/budgets"), Role::Admin);
        assert_eq!(minimum_role(&Method::POST, "/api/v1/webhooks"), Role::Admin);
        assert_eq!(
            minimum_role(&Method::GET, "/api/v1/admin-keys"),
            Role::Admin
        );
        assert_eq!(minimum_role(&Method::POST, "/api/v1/users"), Role::Owner);
    }
}
