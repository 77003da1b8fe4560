//! What the queries share: error mapping, column lists, row decoding, and the
//! Rust side of usage batching.

use crate::columns::backend;
use crate::columns::Columns;
use crate::sql::{Db, Row, Stmt, Tx};
use crate::{
    AdminKey, AuditEvent, KeyRecord, KeyStatus, MintedFrom, Org, Project, ProjectPolicy,
    StoreError, StoreResult, UsageEvent, UsageFilter, UsageGroup, UsageTotals,
};
use keyward_core::{
    AuditId, Budget, BudgetScope, KeyHash, KeyId, KeyPolicy, Micros, OrgId, Period, ProjectId,
};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Revokes the active tokens of a parent (`$1` now, `$2` the parent's id).
pub(crate) const REVOKE_TOKENS: &str =
    "UPDATE keys SET status = 'revoked', revoked_at = COALESCE(revoked_at, $1) \
     WHERE parent_key_id = $2 AND status = 'active'";

/// Milliseconds in an hour and in a day, the rollup and bucket widths.
pub(crate) const HOUR_MS: i64 = 3_600_000;
pub(crate) const DAY_MS: i64 = 86_400_000;

/// The canonical (lowercase hex) form of a secret hash, so that lookups by
/// [`KeyHash::to_hex`] always find what was stored.
pub(crate) fn canonical_hash(hash_hex: &str) -> StoreResult<String> {
    KeyHash::from_hex(hash_hex)
        .map(|h| h.to_hex())
        .ok_or_else(|| StoreError::Backend("key hash is not 64 hex characters".into()))
}

pub(crate) fn encode_tags(tags: &[String]) -> StoreResult<String> {
    serde_json::to_string(tags).map_err(|e| StoreError::Backend(format!("encoding tags: {e}")))
}

/// Any JSON-stored value (policies, thresholds); `what` names it in the error.
pub(crate) fn encode_json<T: serde::Serialize>(value: &T, what: &str) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend(format!("encoding {what}: {e}")))
}

/// Decodes a JSON column. A value that does not decode is an error, never a
/// default: a policy silently read as "no restrictions" would lift them.
pub(crate) fn decode_json<T: serde::de::DeserializeOwned>(
    text: &str,
    what: &str,
) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Backend(format!("decoding stored {what}: {e}")))
}

pub(crate) fn encode_detail(detail: &serde_json::Value) -> StoreResult<String> {
    serde_json::to_string(detail)
        .map_err(|e| StoreError::Backend(format!("encoding audit detail: {e}")))
}

fn status(row: &impl Columns) -> StoreResult<KeyStatus> {
    let s = row.text("status")?;
    KeyStatus::parse(&s)
        .ok_or_else(|| StoreError::Backend(format!("unknown key status {s:?} in storage")))
}

/// Columns selected for an [`Org`].
pub(crate) const ORG_COLUMNS: &str = "id, name, created_at";

pub(crate) fn org(row: &impl Columns) -> StoreResult<Org> {
    Ok(Org {
        id: OrgId::from_trusted(row.text("id")?),
        name: row.text("name")?,
        created_at: row.int("created_at")?,
    })
}

/// Columns selected for a [`Project`].
pub(crate) const PROJECT_COLUMNS: &str = "id, org_id, name, created_at, policy";

pub(crate) fn project(row: &impl Columns) -> StoreResult<Project> {
    Ok(Project {
        id: ProjectId::from_trusted(row.text("id")?),
        org_id: OrgId::from_trusted(row.text("org_id")?),
        name: row.text("name")?,
        created_at: row.int("created_at")?,
        policy: decode_json::<ProjectPolicy>(&row.text("policy")?, "project policy")?,
    })
}

/// Columns selected for a [`KeyRecord`], all from `keys`.
pub(crate) const KEY_COLUMNS: &str =
    "id, project_id, org_id, name, hint, status, tags, created_by, \
     created_at, last_used_at, revoked_at, expires_at, parent_key_id, policy, rotated_at";

