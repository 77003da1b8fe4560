//! A small map whose entries are trusted for a fixed time, for the records the
//! gateway reads on every request (projects, parent keys, budgets).

use crate::FastMap as HashMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::RwLock;

/// Values by key, each fresh for `ttl_ms` after it was stored.
///
/// Stale entries are swept out when the map has doubled since the last sweep
/// (at most every [`SWEEP_FLOOR`] entries), so that keys seen once, such as
/// ephemeral tokens, do not stay forever; a sweep costs O(1) per insert,
/// amortized.
pub struct TtlMap<K, V> {
    entries: RwLock<Entries<K, V>>,
    ttl_ms: i64,
}

/// Below this many entries the map is never swept.
const SWEEP_FLOOR: usize = 1024;

struct Entries<K, V> {
    map: HashMap<K, (V, i64)>,
    next_sweep: usize,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    /// An empty map.
    pub fn new(ttl_ms: i64) -> Self {
        Self {
            entries: RwLock::new(Entries {
                map: HashMap::default(),
                next_sweep: SWEEP_FLOOR,
            }),
            ttl_ms,
        }
    }

    /// The value, if stored less than `ttl_ms` before `now_ms`.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q, now_ms: i64) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .map
            .get(key)
            .filter(|(_, at)| now_ms - at < self.ttl_ms)
            .map(|(v, _)| v.clone())
    }

    /// Stores a value.
    pub fn insert(&self, key: K, value: V, now_ms: i64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.map.len() >= entries.next_sweep {
            let ttl_ms = self.ttl_ms;
            entries.map.retain(|_, (_, at)| now_ms - *at < ttl_ms);
            entries.next_sweep = (entries.map.len() * 2).max(SWEEP_FLOOR);
        }
        entries.map.insert(key, (value, now_ms));
    }

    /// How many entries are held, fresh or not (for tests of eviction).
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets a value (after a change made through this node).
    pub fn remove<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .map
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn entries_expire_and_can_be_removed() {
        let m = super::TtlMap::new(100);
        m.insert("a", 1, 0);
        assert_eq!(m.get(&"a", 99), Some(1));
        assert_eq!(m.get(&"a", 100), None);
        m.insert("b", 2, 0);
        m.remove(&"b");
        assert_eq!(m.get(&"b", 1), None);
    }

    #[test]
    fn stale_entries_are_swept_as_the_map_grows() {
        let m = super::TtlMap::new(100);
        for i in 0..100_000 {
            m.insert(i, i, i);
        }
        assert!(m.len() < 2 * super::SWEEP_FLOOR, "{} entries kept", m.len());
        assert_eq!(m.get(&99_999, 99_999), Some(99_999));
    }
}
