//! `/api/v1/admin-keys`.

use keyward_core::KeyId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// `POST /api/v1/admin-keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateAdminKey {
    /// Human name.
    pub name: String,
    /// The organization (id or name) the key manages. Without it, the key is
    /// the caller's organization's; only the deployment's bootstrap key can
    /// create a key without one, which acts in every organization.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org: Option<String>,
}

/// An admin key as the API shows it (never its secret).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AdminKey {
    /// Its id.
    #[schema(value_type = String)]
    pub id: KeyId,
    /// Human name.
    pub name: String,
    /// Display hint of its secret.
    pub hint: String,
    /// `active`, `revoked` or `leaked`.
    pub status: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// When it left `active`, ms.
    pub revoked_at: Option<i64>,
    /// When its secret was last replaced by a rotation, ms.
    pub rotated_at: Option<i64>,
    /// The admin key that created it (null for the bootstrap key).
    pub created_by: Option<String>,
    /// The one organization it manages; null: a deployment-wide key.
    #[schema(value_type = Option<String>)]
    pub org_id: Option<keyward_core::OrgId>,
}

/// An admin key with its secret, which is never shown again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CreatedAdminKey {
    /// The admin key.
    #[serde(flatten)]
    pub record: AdminKey,
    /// The secret (`kwa_…`).
    pub key: String,
}