/// Selected after [`KEY_COLUMNS`] (and the looked-up secret's expiry) by lookups
/// by secret: the state of a token's parent secret, two primary-key reads.
pub(crate) const MINTED_FROM_COLUMNS: &str =
    "(SELECT ps.key_id FROM key_secrets ps WHERE ps.hash_hex = keys.parent_secret_hash) \
     AS parent_secret_key, \
     (SELECT ps.expires_at FROM key_secrets ps WHERE ps.hash_hex = keys.parent_secret_hash) \
     AS parent_secret_expires_at";

/// Decodes a key; `secret_expires_at` and [`MINTED_FROM_COLUMNS`] are read only
/// when the query looked the key up by one of its secrets (and then selected
/// those columns).
pub(crate) fn key(row: &impl Columns, with_secret: bool) -> StoreResult<KeyRecord> {
    let tags = row.text("tags")?;
    let parent_id = row.opt_text("parent_key_id")?.map(KeyId::from_trusted);
    let minted_from = match &parent_id {
        Some(parent) if with_secret => Some(
            match (
                row.opt_text("parent_secret_key")?,
                row.opt_int("parent_secret_expires_at")?,
            ) {
                // A secret of another key is no binding at all.
                (Some(owner), expires_at) if owner == parent.as_str() => {
                    MintedFrom::Secret { expires_at }
                }
                _ => MintedFrom::Gone,
            },
        ),
        _ => None,
    };
    Ok(KeyRecord {
        id: KeyId::from_trusted(row.text("id")?),
        project_id: ProjectId::from_trusted(row.text("project_id")?),
        org_id: OrgId::from_trusted(row.text("org_id")?),
        name: row.text("name")?,
        hint: row.text("hint")?,
        status: status(row)?,
        tags: serde_json::from_str(&tags)
            .map_err(|e| StoreError::Backend(format!("decoding stored key tags: {e}")))?,
        created_by: row.opt_text("created_by")?,
        created_at: row.int("created_at")?,
        last_used_at: row.opt_int("last_used_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        expires_at: row.opt_int("expires_at")?,
        parent_id,
        policy: decode_json::<KeyPolicy>(&row.text("policy")?, "key policy")?,
        rotated_at: row.opt_int("rotated_at")?,
        secret_expires_at: if with_secret {
            row.opt_int("secret_expires_at")?
        } else {
            None
        },
        minted_from,
    })
}

/// The `hash_hex` column of a lookup by secret hashes.
pub(crate) fn hash_column(row: &impl Columns) -> StoreResult<KeyHash> {
    KeyHash::from_hex(&row.text("hash_hex")?)
        .ok_or_else(|| StoreError::Backend("stored hash is not hex".into()))
}

/// Columns selected for an [`AdminKey`].
pub(crate) const ADMIN_KEY_COLUMNS: &str =
    "id, name, hint, status, created_at, revoked_at, rotated_at, created_by, org_id";

pub(crate) fn admin_key(row: &impl Columns) -> StoreResult<AdminKey> {
    Ok(AdminKey {
        id: KeyId::from_trusted(row.text("id")?),
        name: row.text("name")?,
        hint: row.text("hint")?,
        status: status(row)?,
        created_at: row.int("created_at")?,
        revoked_at: row.opt_int("revoked_at")?,
        rotated_at: row.opt_int("rotated_at")?,
        created_by: row.opt_text("created_by")?,
        org_id: row.opt_text("org_id")?.map(OrgId::from_trusted),
    })
}

/// Columns of `usage_events` in the order both backends insert them.
pub(crate) const USAGE_EVENT_COLUMNS: &str =
    "key_id, project_id, org_id, at, endpoint, model, status, \
     input_tokens, cached_input_tokens, output_tokens, reasoning_tokens, cost_micros, \
     upstream_latency_ms, total_latency_ms, client_ip, streamed, incomplete";

pub(crate) fn usage_event(row: &impl Columns) -> StoreResult<UsageEvent> {
    let status = row.int32("status")?;
    Ok(UsageEvent {
        key_id: KeyId::from_trusted(row.text("key_id")?),
        project_id: ProjectId::from_trusted(row.text("project_id")?),
        org_id: OrgId::from_trusted(row.text("org_id")?),
        at: row.int("at")?,
        endpoint: row.text("endpoint")?,
        model: row.text("model")?,
        status: u16::try_from(status).map_err(|_| {
            StoreError::Backend(format!("HTTP status {status} out of range in storage"))
        })?,
        input_tokens: row.int("input_tokens")?,
        cached_input_tokens: row.int("cached_input_tokens")?,
        output_tokens: row.int("output_tokens")?,
        reasoning_tokens: row.int("reasoning_tokens")?,
        cost_micros: Micros(row.int("cost_micros")?),
        upstream_latency_ms: row.int("upstream_latency_ms")?,
        total_latency_ms: row.int("total_latency_ms")?,
        client_ip: row.opt_text("client_ip")?,
        streamed: row.flag("streamed")?,
        incomplete: row.flag("incomplete")?,
    })
}

/// The counters of `usage_hourly`, `usage_hourly_models` and `usage_daily`, each
/// summed as a column of the same name. The first two and the last are counts of
/// events; the others are sums of the event column of the same name.
pub(crate) const COUNTERS: [&str; 8] = [
    "requests",
    "errors",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "reasoning_tokens",
    "cost_micros",
    "incomplete",
];

pub(crate) fn totals(row: &impl Columns) -> StoreResult<UsageTotals> {
    Ok(UsageTotals {
        requests: row.int("requests")?,
        errors: row.int("errors")?,
        input_tokens: row.int("input_tokens")?,
        cached_input_tokens: row.int("cached_input_tokens")?,
        output_tokens: row.int("output_tokens")?,
        reasoning_tokens: row.int("reasoning_tokens")?,
        cost_micros: row.int("cost_micros")?,
        incomplete: row.int("incomplete")?,
    })
}

/// Totals for a group whose name was selected as `grp`.
pub(crate) fn usage_group(row: &impl Columns) -> StoreResult<UsageGroup> {
    Ok(UsageGroup {
        group: row.text("grp")?,
        totals: totals(row)?,
    })
}

/// Columns selected for a [`Budget`].
pub(crate) const BUDGET_COLUMNS: &str = "scope, scope_id, amount_micros, period, soft_thresholds";

pub(crate) fn budget(row: &impl Columns) -> StoreResult<Budget> {
    let kind = row.text("scope")?;
    let scope = BudgetScope::from_parts(&kind, row.text("scope_id")?)
        .ok_or_else(|| StoreError::Backend(format!("unknown budget scope {kind:?} in storage")))?;
    let period = row.text("period")?;
    Ok(Budget {
        scope,
        amount_micros: Micros(row.int("amount_micros")?),
        period: Period::parse(&period).ok_or_else(|| {
            StoreError::Backend(format!("unknown budget period {period:?} in storage"))
        })?,
        soft_thresholds: decode_json(&row.text("soft_thresholds")?, "budget thresholds")?,
    })
}

/// Columns selected for an [`AuditEvent`]; `detail` must come back as JSON text.
pub(crate) fn audit_event(row: &impl Columns) -> StoreResult<AuditEvent> {
    let detail = row.text("detail")?;
    Ok(AuditEvent {
        id: AuditId::from_trusted(row.text("id")?),
        at: row.int("at")?,
        actor: row.text("actor")?,
        action: row.text("action")?,
        target: row.text("target")?,
        detail: serde_json::from_str(&detail)
            .map_err(|e| StoreError::Backend(format!("decoding stored audit detail: {e}")))?,
        org_id: row.opt_text("org_id")?.map(OrgId::from_trusted),
        ip: row.opt_text("ip")?,
        user_agent: row.opt_text("user_agent")?,
        prev_hash: row.opt_text("prev_hash")?,
        hash: row.opt_text("hash")?,
    })
}

/// One row of `usage_hourly` to add to.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct HourlyDelta<'a> {
    pub project_id: &'a str,
    pub org_id: &'a str,
    pub totals: UsageTotals,
}

