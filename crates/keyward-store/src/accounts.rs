//! Records of accounts: users, their sessions, single-use tokens and the devices
//! they sign in from. Secrets are never here: sessions and tokens are stored as
//! SHA-256 digests, passwords as argon2id hashes, TOTP secrets sealed.

use crate::columns::Columns;
use crate::{StoreError, StoreResult};
use keyward_core::{OrgId, Role, SessionId, UserId};
use serde::Serialize;

/// A user to create.
#[derive(Clone, Debug)]
pub struct NewUser {
    /// The organization they belong to.
    pub org_id: OrgId,
    /// Email address, compared lowercased.
    pub email: String,
    /// argon2id PHC string; `None` for accounts that sign in through OpenID Connect only.
    pub password_hash: Option<String>,
    /// Their role in the organization.
    pub role: Role,
    /// Creation time, ms.
    pub created_at: i64,
}

/// A user as stored. `Debug` leaves out the password hash and the sealed TOTP secret.
#[derive(Clone, PartialEq, Eq, Serialize)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// The organization.
    pub org_id: OrgId,
    /// Lowercased email.
    pub email: String,
    /// argon2id PHC string, if the user has a password.
    #[serde(skip)]
    pub password_hash: Option<String>,
    /// Role in the organization.
    pub role: Role,
    /// Creation time, ms.
    pub created_at: i64,
    /// Set when an owner disabled the account.
    pub disabled_at: Option<i64>,
    /// Set when too many sign-ins failed; cleared by a reset or an unlock.
    pub locked_at: Option<i64>,
    /// Set on evidence of compromise: the password must be reset before signing in.
    pub reset_required_at: Option<i64>,
    /// When the password last changed.
    pub password_changed_at: Option<i64>,
    /// The confirmed TOTP secret, sealed.
    #[serde(skip)]
    pub totp_secret: Option<String>,
    /// A TOTP secret enrolled but not yet confirmed, sealed.
    #[serde(skip)]
    pub totp_pending: Option<String>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("org_id", &self.org_id)
            .field("email", &self.email)
            .field("role", &self.role)
            .field("has_password", &self.password_hash.is_some())
            .field("has_totp", &self.totp_secret.is_some())
            .finish_non_exhaustive()
    }
}

impl User {
    /// Whether the user has a confirmed second factor of the kind the store
    /// keeps on the user row (TOTP); passkeys are counted by the caller.
    pub fn has_totp(&self) -> bool {
        self.totp_secret.is_some()
    }
}

/// Columns selected for a [`User`].
pub(crate) const USER_COLUMNS: &str = "id, org_id, email, password_hash, role, created_at, \
     disabled_at, locked_at, reset_required_at, password_changed_at, totp_secret, totp_pending";

pub(crate) fn user(row: &impl Columns) -> StoreResult<User> {
    let role = row.text("role")?;
    Ok(User {
        id: UserId::from_trusted(row.text("id")?),
        org_id: OrgId::from_trusted(row.text("org_id")?),
        email: row.text("email")?,
        password_hash: row.opt_text("password_hash")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Backend(format!("unknown role {role:?} in storage")))?,
        created_at: row.int("created_at")?,
        disabled_at: row.opt_int("disabled_at")?,
        locked_at: row.opt_int("locked_at")?,
        reset_required_at: row.opt_int("reset_required_at")?,
        password_changed_at: row.opt_int("password_changed_at")?,
        totp_secret: row.opt_text("totp_secret")?,
        totp_pending: row.opt_text("totp_pending")?,
    })
}

/// A session to store: its secret's digest, never the secret.
#[derive(Clone, Debug)]
pub struct NewSession {
    /// Public id (shown in the session list, used to end it).
    pub id: SessionId,
    /// SHA-256 hex of the cookie's secret.
    pub token_hash: String,
    /// Whose.
    pub user_id: UserId,
    /// Sign-in time, ms.
    pub created_at: i64,
    /// The absolute timeout, ms.
    pub expires_at: i64,
    /// Source address at sign-in.
    pub ip: Option<String>,
    /// User agent at sign-in.
    pub user_agent: Option<String>,
}

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Session {
    /// Public id.
    pub id: SessionId,
    /// SHA-256 hex of the cookie's secret.
    #[serde(skip)]
    pub token_hash: String,
    /// Whose.
    pub user_id: UserId,
    /// Sign-in time, ms.
    pub created_at: i64,
    /// Last request, ms (written at most about once a minute).
    pub last_seen_at: i64,
    /// Last sign-in or re-authentication, ms.
    pub authenticated_at: i64,
    /// Absolute timeout, ms.
    pub expires_at: i64,
    /// Source address at sign-in.
    pub ip: Option<String>,
    /// User agent at sign-in.
    pub user_agent: Option<String>,
    /// When it was ended (sign-out, "log out everywhere", a password change).
    pub ended_at: Option<i64>,
}

