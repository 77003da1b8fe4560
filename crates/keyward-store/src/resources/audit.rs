//! The audit log: append-only and tamper-evident.
//!
//! Invariant: events form one hash chain per organization, plus one for
//! deployment-level events (`org_id` NULL), named [`crate::DEPLOYMENT_CHAIN`]. Each
//! event stores `prev_hash`, the hash of the event before it in its chain
//! (NULL for the first), and `hash`, SHA-256 over [`event_hash`]'s
//! length-prefixed encoding of its chain, id, time, actor, action, target,
//! detail (the exact text the database gives back), organization, address,
//! user agent and `prev_hash`. `audit_heads` holds each chain's last event id
//! and hash, so that cutting the end of a chain is caught as well as an edit, a
//! removal or a reordering in the middle. Appends to one chain are serialized:
//! by SQLite's single writer, and on PostgreSQL by locking the chain's head row
//! (`FOR UPDATE`) in the appending transaction. The trait has no way to change
//! or remove an event.
//!
//! What it proves: a change made to the database behind keyward's back, by
//! anyone who does not also recompute every later hash and the head, is
//! reported by [`AuditStore::verify_audit`]. The hashes are not keyed: someone
//! with write access who rewrites the chain from the altered event on is not
//! caught (keep a copy of the heads elsewhere to catch that).

use crate::columns::{backend, write_error, Columns};
use crate::common::{
    self, chain_of, decode_audit, event_hash, set_audit_head, AUDIT_COLUMNS as COLUMNS,
};
use crate::sql::{Db, SqlStore, Stmt};
use crate::{AuditBreak, AuditEvent, AuditFilter, NewAuditEvent, StoreResult};
use async_trait::async_trait;
use keyward_core::AuditId;
use std::collections::BTreeMap;

/// Events read per statement while verifying.
const VERIFY_PAGE: i64 = 1000;

/// The audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an audit event at the end of its organization's chain.
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent>;

    /// Audit events matching `filter`, newest first.
    async fn query_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>>;

    /// Audit events, newest first, optionally only those about one target.
    async fn list_audit(&self, target: Option<&str>, limit: i64) -> StoreResult<Vec<AuditEvent>> {
        self.query_audit(&AuditFilter {
            target: target.map(str::to_owned),
            limit,
            ..AuditFilter::default()
        })
        .await
    }

    /// Walks every chain in order: `Ok(n)` when all `n` events fit their
    /// chains and every chain ends at its recorded head, otherwise the first
    /// event that does not fit and why.
    async fn verify_audit(&self) -> StoreResult<Result<u64, AuditBreak>>;
}

#[async_trait]
impl<S: SqlStore> AuditStore for S {
    async fn append_audit(&self, event: &NewAuditEvent) -> StoreResult<AuditEvent> {
        let db = self.db();
        let id = AuditId::generate();
        let chain = chain_of(event.org_id.as_ref().map(|o| o.as_str()));
        let detail = common::encode_detail(&event.detail)?;
        let mut tx = db.begin().await?;
        // A write first: on SQLite it takes the file's write lock at once; on
        // PostgreSQL it creates the chain's head on first use, so that there
        // is always a row to lock below.
        Stmt::new(
            "INSERT INTO audit_heads (chain, last_id, last_hash) VALUES ($1, NULL, NULL) \
             ON CONFLICT (chain) DO NOTHING",
        )
        .bind(chain)
        .execute(tx.on())
        .await
        .map_err(backend)?;
        let prev_hash = Stmt::new(format!(
            "SELECT last_hash FROM audit_heads WHERE chain = $1{}",
            db.for_update()
        ))
        .bind(chain)
        .optional(tx.on(), |r| r.opt_text("last_hash"))
        .await?
        .flatten();
        // The text the database will give back, which is what is hashed:
        // PostgreSQL's JSONB normalizes what it is given.
        let stored_detail = match db {
            Db::Sqlite { .. } => detail.clone(),
            Db::Postgres(_) => Stmt::new("SELECT CAST(CAST($1 AS JSONB) AS TEXT) AS detail")
                .bind(&detail)
                .fetch_one(tx.on())
                .await
                .map_err(backend)?
                .text("detail")?,
        };
        let stored = AuditEvent {
            id,
            at: event.at,
            actor: event.actor.clone(),
            action: event.action.clone(),
            target: event.target.clone(),
            detail: event.detail.clone(),
            org_id: event.org_id.clone(),
            ip: event.ip.clone(),
            user_agent: event.user_agent.clone(),
            prev_hash,
            hash: None,
        };
        let hash = event_hash(chain, &stored, &stored_detail);
        Stmt::new(format!(
            "INSERT INTO audit_events \
             (id, at, actor, action, target, detail, org_id, ip, user_agent, prev_hash, hash) \
             VALUES ($1, $2, $3, $4, $5, {}, $7, $8, $9, $10, $11)",
            db.json("$6")
        ))
        .bind(stored.id.as_str())
        .bind(stored.at)
        .bind(&stored.actor)
        .bind(&stored.action)
        .bind(&stored.target)
        .bind(&detail)
        .bind(stored.org_id.as_ref().map(|o| o.as_str()))
        .bind(stored.ip.as_deref())
        .bind(stored.user_agent.as_deref())
        .bind(stored.prev_hash.as_deref())
        .bind(&hash)
        .execute(tx.on())
        .await
        .map_err(|e| write_error(e, "audit event", "audit event"))?;
        set_audit_head(&mut tx, chain, stored.id.as_str(), &hash).await?;
        tx.commit().await?;
        Ok(AuditEvent {
            hash: Some(hash),
            ..stored
        })
    }

