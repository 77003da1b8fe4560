//! `/api/v1/users`: the people of an organization.

use keyward_core::{OrgId, Role, UserId};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/users`.
#[derive(Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    /// Email address (compared lowercased).
    pub email: String,
    /// The organization (id or name); the caller's own by default. The
    /// deployment's bootstrap key creates it when no organization has the name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
    /// `owner`, `admin`, `member` or `viewer`.
    #[schema(value_type = String)]
    pub role: Role,
    /// The first password (at least 15 characters: a new account has no
    /// second factor yet).
    pub password: String,
}

impl std::fmt::Debug for CreateUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreateUser")
            .field("email", &self.email)
            .field("org", &self.org)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// `PATCH /api/v1/users/{id}`: what an owner changes about a user.
#[derive(Clone, Debug, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    /// A new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub role: Option<Role>,
    /// Disable (`true`) or enable (`false`) the account.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Lift a lock left by too many failed sign-ins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlock: Option<bool>,
}

/// A user as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    /// Its id.
    #[schema(value_type = String)]
    pub id: UserId,
    /// Lowercased email.
    pub email: String,
    /// The organization.
    #[schema(value_type = String)]
    pub org_id: OrgId,
    /// The role.
    #[schema(value_type = String)]
    pub role: Role,
    /// Creation time, ms.
    pub created_at: i64,
    /// When an owner disabled it.
    pub disabled_at: Option<i64>,
    /// When too many failed sign-ins locked it.
    pub locked_at: Option<i64>,
    /// Whether TOTP is enrolled.
    pub totp: bool,
}

/// `POST /api/v1/invitations`: invite someone to the caller's organization.
#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateInvitation {
    /// Whom (their account is made with this email).
    pub email: String,
    /// Their role once they accept.
    #[schema(value_type = String)]
    pub role: Role,
    /// The organization (id or name); the caller's own by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// An invitation just made. The link is single-use and shown once; it was
/// also emailed when SMTP is configured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Invitation {
    /// Whom.
    pub email: String,
    /// Their role once they accept.
    #[schema(value_type = String)]
    pub role: Role,
    /// The organization.
    #[schema(value_type = String)]
    pub org_id: OrgId,
    /// Until when the link works, ms.
    pub expires_at: i64,
    /// The link (its secret is in the fragment, never sent to a server).
    pub invitation_url: String,
}