/// Sums a batch per (key, hour) so that each rollup row is written once per batch.
/// Sorted by key then hour: every transaction then locks rollup rows in the same
/// order, so concurrent batches cannot deadlock on PostgreSQL.
pub(crate) fn hourly_deltas(events: &[UsageEvent]) -> BTreeMap<(&str, i64), HourlyDelta<'_>> {
    let mut out: BTreeMap<(&str, i64), HourlyDelta<'_>> = BTreeMap::new();
    for e in events {
        let hour = keyward_core::clock::hour_start(e.at);
        out.entry((e.key_id.as_str(), hour))
            .or_insert_with(|| HourlyDelta::of(e))
            .add(e);
    }
    out
}

/// Sums a batch per (key, period start, model) for a rollup `width_ms` wide
/// (an hour or a day), sorted like [`hourly_deltas`].
pub(crate) fn model_deltas(
    events: &[UsageEvent],
    width_ms: i64,
) -> BTreeMap<(&str, i64, &str), HourlyDelta<'_>> {
    let mut out: BTreeMap<(&str, i64, &str), HourlyDelta<'_>> = BTreeMap::new();
    for e in events {
        let start = e.at - e.at.rem_euclid(width_ms);
        out.entry((e.key_id.as_str(), start, e.model.as_str()))
            .or_insert_with(|| HourlyDelta::of(e))
            .add(e);
    }
    out
}

