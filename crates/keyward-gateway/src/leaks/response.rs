//! What a report of an exposed key does. For each sighting of one of our keys:
//! an active key becomes `leaked` in storage (once: the store's transition is a
//! compare-and-set, so racing reports cannot both "win"), this node's caches
//! drop it so the next request is refused (other nodes within the cache TTL),
//! its ephemeral tokens die with it (they are refused when their parent is not
//! active), the sighting is recorded, an audit event says who found it where,
//! and a `key.leaked` event goes to the matching webhooks and email recipients.
//!
//! A sighting already recorded (same secret, source, URL and location — a
//! replayed or repeated report) changes nothing and notifies no one.
//!
//! Admin keys (`kwa_`) are keys too: a live one reported exposed becomes
//! `leaked` at once (even the last one: an exposed key must stop; restarting
//! the server writes a new initial key when none is active), is audited
//! (`admin_key.leaked`) and notified as a `key.leaked` event with
//! `key_kind: "admin"` to the channels that are not scoped to an organization
//! or project. Admin requests read the key from storage every time, so the
//! next one is refused on every node.

use crate::cluster::Invalidation;
use crate::notify::Event;
use crate::state::AppState;
use keyward_core::{EventId, KeyHash};
use keyward_store::{
    AdminKey, KeyRecord, KeyStatus, LeakOutcome, NewAuditEvent, NewLeakReport, StoreError,
};
use serde_json::json;
use std::collections::HashMap;

/// One place a secret was seen.
#[derive(Clone, Debug)]
pub struct Sighting {
    /// SHA-256 of the secret; `None` when it is not one of this deployment's
    /// key formats (it is then certainly not ours).
    pub hash: Option<KeyHash>,
    /// Who found it: `github`, `api`, `watcher`.
    pub source: String,
    /// Where, if known.
    pub url: String,
    /// Finer position, if known.
    pub location: String,
    /// The reporter's token type.
    pub token_type: String,
    /// The admin key id, `github`, or `watcher:<name>`.
    pub reporter: String,
}

/// What a sighting turned out to be.
#[derive(Clone, Debug)]
pub enum Verdict {
    /// Not a key of this deployment's format.
    NotOurs,
    /// Our format, but no such key.
    Unknown,
    /// One of our keys, with what the report did to it.
    Key(LeakOutcome, Box<KeyRecord>),
    /// One of our admin keys, with what the report did to it.
    AdminKey(LeakOutcome, Box<AdminKey>),
}

impl Verdict {
    /// GitHub's label: `true_positive` for a real key that was live when it
    /// leaked (including one already disabled by an earlier report of the same
    /// leak, so a replayed request gets the same answer).
    pub fn github_label(&self) -> &'static str {
        match self {
            Verdict::Key(LeakOutcome::Disabled | LeakOutcome::AlreadyLeaked, _)
            | Verdict::AdminKey(LeakOutcome::Disabled | LeakOutcome::AlreadyLeaked, _) => {
                "true_positive"
            }
            _ => "false_positive",
        }
    }
}

fn live(record: &KeyRecord, now: i64) -> bool {
    record.status == KeyStatus::Active
        && record.expires_at.is_none_or(|t| now < t)
        && record.secret_expires_at.is_none_or(|t| now < t)
}

/// Handles a batch of sightings; the verdicts are in the same order.
pub async fn respond(state: &AppState, sightings: &[Sighting]) -> Result<Vec<Verdict>, StoreError> {
    let mut hashes: Vec<KeyHash> = sightings.iter().filter_map(|s| s.hash).collect();
    hashes.sort_unstable_by_key(|h| h.0);
    hashes.dedup();
    let mut keys: HashMap<KeyHash, KeyRecord> = state
        .store
        .keys_by_hashes(&hashes)
        .await?
        .into_iter()
        .collect();
    // A reported hash may be given without its key (`token_hash`), so any hash
    // that is no gateway key's is looked for among the admin keys.
    hashes.retain(|h| !keys.contains_key(h));
    let mut admin_keys: HashMap<KeyHash, AdminKey> = if hashes.is_empty() {
        HashMap::new()
    } else {
        state
            .store
            .admin_keys_by_hashes(&hashes)
            .await?
            .into_iter()
            .collect()
    };
    let mut verdicts = Vec::with_capacity(sightings.len());
    for s in sightings {
        let Some(hash) = s.hash else {
            verdicts.push(Verdict::NotOurs);
            continue;
        };
        if let Some(admin) = admin_keys.get_mut(&hash) {
            let (outcome, record) = respond_admin(state, s, &hash, admin).await?;
            verdicts.push(Verdict::AdminKey(outcome, Box::new(record)));
            continue;
        }
        let Some(record) = keys.get(&hash).cloned() else {
            verdicts.push(Verdict::Unknown);
            continue;
        };
        let now = state.clock.now_ms();
        let (outcome, record) = if live(&record, now) {
            match state.store.mark_key_leaked(&record.id, now).await? {
                Some(updated) => (LeakOutcome::Disabled, updated),
                None => (LeakOutcome::AlreadyLeaked, record),
            }
        } else if record.status == KeyStatus::Leaked {
            (LeakOutcome::AlreadyLeaked, record)
        } else {
            (LeakOutcome::Inactive, record)
        };
        if outcome == LeakOutcome::Disabled {
            // Every secret of the key, and it as the parent of tokens; the
            // store revoked the tokens themselves.
            let mut stale = vec![record.id.clone()];
            stale.extend(
                state
                    .store
                    .child_keys(&record.id)
                    .await?
                    .into_iter()
                    .map(|token| token.id),
            );
            state.invalidate(Invalidation::Keys(stale)).await;
            if let Some(cached) = keys.get_mut(&hash) {
                cached.status = KeyStatus::Leaked;
            }
        }
        let report = state
            .store
            .insert_leak_report(&NewLeakReport {
                key_id: record.id.clone(),
                token_hash: hash.to_hex(),
                source: s.source.clone(),
                url: s.url.clone(),
                location: s.location.clone(),
                token_type: s.token_type.clone(),
                outcome,
                reporter: s.reporter.clone(),
                reported_at: now,
            })
            .await?;
        if outcome == LeakOutcome::Disabled || report.is_some() {
            audit(state, s, &record, outcome, now).await?;
        }
        if outcome == LeakOutcome::Disabled {
            tracing::warn!(key = %record.id, source = %s.source, "key found exposed: disabled");
            notify(state, s, &record, now).await;
        }
        verdicts.push(Verdict::Key(outcome, Box::new(record)));
    }
    Ok(verdicts)
}

