//! Users: who they are, their password hash, their second factors' state, and
//! the single-use things that act for them (recovery codes, reset links,
//! invitations, pending sign-ins). Every "use once" below is one conditional
//! statement, so two concurrent uses cannot both succeed.

use crate::accounts::{
    self, NewOneTimeToken, NewUser, OneTimeKind, OneTimeToken, StoredPasskeyRow, User,
};
use crate::columns::{backend, write_error, Columns};
use crate::common;
use crate::sql::{SqlStore, Stmt};
use crate::StoreResult;
use async_trait::async_trait;
use keyward_core::{OrgId, ProjectId, Role, UserId};

/// Users and what acts for them.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// Creates a user; `Duplicate` when the email is taken, `NotFound` when the
    /// org does not exist.
    async fn create_user(&self, user: &NewUser) -> StoreResult<User>;
    /// A user by id.
    async fn get_user(&self, id: &UserId) -> StoreResult<Option<User>>;
    /// A user by email (lowercased by the caller).
    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>>;
    /// The users of an organization, oldest first.
    async fn list_users(&self, org: &OrgId) -> StoreResult<Vec<User>>;
    /// Sets a new password: clears a lock and a required reset.
    async fn set_password(&self, id: &UserId, hash: &str, now_ms: i64) -> StoreResult<()>;
    /// Replaces the hash of an unchanged password (new hashing parameters).
    async fn rehash_password(&self, id: &UserId, hash: &str) -> StoreResult<()>;
    /// Locks the account after too many failures (keeps the first lock time).
    async fn lock_user(&self, id: &UserId, now_ms: i64) -> StoreResult<()>;
    /// Lifts a lock (an admin's decision).
    async fn unlock_user(&self, id: &UserId) -> StoreResult<()>;
    /// Requires a password reset before the next sign-in (evidence of compromise).
    async fn require_reset(&self, id: &UserId, now_ms: i64) -> StoreResult<()>;
    /// Changes a user's role.
    async fn set_role(&self, id: &UserId, role: Role) -> StoreResult<()>;
    /// Disables (`Some(now)`) or enables (`None`) an account.
    async fn set_disabled(&self, id: &UserId, at: Option<i64>) -> StoreResult<()>;

    /// Keeps a sealed TOTP secret waiting for its first code.
    async fn set_totp_pending(&self, id: &UserId, sealed: &str) -> StoreResult<()>;
    /// Makes the pending secret the user's TOTP, records the step its first code
    /// used, and replaces the recovery codes, in one transaction.
    async fn confirm_totp(
        &self,
        id: &UserId,
        sealed: &str,
        step: i64,
        recovery_hashes: &[String],
        now_ms: i64,
    ) -> StoreResult<()>;
    /// Removes TOTP and the recovery codes.
    async fn remove_totp(&self, id: &UserId) -> StoreResult<()>;
    /// Records `step` as used unless it, or a later one, already was: `false`
    /// means the code was already accepted once (a replay).
    async fn accept_totp_step(&self, id: &UserId, step: i64) -> StoreResult<bool>;
    /// Uses a recovery code: `true` only the first time.
    async fn use_recovery_code(&self, id: &UserId, hash: &str, now_ms: i64) -> StoreResult<bool>;
    /// How many recovery codes are left.
    async fn recovery_codes_left(&self, id: &UserId) -> StoreResult<i64>;

    /// Stores a single-use token.
    async fn create_one_time_token(&self, token: &NewOneTimeToken) -> StoreResult<()>;
    /// Deletes single-use tokens that expired or were used before `before_ms`
    /// (they can never be taken again); returns how many.
    async fn purge_one_time_tokens(&self, before_ms: i64) -> StoreResult<u64>;
    /// Consumes a single-use token of this kind: `Some` only the first time and
    /// only before it expires.
    async fn take_one_time_token(
        &self,
        hash: &str,
        kind: OneTimeKind,
        now_ms: i64,
    ) -> StoreResult<Option<OneTimeToken>>;
    /// Reads a single-use token without consuming it (a pending sign-in that
    /// may take several tries at its second factor).
    async fn peek_one_time_token(
        &self,
        hash: &str,
        kind: OneTimeKind,
        now_ms: i64,
    ) -> StoreResult<Option<OneTimeToken>>;

    /// Remembers a device; `true` when this user had never signed in from it.
    async fn remember_device(
        &self,
        id: &UserId,
        device_hash: &str,
        user_agent: Option<&str>,
        network: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool>;

    /// The user an OpenID Connect identity is linked to.
    async fn oidc_user(&self, issuer: &str, subject: &str) -> StoreResult<Option<UserId>>;
    /// Whether `user` is linked to any identity at `issuer`.
    async fn has_oidc_identity(&self, user: &UserId, issuer: &str) -> StoreResult<bool>;
    /// Links an OpenID Connect identity to a user.
    async fn link_oidc(
        &self,
        issuer: &str,
        subject: &str,
        user: &UserId,
        now_ms: i64,
    ) -> StoreResult<()>;

    /// Stores a newly registered passkey; `Duplicate` if the credential exists.
    async fn add_passkey(&self, passkey: &StoredPasskeyRow) -> StoreResult<()>;
    /// The user's passkeys, oldest first.
    async fn list_passkeys(&self, user: &UserId) -> StoreResult<Vec<StoredPasskeyRow>>;
    /// Records a sign-in with a passkey (its new counter state).
    async fn passkey_used(&self, id: &str, data: &str, now_ms: i64) -> StoreResult<()>;
    /// Removes one of the user's passkeys; `false` if the user has no such passkey.
    async fn remove_passkey(&self, user: &UserId, id: &str) -> StoreResult<bool>;

    /// Whether the user has signed in from any device before.
    async fn has_devices(&self, id: &UserId) -> StoreResult<bool>;

    /// Adds a user to a project (members manage the keys of their projects).
    async fn add_project_member(&self, project: &ProjectId, user: &UserId) -> StoreResult<()>;
    /// Whether the user belongs to the project.
    async fn is_project_member(&self, project: &ProjectId, user: &UserId) -> StoreResult<bool>;
}