impl<'a> HourlyDelta<'a> {
    /// An empty delta for `e`'s project and org.
    fn of(e: &'a UsageEvent) -> Self {
        HourlyDelta {
            project_id: e.project_id.as_str(),
            org_id: e.org_id.as_str(),
            totals: UsageTotals::default(),
        }
    }

    fn add(&mut self, e: &UsageEvent) {
        let t = &mut self.totals;
        t.requests += 1;
        t.errors += i64::from(e.status >= 400);
        t.input_tokens += e.input_tokens;
        t.cached_input_tokens += e.cached_input_tokens;
        t.output_tokens += e.output_tokens;
        t.reasoning_tokens += e.reasoning_tokens;
        t.cost_micros += e.cost_micros.0;
        t.incomplete += i64::from(e.incomplete);
    }
}

/// The latest use per key, sorted by key id (a stable lock order).
pub(crate) fn latest_uses(last_used: &[(KeyId, i64)]) -> BTreeMap<&str, i64> {
    let mut out: BTreeMap<&str, i64> = BTreeMap::new();
    for (id, at) in last_used {
        let t = out.entry(id.as_str()).or_insert(*at);
        *t = (*t).max(*at);
    }
    out
}

/// Appends ` WHERE …` for the filter's key, project and org, and for `time_col` in
/// `[from, to)`. Only present conditions are written, so each shape of filter gets
/// a plan that uses the matching index. Returns whether it wrote a condition.
pub(crate) fn push_usage_filter<'a>(
    qb: &mut Stmt<'a>,
    filter: &'a UsageFilter,
    time_col: &str,
    from: Option<i64>,
) -> bool {
    let mut first = true;
    let mut and = |qb: &mut Stmt<'a>| {
        qb.push(if first { " WHERE " } else { " AND " });
        first = false;
    };
    if let Some(key) = &filter.key {
        and(qb);
        qb.push("key_id = ").push_bind(key.as_str());
    }
    if let Some(project) = &filter.project {
        and(qb);
        qb.push("project_id = ").push_bind(project.as_str());
    }
    if let Some(org) = &filter.org {
        and(qb);
        qb.push("org_id = ").push_bind(org.as_str());
    }
    if let Some(from) = from {
        and(qb);
        qb.push(time_col).push(" >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        and(qb);
        qb.push(time_col).push(" < ").push_bind(to);
    }
    !first
}

/// Where a rollup query starts: `from` rounded down to the bucket width.
pub(crate) fn rounded_from(filter: &UsageFilter, width_ms: i64) -> Option<i64> {
    filter.from.map(|f| f - f.rem_euclid(width_ms))
}