/// A sighting of admin key `admin` (kept up to date for later sightings of
/// the same key in the batch): disables it if it is active.
async fn respond_admin(
    state: &AppState,
    s: &Sighting,
    hash: &KeyHash,
    admin: &mut AdminKey,
) -> Result<(LeakOutcome, AdminKey), StoreError> {
    let now = state.clock.now_ms();
    let outcome = match admin.status {
        KeyStatus::Active => match state.store.mark_admin_key_leaked(&admin.id, now).await? {
            Some(updated) => {
                *admin = updated;
                LeakOutcome::Disabled
            }
            None => LeakOutcome::AlreadyLeaked,
        },
        KeyStatus::Leaked => LeakOutcome::AlreadyLeaked,
        _ => LeakOutcome::Inactive,
    };
    let report = state
        .store
        .insert_leak_report(&NewLeakReport {
            key_id: admin.id.clone(),
            token_hash: hash.to_hex(),
            source: s.source.clone(),
            url: s.url.clone(),
            location: s.location.clone(),
            token_type: s.token_type.clone(),
            outcome,
            reporter: s.reporter.clone(),
            reported_at: now,
        })
        .await?;
    if outcome == LeakOutcome::Disabled || report.is_some() {
        let action = match outcome {
            LeakOutcome::Disabled => "admin_key.leaked",
            _ => "admin_key.leak_reported",
        };
        state
            .store
            .append_audit(&NewAuditEvent {
                at: now,
                actor: s.reporter.clone(),
                action: action.into(),
                target: admin.id.to_string(),
                detail: json!({
                    "source": s.source,
                    "url": s.url,
                    "location": s.location,
                    "token_type": s.token_type,
                    "outcome": outcome.as_str(),
                    "status": admin.status.as_str(),
                }),
                ..Default::default()
            })
            .await?;
    }
    if outcome == LeakOutcome::Disabled {
        tracing::warn!(admin_key = %admin.id, source = %s.source, "admin key found exposed: disabled");
        crate::bootstrap::retire_initial_key_file(
            &state.initial_admin_key,
            &state.store,
            &state.clock,
            &admin.id,
            "it was reported leaked",
        )
        .await;
        let event = Event {
            id: EventId::generate(),
            event_type: "key.leaked".into(),
            created_at: now,
            org_id: None,
            project_id: None,
            summary: format!(
                "Admin key {} ({}) was found exposed and has been disabled",
                admin.name, admin.hint
            ),
            data: json!({
                "key_kind": "admin",
                "key_id": admin.id,
                "key_name": admin.name,
                "key_hint": admin.hint,
                "source": s.source,
                "url": s.url,
                "location": s.location,
                "found_at": now,
                "next_step": format!("Rotate the admin key to issue a replacement: keyward admin-keys rotate {} (POST /api/v1/admin-keys/{}/rotate), using another admin key.", admin.id, admin.id),
            }),
        };
        if let Err(e) = state.leaks.notifier.publish(&event).await {
            tracing::error!(error = %e, admin_key = %admin.id, "could not queue the leak notification");
        }
    }
    Ok((outcome, admin.clone()))
}

async fn audit(
    state: &AppState,
    s: &Sighting,
    record: &KeyRecord,
    outcome: LeakOutcome,
    now: i64,
) -> Result<(), StoreError> {
    let action = match outcome {
        LeakOutcome::Disabled => "key.leaked",
        _ => "key.leak_reported",
    };
    state
        .store
        .append_audit(&NewAuditEvent {
            at: now,
            actor: s.reporter.clone(),
            action: action.into(),
            target: record.id.to_string(),
            detail: json!({
                "source": s.source,
                "url": s.url,
                "location": s.location,
                "token_type": s.token_type,
                "outcome": outcome.as_str(),
                "status": record.status.as_str(),
            }),
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn notify(state: &AppState, s: &Sighting, record: &KeyRecord, now: i64) {
    let event = Event {
        id: EventId::generate(),
        event_type: "key.leaked".into(),
        created_at: now,
        org_id: Some(record.org_id.clone()),
        project_id: Some(record.project_id.clone()),
        summary: format!(
            "Key {} ({}) was found exposed and has been disabled",
            record.name, record.hint
        ),
        data: json!({
            "key_id": record.id,
            "key_name": record.name,
            "key_hint": record.hint,
            "project_id": record.project_id,
            "org_id": record.org_id,
            "source": s.source,
            "url": s.url,
            "location": s.location,
            "found_at": now,
            "next_step": format!("Rotate the key to issue a replacement with the same limits: keyward keys rotate {} (POST /api/v1/keys/{}/rotate).", record.id, record.id),
        }),
    };
    // The key is already disabled; a notification that cannot be queued is
    // logged, and the audit log still has the leak.
    if let Err(e) = state.leaks.notifier.publish(&event).await {
        tracing::error!(error = %e, key = %record.id, "could not queue the leak notification");
    }
}