/// One `UPDATE users SET … WHERE id = $last` with the given binds.
async fn update_user<S: SqlStore>(
    store: &S,
    set: &str,
    id: &UserId,
    binds: Vec<crate::sql::Arg<'_>>,
) -> StoreResult<()> {
    let n = binds.len() + 1;
    let sql = format!("UPDATE users SET {set} WHERE id = ${n}");
    let mut stmt = Stmt::new(sql);
    for b in binds {
        stmt = stmt.bind(b);
    }
    let changed = stmt
        .bind(id.as_str())
        .execute(store.db().writer())
        .await
        .map_err(backend)?;
    if changed == 0 {
        return Err(crate::StoreError::NotFound("user"));
    }
    Ok(())
}

#[async_trait]
impl<S: SqlStore> UserStore for S {
    async fn create_user(&self, user: &NewUser) -> StoreResult<User> {
        let id = UserId::generate();
        let email = user.email.to_lowercase();
        Stmt::new(
            "INSERT INTO users (id, org_id, email, password_hash, role, created_at, \
             password_changed_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(id.as_str())
        .bind(user.org_id.as_str())
        .bind(&email)
        .bind(user.password_hash.as_deref())
        .bind(user.role.as_str())
        .bind(user.created_at)
        .bind(user.password_hash.as_ref().map(|_| user.created_at))
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "user", "org"))?;
        Ok(User {
            id,
            org_id: user.org_id.clone(),
            email,
            password_hash: user.password_hash.clone(),
            role: user.role,
            created_at: user.created_at,
            disabled_at: None,
            locked_at: None,
            reset_required_at: None,
            password_changed_at: user.password_hash.as_ref().map(|_| user.created_at),
            totp_secret: None,
            totp_pending: None,
        })
    }

    async fn get_user(&self, id: &UserId) -> StoreResult<Option<User>> {
        let sql = format!("SELECT {} FROM users WHERE id = $1", accounts::USER_COLUMNS);
        Stmt::new(&sql)
            .bind(id.as_str())
            .optional(self.db().reader(), accounts::user)
            .await
    }

    async fn user_by_email(&self, email: &str) -> StoreResult<Option<User>> {
        let sql = format!(
            "SELECT {} FROM users WHERE email = $1",
            accounts::USER_COLUMNS
        );
        Stmt::new(&sql)
            .bind(email.to_lowercase())
            .optional(self.db().reader(), accounts::user)
            .await
    }

    async fn list_users(&self, org: &OrgId) -> StoreResult<Vec<User>> {
        let sql = format!(
            "SELECT {} FROM users WHERE org_id = $1 ORDER BY created_at, id",
            accounts::USER_COLUMNS
        );
        Stmt::new(&sql)
            .bind(org.as_str())
            .all(self.db().reader(), accounts::user)
            .await
    }

    async fn set_password(&self, id: &UserId, hash: &str, now_ms: i64) -> StoreResult<()> {
        update_user(
            self,
            "password_hash = $1, password_changed_at = $2, locked_at = NULL, \
             reset_required_at = NULL",
            id,
            vec![hash.into(), now_ms.into()],
        )
        .await
    }

    async fn rehash_password(&self, id: &UserId, hash: &str) -> StoreResult<()> {
        update_user(self, "password_hash = $1", id, vec![hash.into()]).await
    }

    async fn lock_user(&self, id: &UserId, now_ms: i64) -> StoreResult<()> {
        update_user(
            self,
            "locked_at = COALESCE(locked_at, $1)",
            id,
            vec![now_ms.into()],
        )
        .await
    }

    async fn unlock_user(&self, id: &UserId) -> StoreResult<()> {
        update_user(self, "locked_at = NULL", id, vec![]).await
    }

    async fn require_reset(&self, id: &UserId, now_ms: i64) -> StoreResult<()> {
        update_user(
            self,
            "reset_required_at = COALESCE(reset_required_at, $1)",
            id,
            vec![now_ms.into()],
        )
        .await
    }

    async fn set_role(&self, id: &UserId, role: Role) -> StoreResult<()> {
        update_user(self, "role = $1", id, vec![role.as_str().into()]).await
    }

    async fn set_disabled(&self, id: &UserId, at: Option<i64>) -> StoreResult<()> {
        update_user(self, "disabled_at = $1", id, vec![at.into()]).await
    }

    async fn set_totp_pending(&self, id: &UserId, sealed: &str) -> StoreResult<()> {
        update_user(self, "totp_pending = $1", id, vec![sealed.into()]).await
    }

    async fn confirm_totp(
        &self,
        id: &UserId,
        sealed: &str,
        step: i64,
        recovery_hashes: &[String],
        now_ms: i64,
    ) -> StoreResult<()> {
        let mut tx = self.db().begin().await?;
        Stmt::new(
            "UPDATE users SET totp_secret = $1, totp_pending = NULL, totp_last_step = $2 \
             WHERE id = $3",
        )
        .bind(sealed)
        .bind(step)
        .bind(id.as_str())
        .execute(tx.on())
        .await
        .map_err(backend)?;
        Stmt::new("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(id.as_str())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        for hash in recovery_hashes {
            Stmt::new(
                "INSERT INTO recovery_codes (user_id, code_hash, created_at) VALUES ($1, $2, $3)",
            )
            .bind(id.as_str())
            .bind(hash)
            .bind(now_ms)
            .execute(tx.on())
            .await
            .map_err(backend)?;
        }
        tx.commit().await
    }

    async fn remove_totp(&self, id: &UserId) -> StoreResult<()> {
        let mut tx = self.db().begin().await?;
        Stmt::new(
            "UPDATE users SET totp_secret = NULL, totp_pending = NULL, totp_last_step = NULL \
             WHERE id = $1",
        )
        .bind(id.as_str())
        .execute(tx.on())
        .await
        .map_err(backend)?;
        Stmt::new("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(id.as_str())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        tx.commit().await
    }

    async fn accept_totp_step(&self, id: &UserId, step: i64) -> StoreResult<bool> {
        let changed = Stmt::new(
            "UPDATE users SET totp_last_step = $1 \
             WHERE id = $2 AND (totp_last_step IS NULL OR totp_last_step < $1)",
        )
        .bind(step)
        .bind(id.as_str())
        .execute(self.db().writer())
        .await
        .map_err(backend)?;
        Ok(changed == 1)
    }

    async fn use_recovery_code(&self, id: &UserId, hash: &str, now_ms: i64) -> StoreResult<bool> {
        let changed = Stmt::new(
            "UPDATE recovery_codes SET used_at = $1 \
             WHERE user_id = $2 AND code_hash = $3 AND used_at IS NULL",
        )
        .bind(now_ms)
        .bind(id.as_str())
        .bind(hash)
        .execute(self.db().writer())
        .await
        .map_err(backend)?;
        Ok(changed == 1)
    }

    async fn recovery_codes_left(&self, id: &UserId) -> StoreResult<i64> {
        Stmt::new("SELECT COUNT(*) AS n FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL")
            .bind(id.as_str())
            .fetch_one(self.db().reader())
            .await
            .map_err(backend)?
            .int("n")
    }

    async fn create_one_time_token(&self, token: &NewOneTimeToken) -> StoreResult<()> {
        Stmt::new(
            "INSERT INTO one_time_tokens (token_hash, kind, user_id, org_id, data, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.token_hash)
        .bind(token.kind.as_str())
        .bind(token.user_id.as_ref().map(|u| u.as_str()))
        .bind(token.org_id.as_ref().map(|o| o.as_str()))
        .bind(common::encode_json(&token.data, "token detail")?)
        .bind(token.created_at)
        .bind(token.expires_at)
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "token", "user"))?;
        Ok(())
    }

    async fn purge_one_time_tokens(&self, before_ms: i64) -> StoreResult<u64> {
        Stmt::new("DELETE FROM one_time_tokens WHERE expires_at < $1 OR used_at < $1")
            .bind(before_ms)
            .execute(self.db().writer())
            .await
            .map_err(|e| write_error(e, "token", "user"))
    }

    async fn take_one_time_token(
        &self,
        hash: &str,
        kind: OneTimeKind,
        now_ms: i64,
    ) -> StoreResult<Option<OneTimeToken>> {
        Stmt::new(
            "UPDATE one_time_tokens SET used_at = $1 \
             WHERE token_hash = $2 AND kind = $3 AND used_at IS NULL AND expires_at > $1 \
             RETURNING user_id, org_id, data, created_at",
        )
        .bind(now_ms)
        .bind(hash)
        .bind(kind.as_str())
        .optional(self.db().writer(), one_time_token)
        .await
    }

    async fn peek_one_time_token(
        &self,
        hash: &str,
        kind: OneTimeKind,
        now_ms: i64,
    ) -> StoreResult<Option<OneTimeToken>> {
        Stmt::new(
            "SELECT user_id, org_id, data, created_at FROM one_time_tokens \
             WHERE token_hash = $1 AND kind = $2 AND used_at IS NULL AND expires_at > $3",
        )
        .bind(hash)
        .bind(kind.as_str())
        .bind(now_ms)
        .optional(self.db().reader(), one_time_token)
        .await
    }

    async fn remember_device(
        &self,
        id: &UserId,
        device_hash: &str,
        user_agent: Option<&str>,
        network: Option<&str>,
        now_ms: i64,
    ) -> StoreResult<bool> {
        let seen = Stmt::new(
            "UPDATE user_devices SET last_seen_at = $1 WHERE user_id = $2 AND device_hash = $3",
        )
        .bind(now_ms)
        .bind(id.as_str())
        .bind(device_hash)
        .execute(self.db().writer())
        .await
        .map_err(backend)?;
        if seen > 0 {
            return Ok(false);
        }
        let inserted = Stmt::new(
            "INSERT INTO user_devices (user_id, device_hash, user_agent, network, \
             first_seen_at, last_seen_at) VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (user_id, device_hash) DO NOTHING",
        )
        .bind(id.as_str())
        .bind(device_hash)
        .bind(user_agent)
        .bind(network)
        .bind(now_ms)
        .execute(self.db().writer())
        .await
        .map_err(backend)?;
        Ok(inserted == 1)
    }

    async fn oidc_user(&self, issuer: &str, subject: &str) -> StoreResult<Option<UserId>> {
        let row =
            Stmt::new("SELECT user_id FROM oidc_identities WHERE issuer = $1 AND subject = $2")
                .bind(issuer)
                .bind(subject)
                .fetch_optional(self.db().reader())
                .await
                .map_err(backend)?;
        row.map(|r| r.text("user_id").map(UserId::from_trusted))
            .transpose()
    }

    async fn has_oidc_identity(&self, user: &UserId, issuer: &str) -> StoreResult<bool> {
        let row =
            Stmt::new("SELECT 1 AS one FROM oidc_identities WHERE user_id = $1 AND issuer = $2")
                .bind(user.as_str())
                .bind(issuer)
                .fetch_optional(self.db().reader())
                .await
                .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn link_oidc(
        &self,
        issuer: &str,
        subject: &str,
        user: &UserId,
        now_ms: i64,
    ) -> StoreResult<()> {
        Stmt::new(
            "INSERT INTO oidc_identities (issuer, subject, user_id, created_at) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(issuer)
        .bind(subject)
        .bind(user.as_str())
        .bind(now_ms)
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "identity", "user"))?;
        Ok(())
    }

    async fn add_passkey(&self, p: &StoredPasskeyRow) -> StoreResult<()> {
        Stmt::new(
            "INSERT INTO passkeys (id, user_id, name, data, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&p.id)
        .bind(p.user_id.as_str())
        .bind(&p.name)
        .bind(&p.data)
        .bind(p.created_at)
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "passkey", "user"))?;
        Ok(())
    }

    async fn list_passkeys(&self, user: &UserId) -> StoreResult<Vec<StoredPasskeyRow>> {
        let sql = format!(
            "SELECT {} FROM passkeys WHERE user_id = $1 ORDER BY created_at, id",
            accounts::PASSKEY_COLUMNS
        );
        Stmt::new(&sql)
            .bind(user.as_str())
            .all(self.db().reader(), accounts::passkey)
            .await
    }

    async fn passkey_used(&self, id: &str, data: &str, now_ms: i64) -> StoreResult<()> {
        Stmt::new("UPDATE passkeys SET data = $1, last_used_at = $2 WHERE id = $3")
            .bind(data)
            .bind(now_ms)
            .bind(id)
            .execute(self.db().writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn remove_passkey(&self, user: &UserId, id: &str) -> StoreResult<bool> {
        let n = Stmt::new("DELETE FROM passkeys WHERE user_id = $1 AND id = $2")
            .bind(user.as_str())
            .bind(id)
            .execute(self.db().writer())
            .await
            .map_err(backend)?;
        Ok(n == 1)
    }

    async fn has_devices(&self, id: &UserId) -> StoreResult<bool> {
        let row = Stmt::new("SELECT 1 AS one FROM user_devices WHERE user_id = $1 LIMIT 1")
            .bind(id.as_str())
            .fetch_optional(self.db().reader())
            .await
            .map_err(backend)?;
        Ok(row.is_some())
    }

    async fn add_project_member(&self, project: &ProjectId, user: &UserId) -> StoreResult<()> {
        Stmt::new(
            "INSERT INTO project_members (project_id, user_id) VALUES ($1, $2) \
             ON CONFLICT (project_id, user_id) DO NOTHING",
        )
        .bind(project.as_str())
        .bind(user.as_str())
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "project member", "project"))?;
        Ok(())
    }

    async fn is_project_member(&self, project: &ProjectId, user: &UserId) -> StoreResult<bool> {
        let row = Stmt::new(
            "SELECT 1 AS one FROM project_members WHERE project_id = $1 AND user_id = $2",
        )
        .bind(project.as_str())
        .bind(user.as_str())
        .fetch_optional(self.db().reader())
        .await
        .map_err(backend)?;
        Ok(row.is_some())
    }
}

fn one_time_token(row: &crate::sql::Row) -> StoreResult<OneTimeToken> {
    Ok(OneTimeToken {
        user_id: row.opt_text("user_id")?.map(UserId::from_trusted),
        org_id: row.opt_text("org_id")?.map(OrgId::from_trusted),
        data: common::decode_json(&row.text("data")?, "token detail")?,
        created_at: row.int("created_at")?,
    })
}