// The audit chain: what both appending (`resources/audit.rs`) and chaining
// old events at open (`sqlite.rs`, `postgres.rs`) need. The invariant is
// described in `resources/audit.rs`.

/// The chain of events that belong to no organization.
pub const DEPLOYMENT_CHAIN: &str = "deployment";

/// The columns [`audit_event`] decodes.
pub(crate) const AUDIT_COLUMNS: &str =
    "id, at, actor, action, target, CAST(detail AS TEXT) AS detail, \
                       org_id, ip, user_agent, prev_hash, hash";

/// The chain an event of `org` (none: deployment-level) joins. Organization
/// ids start with `org_`, so they never collide with [`DEPLOYMENT_CHAIN`].
pub(crate) fn chain_of(org: Option<&str>) -> &str {
    org.unwrap_or(DEPLOYMENT_CHAIN)
}

/// An event and its detail exactly as the database gives the text back.
pub(crate) fn decode_audit(row: &Row) -> StoreResult<(AuditEvent, String)> {
    Ok((audit_event(row)?, row.text("detail")?))
}

pub(crate) async fn set_audit_head(
    tx: &mut Tx,
    chain: &str,
    id: &str,
    hash: &str,
) -> StoreResult<()> {
    Stmt::new("UPDATE audit_heads SET last_id = $1, last_hash = $2 WHERE chain = $3")
        .bind(id)
        .bind(hash)
        .bind(chain)
        .execute(tx.on())
        .await
        .map_err(backend)?;
    Ok(())
}

/// SHA-256 (lowercase hex) of an event in `chain`, over a versioned,
/// unambiguous encoding: each text field as its byte length (8 bytes, big
/// endian) then its bytes, an optional field as one byte (0 absent, 1
/// present) before that, the time as 8 bytes big endian. `detail` is the
/// stored JSON text, not the decoded value (`event.detail` and `event.hash`
/// are not read).
pub(crate) fn event_hash(chain: &str, event: &AuditEvent, detail: &str) -> String {
    fn text(h: &mut Sha256, s: &str) {
        h.update((s.len() as u64).to_be_bytes());
        h.update(s.as_bytes());
    }
    fn opt(h: &mut Sha256, s: Option<&str>) {
        match s {
            None => h.update([0u8]),
            Some(s) => {
                h.update([1u8]);
                text(h, s);
            }
        }
    }
    let mut h = Sha256::new();
    text(&mut h, "keyward-audit-v1");
    text(&mut h, chain);
    text(&mut h, event.id.as_str());
    h.update(event.at.to_be_bytes());
    text(&mut h, &event.actor);
    text(&mut h, &event.action);
    text(&mut h, &event.target);
    text(&mut h, detail);
    opt(&mut h, event.org_id.as_ref().map(|o| o.as_str()));
    opt(&mut h, event.ip.as_deref());
    opt(&mut h, event.user_agent.as_deref());
    opt(&mut h, event.prev_hash.as_deref());
    hex::encode(h.finalize())
}

