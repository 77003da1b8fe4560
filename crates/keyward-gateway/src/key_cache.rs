//! The key cache: a hot key costs no storage read.
//!
//! Entries are keyed by the key's SHA-256 and also indexed by key id, so a revoke
//! (which knows only the id) drops every cached secret of that key at once.
//! Entries older than `ttl` are re-read from storage: this bounds how long another
//! node's revocation can go unseen when no broadcast channel is configured.

use crate::FastMap as HashMap;
use keyward_core::{KeyHash, KeyId};
use keyward_store::KeyRecord;
use std::sync::{Arc, RwLock};

struct Entry {
    record: Arc<KeyRecord>,
    loaded_at: i64,
}

#[derive(Default)]
struct Inner {
    by_hash: HashMap<KeyHash, Entry>,
    by_id: HashMap<KeyId, Vec<KeyHash>>,
    /// Bumped by every invalidation (see [`KeyCache::insert_unless_invalidated`]).
    generation: u64,
}

impl Inner {
    fn store(&mut self, hash: KeyHash, record: Arc<KeyRecord>, now_ms: i64) {
        let hashes = self.by_id.entry(record.id.clone()).or_default();
        if !hashes.contains(&hash) {
            hashes.push(hash);
        }
        self.by_hash.insert(
            hash,
            Entry {
                record,
                loaded_at: now_ms,
            },
        );
    }
}

/// Cached key records by secret hash.
pub struct KeyCache {
    inner: RwLock<Inner>,
    ttl_ms: i64,
}

impl KeyCache {
    /// A cache whose entries are trusted for `ttl_ms` milliseconds.
    pub fn new(ttl_ms: i64) -> Self {
        Self {
            inner: RwLock::default(),
            ttl_ms,
        }
    }

    /// The cached record for `hash`, if present and fresh at `now_ms`.
    pub fn get(&self, hash: &KeyHash, now_ms: i64) -> Option<Arc<KeyRecord>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let e = inner.by_hash.get(hash)?;
        (now_ms - e.loaded_at < self.ttl_ms).then(|| e.record.clone())
    }

    /// Caches `record` as the owner of `hash`.
    pub fn insert(&self, hash: KeyHash, record: Arc<KeyRecord>, now_ms: i64) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.store(hash, record, now_ms);
    }

    /// The invalidation count, to read before looking a key up in storage.
    pub fn generation(&self) -> u64 {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Caches `record`, read from storage after [`KeyCache::generation`]
    /// answered `generation`, unless a key was invalidated since: the record
    /// may be from before a revocation this node (or another, through the
    /// cluster's bus) has just applied, and caching it would let the revoked
    /// key through for a whole TTL. Returns whether it was cached.
    pub fn insert_unless_invalidated(
        &self,
        hash: KeyHash,
        record: Arc<KeyRecord>,
        now_ms: i64,
        generation: u64,
    ) -> bool {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        if inner.generation != generation {
            return false;
        }
        inner.store(hash, record, now_ms);
        true
    }

    /// Forgets every secret of key `id`; the next request reads storage.
    pub fn invalidate(&self, id: &KeyId) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        if let Some(hashes) = inner.by_id.remove(id) {
            for h in hashes {
                inner.by_hash.remove(&h);
            }
        }
    }

    /// Forgets every key (a node that may have missed invalidations).
    pub fn clear(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.generation += 1;
        inner.by_hash.clear();
        inner.by_id.clear();
    }

    /// Number of cached secrets.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .by_hash
            .len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyward_core::{OrgId, ProjectId};
    use keyward_store::KeyStatus;

    fn record(id: &KeyId) -> Arc<KeyRecord> {
        Arc::new(KeyRecord {
            id: id.clone(),
            project_id: ProjectId::generate(),
            org_id: OrgId::generate(),
            name: "k".into(),
            hint: "kwk_…abcd".into(),
            status: KeyStatus::Active,
            tags: vec![],
            created_by: None,
            created_at: 0,
            last_used_at: None,
            revoked_at: None,
            expires_at: None,
            parent_id: None,
            policy: Default::default(),
            rotated_at: None,
            secret_expires_at: None,
            minted_from: None,
        })
    }

    #[test]
    fn invalidate_drops_every_secret_of_the_key() {
        let cache = KeyCache::new(1_000);
        let id = KeyId::generate();
        let (a, b) = (KeyHash::of("a"), KeyHash::of("b"));
        cache.insert(a, record(&id), 0);
        cache.insert(b, record(&id), 0);
        let other = KeyId::generate();
        cache.insert(KeyHash::of("c"), record(&other), 0);
        assert!(cache.get(&a, 10).is_some());
        cache.invalidate(&id);
        assert!(cache.get(&a, 10).is_none());
        assert!(cache.get(&b, 10).is_none());
        assert!(cache.get(&KeyHash::of("c"), 10).is_some());
    }

    #[test]
    fn a_record_read_before_an_invalidation_is_not_cached_after_it() {
        let cache = KeyCache::new(1_000);
        let id = KeyId::generate();
        let before = cache.generation();
        cache.invalidate(&KeyId::generate());
        assert!(!cache.insert_unless_invalidated(KeyHash::of("a"), record(&id), 0, before));
        assert!(cache.get(&KeyHash::of("a"), 1).is_none());
        let now = cache.generation();
        assert!(cache.insert_unless_invalidated(KeyHash::of("a"), record(&id), 0, now));
        assert!(cache.get(&KeyHash::of("a"), 1).is_some());
        cache.clear();
        assert!(cache.is_empty());
    }

    #[test]
    fn entries_expire_after_ttl() {
        let cache = KeyCache::new(1_000);
        let id = KeyId::generate();
        cache.insert(KeyHash::of("a"), record(&id), 0);
        assert!(cache.get(&KeyHash::of("a"), 999).is_some());
        assert!(cache.get(&KeyHash::of("a"), 1_000).is_none());
    }
}
