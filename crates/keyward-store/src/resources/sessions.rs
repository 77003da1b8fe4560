//! Signed-in sessions. A session is found by its secret's digest; ending one is
//! a timestamp, so the list of what ended, when and why stays for the audit.

use crate::accounts::{self, NewSession, Session};
use crate::columns::{backend, write_error};
use crate::sql::{SqlStore, Stmt};
use crate::StoreResult;
use async_trait::async_trait;
use keyward_core::{SessionId, UserId};

/// Signed-in sessions.
#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Stores a new session.
    async fn create_session(&self, session: &NewSession) -> StoreResult<Session>;
    /// The session whose secret has this digest, ended or not (the caller decides).
    async fn session_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Session>>;
    /// Records a request on the session.
    async fn touch_session(&self, id: &SessionId, now_ms: i64) -> StoreResult<()>;
    /// Records a re-authentication on the session.
    async fn reauthenticate_session(&self, id: &SessionId, now_ms: i64) -> StoreResult<()>;
    /// The user's sessions still open at `now_ms`, newest first.
    async fn list_sessions(&self, user: &UserId, now_ms: i64) -> StoreResult<Vec<Session>>;
    /// Ends one of the user's sessions; `None` when the user has no such open
    /// session (another user's id is "not found", never "forbidden").
    async fn end_session(
        &self,
        user: &UserId,
        id: &SessionId,
        now_ms: i64,
        reason: &str,
    ) -> StoreResult<Option<Session>>;
    /// Ends every open session of the user except `keep`; returns those ended,
    /// so that the caller can drop them from its caches.
    async fn end_sessions(
        &self,
        user: &UserId,
        keep: Option<&SessionId>,
        now_ms: i64,
        reason: &str,
    ) -> StoreResult<Vec<Session>>;
}

#[async_trait]
impl<S: SqlStore> SessionStore for S {
    async fn create_session(&self, s: &NewSession) -> StoreResult<Session> {
        Stmt::new(
            "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at, \
             authenticated_at, expires_at, ip, user_agent) \
             VALUES ($1, $2, $3, $4, $4, $4, $5, $6, $7)",
        )
        .bind(s.id.as_str())
        .bind(&s.token_hash)
        .bind(s.user_id.as_str())
        .bind(s.created_at)
        .bind(s.expires_at)
        .bind(s.ip.as_deref())
        .bind(s.user_agent.as_deref())
        .execute(self.db().writer())
        .await
        .map_err(|e| write_error(e, "session", "user"))?;
        Ok(Session {
            id: s.id.clone(),
            token_hash: s.token_hash.clone(),
            user_id: s.user_id.clone(),
            created_at: s.created_at,
            last_seen_at: s.created_at,
            authenticated_at: s.created_at,
            expires_at: s.expires_at,
            ip: s.ip.clone(),
            user_agent: s.user_agent.clone(),
            ended_at: None,
        })
    }

    async fn session_by_token_hash(&self, token_hash: &str) -> StoreResult<Option<Session>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE token_hash = $1",
            accounts::SESSION_COLUMNS
        );
        Stmt::new(&sql)
            .bind(token_hash)
            .optional(self.db().reader(), accounts::session)
            .await
    }

    async fn touch_session(&self, id: &SessionId, now_ms: i64) -> StoreResult<()> {
        Stmt::new("UPDATE sessions SET last_seen_at = $1 WHERE id = $2 AND last_seen_at < $1")
            .bind(now_ms)
            .bind(id.as_str())
            .execute(self.db().writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn reauthenticate_session(&self, id: &SessionId, now_ms: i64) -> StoreResult<()> {
        Stmt::new("UPDATE sessions SET authenticated_at = $1, last_seen_at = $1 WHERE id = $2")
            .bind(now_ms)
            .bind(id.as_str())
            .execute(self.db().writer())
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn list_sessions(&self, user: &UserId, now_ms: i64) -> StoreResult<Vec<Session>> {
        let sql = format!(
            "SELECT {} FROM sessions WHERE user_id = $1 AND ended_at IS NULL \
             AND expires_at > $2 ORDER BY created_at DESC, id",
            accounts::SESSION_COLUMNS
        );
        Stmt::new(&sql)
            .bind(user.as_str())
            .bind(now_ms)
            .all(self.db().reader(), accounts::session)
            .await
    }

    async fn end_session(
        &self,
        user: &UserId,
        id: &SessionId,
        now_ms: i64,
        reason: &str,
    ) -> StoreResult<Option<Session>> {
        let sql = format!(
            "UPDATE sessions SET ended_at = $1, ended_reason = $2 \
             WHERE id = $3 AND user_id = $4 AND ended_at IS NULL RETURNING {}",
            accounts::SESSION_COLUMNS
        );
        Stmt::new(&sql)
            .bind(now_ms)
            .bind(reason)
            .bind(id.as_str())
            .bind(user.as_str())
            .optional(self.db().writer(), accounts::session)
            .await
    }

    async fn end_sessions(
        &self,
        user: &UserId,
        keep: Option<&SessionId>,
        now_ms: i64,
        reason: &str,
    ) -> StoreResult<Vec<Session>> {
        let sql = format!(
            "UPDATE sessions SET ended_at = $1, ended_reason = $2 \
             WHERE user_id = $3 AND ended_at IS NULL AND id <> $4 RETURNING {}",
            accounts::SESSION_COLUMNS
        );
        Stmt::new(&sql)
            .bind(now_ms)
            .bind(reason)
            .bind(user.as_str())
            .bind(keep.map(|k| k.as_str()).unwrap_or(""))
            .all(self.db().writer(), accounts::session)
            .await
    }
}