/// Chains the events written before the audit chain existed, once, at the
/// first open after the migration that added it (`audit_legacy` says up to
/// which `seq`; the migration could not hash in SQL). They join the
/// deployment chain in insertion order: their organization was never
/// recorded. Called by both backends' `open` after migrating.
pub(crate) async fn chain_legacy_audit(db: &Db) -> StoreResult<()> {
    let mut tx = db.begin().await?;
    // A write first (see `append_audit`), which also claims the marker.
    let Some(max_seq) = Stmt::new("DELETE FROM audit_legacy RETURNING max_seq")
        .optional(tx.on(), |r| r.int("max_seq"))
        .await?
    else {
        return Ok(());
    };
    Stmt::new(
        "INSERT INTO audit_heads (chain, last_id, last_hash) VALUES ($1, NULL, NULL) \
         ON CONFLICT (chain) DO NOTHING",
    )
    .bind(DEPLOYMENT_CHAIN)
    .execute(tx.on())
    .await
    .map_err(backend)?;
    let mut prev = Stmt::new(format!(
        "SELECT last_hash FROM audit_heads WHERE chain = $1{}",
        db.for_update()
    ))
    .bind(DEPLOYMENT_CHAIN)
    .optional(tx.on(), |r| r.opt_text("last_hash"))
    .await?
    .flatten();
    let rows = Stmt::new(format!(
        "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE hash IS NULL AND seq <= $1 ORDER BY seq"
    ))
    .bind(max_seq)
    .fetch_all(tx.on())
    .await
    .map_err(backend)?;
    let mut last = None;
    for row in &rows {
        let (event, detail) = decode_audit(row)?;
        let event = AuditEvent {
            org_id: None,
            prev_hash: prev.clone(),
            ..event
        };
        let hash = event_hash(DEPLOYMENT_CHAIN, &event, &detail);
        Stmt::new("UPDATE audit_events SET org_id = NULL, prev_hash = $1, hash = $2 WHERE id = $3")
            .bind(event.prev_hash.as_deref())
            .bind(&hash)
            .bind(event.id.as_str())
            .execute(tx.on())
            .await
            .map_err(backend)?;
        prev = Some(hash.clone());
        last = Some((event.id, hash));
    }
    if let Some((id, hash)) = last {
        set_audit_head(&mut tx, DEPLOYMENT_CHAIN, id.as_str(), &hash).await?;
    }
    tx.commit().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(key: &KeyId, at: i64, status: u16, input: i64) -> UsageEvent {
        UsageEvent {
            key_id: key.clone(),
            project_id: ProjectId::from_trusted("prj_a".into()),
            org_id: OrgId::from_trusted("org_a".into()),
            at,
            endpoint: "/v1/chat/completions".into(),
            model: "m".into(),
            status,
            input_tokens: input,
            cached_input_tokens: 1,
            output_tokens: 2,
            reasoning_tokens: 0,
            cost_micros: Micros(10),
            upstream_latency_ms: 0,
            total_latency_ms: 0,
            client_ip: None,
            streamed: false,
            incomplete: false,
        }
    }

    #[test]
    fn deltas_sum_per_key_and_hour() {
        let (a, b) = (
            KeyId::from_trusted("key_a".into()),
            KeyId::from_trusted("key_b".into()),
        );
        let events = [
            event(&b, HOUR_MS + 5, 200, 3),
            event(&a, 10, 500, 1),
            event(&a, HOUR_MS - 1, 404, 2),
            event(&a, HOUR_MS, 200, 4),
        ];
        let d = hourly_deltas(&events);
        let keys: Vec<_> = d.keys().copied().collect();
        assert_eq!(keys, [("key_a", 0), ("key_a", HOUR_MS), ("key_b", HOUR_MS)]);
        let first = &d[&("key_a", 0)].totals;
        assert_eq!(
            (
                first.requests,
                first.errors,
                first.input_tokens,
                first.cost_micros
            ),
            (2, 2, 3, 20)
        );
        assert_eq!(d[&("key_a", HOUR_MS)].totals.errors, 0);
    }

    #[test]
    fn latest_use_wins() {
        let a = KeyId::from_trusted("key_a".into());
        let reports = [(a.clone(), 5), (a.clone(), 9), (a, 7)];
        assert_eq!(
            latest_uses(&reports).into_iter().collect::<Vec<_>>(),
            [("key_a", 9)]
        );
    }

    #[test]
    fn hashes_are_stored_lowercase() {
        let h = KeyHash::of("kwk_x");
        assert_eq!(
            canonical_hash(&h.to_hex().to_uppercase()).ok(),
            Some(h.to_hex())
        );
        assert!(matches!(canonical_hash("zz"), Err(StoreError::Backend(_))));
    }

    #[test]
    fn from_rounds_down_to_the_bucket() {
        let f = UsageFilter {
            from: Some(DAY_MS + HOUR_MS + 5),
            ..Default::default()
        };
        assert_eq!(rounded_from(&f, HOUR_MS), Some(DAY_MS + HOUR_MS));
        assert_eq!(rounded_from(&f, DAY_MS), Some(DAY_MS));
    }
}