pub(crate) const SESSION_COLUMNS: &str = "id, token_hash, user_id, created_at, last_seen_at, \
     authenticated_at, expires_at, ip, user_agent, ended_at";

pub(crate) fn session(row: &impl Columns) -> StoreResult<Session> {
    Ok(Session {
        id: SessionId::from_trusted(row.text("id")?),
        token_hash: row.text("token_hash")?,
        user_id: UserId::from_trusted(row.text("user_id")?),
        created_at: row.int("created_at")?,
        last_seen_at: row.int("last_seen_at")?,
        authenticated_at: row.int("authenticated_at")?,
        expires_at: row.int("expires_at")?,
        ip: row.opt_text("ip")?,
        user_agent: row.opt_text("user_agent")?,
        ended_at: row.opt_int("ended_at")?,
    })
}

/// What a single-use token is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OneTimeKind {
    /// A sign-in whose password was right, waiting for its second factor.
    PendingSignIn,
    /// A password reset link.
    PasswordReset,
    /// An invitation to join an organization.
    Invitation,
    /// "This wasn't me", from a new-device alert.
    NotMe,
    /// An OpenID Connect sign-in between its redirect and its callback.
    OidcSignIn,
    /// A passkey ceremony between its challenge and its answer.
    PasskeyCeremony,
}

impl OneTimeKind {
    /// Stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            OneTimeKind::PendingSignIn => "pending_sign_in",
            OneTimeKind::PasswordReset => "password_reset",
            OneTimeKind::Invitation => "invitation",
            OneTimeKind::NotMe => "not_me",
            OneTimeKind::OidcSignIn => "oidc_sign_in",
            OneTimeKind::PasskeyCeremony => "passkey_ceremony",
        }
    }
}

/// A single-use token to store, as the digest of its secret.
#[derive(Clone, Debug)]
pub struct NewOneTimeToken {
    /// SHA-256 hex of the secret.
    pub token_hash: String,
    /// What it is for.
    pub kind: OneTimeKind,
    /// The user it acts for, if any.
    pub user_id: Option<UserId>,
    /// The organization it acts in, if any (invitations).
    pub org_id: Option<OrgId>,
    /// Non-secret detail (an invitee's email and role).
    pub data: serde_json::Value,
    /// Creation time, ms.
    pub created_at: i64,
    /// After this it is refused, ms.
    pub expires_at: i64,
}

/// A single-use token just consumed.
#[derive(Clone, Debug)]
pub struct OneTimeToken {
    /// The user it acts for.
    pub user_id: Option<UserId>,
    /// The organization it acts in.
    pub org_id: Option<OrgId>,
    /// Its detail.
    pub data: serde_json::Value,
    /// Creation time, ms.
    pub created_at: i64,
}

/// A passkey as stored: the verifier's public record, never a private key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StoredPasskeyRow {
    /// Credential id, base64url.
    pub id: String,
    /// Whose.
    pub user_id: UserId,
    /// The name the user gave it.
    pub name: String,
    /// The verifier's record (public key, counter), JSON.
    #[serde(skip)]
    pub data: String,
    /// Registration time, ms.
    pub created_at: i64,
    /// Last sign-in with it, ms.
    pub last_used_at: Option<i64>,
}

pub(crate) const PASSKEY_COLUMNS: &str = "id, user_id, name, data, created_at, last_used_at";

pub(crate) fn passkey(row: &impl Columns) -> StoreResult<StoredPasskeyRow> {
    Ok(StoredPasskeyRow {
        id: row.text("id")?,
        user_id: UserId::from_trusted(row.text("user_id")?),
        name: row.text("name")?,
        data: row.text("data")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
    })
}