    async fn query_audit(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditEvent>> {
        let db = self.db();
        let mut qb = Stmt::new(format!("SELECT {COLUMNS} FROM audit_events WHERE 1 = 1"));
        if let Some(org) = &filter.org_id {
            qb.push(" AND org_id = ").push_bind(org.as_str());
        }
        if let Some(target) = &filter.target {
            qb.push(" AND target = ").push_bind(target.as_str());
        }
        if let Some(actor) = &filter.actor {
            qb.push(" AND actor = ").push_bind(actor.as_str());
        }
        if let Some(prefix) = &filter.action_prefix {
            // A prefix compared as such, not a LIKE pattern: `_` and `%` in
            // action names are literal.
            qb.push(" AND substr(action, 1, CAST(")
                .push_bind(prefix.chars().count() as i64)
                .push(" AS INTEGER)) = ")
                .push_bind(prefix.as_str());
        }
        if let Some(since) = filter.since {
            qb.push(" AND at >= ").push_bind(since);
        }
        if let Some(until) = filter.until {
            qb.push(" AND at < ").push_bind(until);
        }
        if let Some(before) = &filter.before {
            qb.push(" AND (at, seq) < (SELECT at, seq FROM audit_events WHERE id = ")
                .push_bind(before.as_str())
                .push(")");
        }
        qb.push(" ORDER BY at DESC, seq DESC LIMIT ")
            .push_bind(filter.limit.max(0));
        qb.all(db.reader(), common::audit_event).await
    }

    async fn verify_audit(&self) -> StoreResult<Result<u64, AuditBreak>> {
        let db = self.db();
        let mut tx = db.begin_snapshot().await?;
        let heads: BTreeMap<String, (Option<String>, Option<String>)> =
            Stmt::new("SELECT chain, last_id, last_hash FROM audit_heads")
                .all(tx.on(), |r| {
                    Ok((
                        r.text("chain")?,
                        (r.opt_text("last_id")?, r.opt_text("last_hash")?),
                    ))
                })
                .await?
                .into_iter()
                .collect();
        // Each chain's last event so far: (id, hash).
        let mut tails: BTreeMap<String, (AuditId, String)> = BTreeMap::new();
        let mut count = 0u64;
        let mut after = i64::MIN;
        loop {
            let page = Stmt::new(format!(
                "SELECT seq, {COLUMNS} FROM audit_events WHERE seq > $1 ORDER BY seq LIMIT $2"
            ))
            .bind(after)
            .bind(VERIFY_PAGE)
            .fetch_all(tx.on())
            .await
            .map_err(backend)?;
            let Some(last) = page.last() else { break };
            after = last.int("seq")?;
            for row in &page {
                let (event, stored_detail) = decode_audit(row)?;
                let chain = chain_of(event.org_id.as_ref().map(|o| o.as_str()));
                let broken = |reason: &str| {
                    Ok(Err(AuditBreak {
                        event_id: event.id.clone(),
                        chain: chain.to_owned(),
                        reason: reason.to_owned(),
                    }))
                };
                let Some(hash) = &event.hash else {
                    return broken("it has no hash: it was written outside keyward");
                };
                let expected_prev = tails.get(chain).map(|(_, h)| h.as_str());
                if event.prev_hash.as_deref() != expected_prev {
                    return broken(
                        "it does not follow the event before it in its chain: \
                         an event before it was removed, reordered or changed",
                    );
                }
                if event_hash(chain, &event, &stored_detail) != *hash {
                    return broken("its stored fields do not match its hash: it was changed");
                }
                tails.insert(chain.to_owned(), (event.id.clone(), hash.clone()));
                count += 1;
            }
        }
        for (chain, (last_id, last_hash)) in &heads {
            let Some(last_id) = last_id else { continue };
            match tails.get(chain) {
                Some((id, hash)) if id.as_str() == last_id && Some(hash) == last_hash.as_ref() => {}
                _ => {
                    return Ok(Err(AuditBreak {
                        event_id: AuditId::from_trusted(last_id.clone()),
                        chain: chain.clone(),
                        reason: "its chain no longer ends at it: the last events of the chain \
                                 were removed, or the chain's head was changed"
                            .into(),
                    }))
                }
            }
        }
        for (chain, (id, _)) in &tails {
            if !heads.get(chain).is_some_and(|(last, _)| last.is_some()) {
                return Ok(Err(AuditBreak {
                    event_id: id.clone(),
                    chain: chain.clone(),
                    reason: "its chain has no recorded head: the head was removed".into(),
                }));
            }
        }
        Ok(Ok(count))
    }
}
