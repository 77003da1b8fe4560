//! Turning a presented key into a key record, or a refusal that says why.
//!
//! Order matters for cost: the checksum rejects made-up and mistyped keys with no
//! storage read; the cache answers hot keys; storage answers the rest.

use crate::error::GatewayError;
use crate::limits::admission::Caller;
use crate::state::AppState;
use keyward_core::{KeyFormat, KeyKind, KeyParseError, ParsedKey};
use keyward_store::{KeyRecord, KeyStatus};
use std::sync::{Arc, Mutex, PoisonError};
use subtle::ConstantTimeEq;

/// The last key a connection presented, parsed. A keep-alive client sends the
/// same key with every request, and parsing it (checksum and SHA-256) was about
/// 6 % of the instructions of a proxied request. Only the parse is remembered:
/// the record is looked up in the key cache, so a revocation is seen, on every
/// request. The raw key is held as long as the connection (as hyper's read
/// buffer holds it), compared in constant time, and dropped with the connection.
#[derive(Default)]
pub struct ParseMemo(Mutex<Option<(Box<str>, ParsedKey)>>);

impl ParseMemo {
    fn parse(&self, format: &KeyFormat, presented: &str) -> Result<ParsedKey, KeyParseError> {
        let mut slot = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((key, parsed)) = slot.as_ref() {
            if bool::from(key.as_bytes().ct_eq(presented.as_bytes())) {
                return Ok(parsed.clone());
            }
        }
        let parsed = format.parse(presented)?;
        *slot = Some((presented.into(), parsed.clone()));
        Ok(parsed)
    }
}

/// The key (and, for an ephemeral token, its parent) behind `presented`, if it
/// may call the gateway now. A token whose parent is no longer usable is refused:
/// revoking a key revokes its tokens.
///
/// A token also dies with the parent secret it was minted with: once that
/// secret is rotated out (at the end of its grace period) or deleted, the token
/// is refused whatever the parent's status is later, so rotating a leaked key
/// back to `active` does not revive it. The secret's state is read with the
/// token itself (`KeyRecord::minted_from`, cached with it), so the check costs
/// no lookup; whoever ends secrets drops the tokens' cache entries.
/// `memo`, when given, is the connection's [`ParseMemo`].
pub async fn verify_caller(
    state: &AppState,
    presented: &str,
    memo: Option<&ParseMemo>,
) -> Result<Caller, GatewayError> {
    let key = verify_key(state, presented, memo).await?;
    let Some(parent_id) = key.parent_id.clone() else {
        return Ok(Caller { key, parent: None });
    };
    let now = state.clock.now_ms();
    // Fails closed: a token record read without its binding is refused too.
    if !key.minted_from.is_some_and(|m| m.is_live(now)) {
        return Err(GatewayError::InvalidKey(format!(
            "This token ({}) was minted with a secret of its parent key that no longer works (rotated out, or the key was deleted); ask for a new token.",
            key.id
        )));
    }
    let parent = match state.keys_by_id.get(&parent_id, now) {
        Some(p) => p,
        None => {
            let generation = state.keys_by_id.generation();
            let p = state.store.get_key(&parent_id).await.map_err(|e| {
                tracing::error!(error = %e, "parent key lookup failed");
                GatewayError::Internal
            })?;
            let p = Arc::new(p.ok_or_else(|| {
                GatewayError::InvalidKey("This token's parent key no longer exists.".into())
            })?);
            state
                .keys_by_id
                .insert_unless_removed(parent_id, p.clone(), now, generation);
            p
        }
    };
    usable(&parent, now).map_err(|_| {
        GatewayError::InvalidKey(format!(
            "This token ({}) was derived from a key that is no longer active.",
            key.id
        ))
    })?;
    Ok(Caller {
        key,
        parent: Some(parent),
    })
}

/// The key record behind `presented`, if it may call the gateway now.
pub async fn verify_key(
    state: &AppState,
    presented: &str,
    memo: Option<&ParseMemo>,
) -> Result<Arc<KeyRecord>, GatewayError> {
    let format = &state.config.key_format;
    let parsed = match memo {
        Some(memo) => memo.parse(format, presented),
        None => format.parse(presented),
    };
    let parsed = parsed.map_err(|e| match e {
        KeyParseError::Prefix => GatewayError::InvalidKey(format!(
            "Incorrect API key provided: this gateway accepts only its own keys (prefix {}). Use the keyward key you were given, not an upstream provider key.",
            state.config.key_format.prefix(KeyKind::Standard)
        )),
        KeyParseError::Malformed => GatewayError::InvalidKey("Incorrect API key provided: the key is malformed (wrong length or characters).".into()),
        KeyParseError::Checksum => GatewayError::InvalidKey("Incorrect API key provided: the key's checksum does not match; it may have been mistyped or truncated.".into()),
    })?;
    if parsed.kind == KeyKind::Admin {
        return Err(GatewayError::InvalidKey(
            "Admin keys manage keyward and cannot call the gateway; use a standard key.".into(),
        ));
    }
    let now = state.clock.now_ms();
    let record = match state.keys.get(&parsed.hash, now) {
        Some(r) => {
            state.metrics.key_cache_hits.inc();
            r
        }
        None => {
            state.metrics.key_cache_misses.inc();
            let generation = state.keys.generation();
            let found = state.store.key_by_hash(&parsed.hash).await.map_err(|e| {
                tracing::error!(error = %e, "key lookup failed");
                GatewayError::Internal
            })?;
            let Some(record) = found else {
                return Err(GatewayError::InvalidKey(
                    "Incorrect API key provided: no such key exists.".into(),
                ));
            };
            let record = Arc::new(record);
            state
                .keys
                .insert_unless_invalidated(parsed.hash, record.clone(), now, generation);
            record
        }
    };
    // A token and a key are not interchangeable even if their hashes were.
    if (parsed.kind == KeyKind::Ephemeral) != record.parent_id.is_some() {
        return Err(GatewayError::InvalidKey(
            "Incorrect API key provided: no such key exists.".into(),
        ));
    }
    usable(&record, now)?;
    Ok(record)
}

/// Refuses keys that exist but may not be used, saying which state they are in.
fn usable(record: &KeyRecord, now: i64) -> Result<(), GatewayError> {
    let refuse = |why: &str| {
        Err(GatewayError::InvalidKey(format!(
            "This API key ({}) {why}",
            record.id
        )))
    };
    match record.status {
        KeyStatus::Active => {}
        KeyStatus::Revoked => return refuse("has been revoked."),
        KeyStatus::Expired => return refuse("has expired."),
        KeyStatus::Suspended => return refuse("is suspended by an administrator."),
        KeyStatus::Leaked => {
            return refuse("was disabled because it was found exposed. See the key's audit log for where it was found, and rotate it.")
        }
    }
    if record.expires_at.is_some_and(|t| now >= t) {
        return refuse("has expired.");
    }
    if record.secret_expires_at.is_some_and(|t| now >= t) {
        return refuse("was rotated and its grace period has ended; use the new key.");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memo_answers_only_for_the_same_key() {
        let format = KeyFormat::default();
        let memo = ParseMemo::default();
        let a = format.generate(KeyKind::Standard);
        let b = format.generate(KeyKind::Ephemeral);
        let a = a.expose();
        assert_eq!(memo.parse(&format, a), format.parse(a));
        assert_eq!(
            memo.parse(&format, a),
            format.parse(a),
            "answered from the memo"
        );
        // Another key on the same connection is parsed, whatever came before:
        // a tampered copy of the remembered key fails its checksum.
        let mut tampered = a.to_owned();
        let last = tampered.pop().unwrap();
        tampered.push(if last == 'A' { 'B' } else { 'A' });
        assert_eq!(memo.parse(&format, &tampered), Err(KeyParseError::Checksum));
        assert_eq!(
            memo.parse(&format, &a[..a.len() - 1]),
            Err(KeyParseError::Malformed)
        );
        assert_eq!(memo.parse(&format, b.expose()), format.parse(b.expose()));
        assert_eq!(memo.parse(&format, a), format.parse(a));
    }
}
