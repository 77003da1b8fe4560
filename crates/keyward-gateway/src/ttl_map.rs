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
    /// Bumped by every removal, so that a value read from storage before a
    /// removal is not stored after it (see [`TtlMap::insert_unless_removed`]).
    generation: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    /// An empty map.
    pub fn new(ttl_ms: i64) -> Self {
        Self {
            entries: RwLock::new(Entries {
                map: HashMap::default(),
                next_sweep: SWEEP_FLOOR,
                generation: 0,
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
        entries.store(key, value, now_ms, self.ttl_ms);
    }

    /// The removal count, to read before loading a value from storage.
    pub fn generation(&self) -> u64 {
        self.entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Stores a value loaded from storage after [`TtlMap::generation`] answered
    /// `generation`, unless something was removed since: the value may predate
    /// that change (a session read as the user logs out everywhere) and must
    /// not outlive it in the map. Returns whether it was stored.
    pub fn insert_unless_removed(&self, key: K, value: V, now_ms: i64, generation: u64) -> bool {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.generation != generation {
            return false;
        }
        entries.store(key, value, now_ms, self.ttl_ms);
        true
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
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.generation += 1;
        entries.map.remove(key);
    }

    /// Forgets every value for which `stale` says so.
    pub fn remove_where(&self, mut stale: impl FnMut(&K, &V) -> bool) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        entries.generation += 1;
        entries.map.retain(|k, (v, _)| !stale(k, v));
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.remove_where(|_, _| true);
    }
}

impl<K: Eq + Hash, V> Entries<K, V> {
    fn store(&mut self, key: K, value: V, now_ms: i64, ttl_ms: i64) {
        if self.map.len() >= self.next_sweep {
            self.map.retain(|_, (_, at)| now_ms - *at < ttl_ms);
            self.next_sweep = (self.map.len() * 2).max(SWEEP_FLOOR);
        }
        self.map.insert(key, (value, now_ms));
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
    fn a_value_read_before_a_removal_is_not_stored_after_it() {
        let m = super::TtlMap::new(100);
        let before = m.generation();
        m.remove(&"a");
        assert!(!m.insert_unless_removed("a", 1, 0, before));
        assert_eq!(m.get(&"a", 1), None);
        assert!(m.insert_unless_removed("a", 2, 0, m.generation()));
        assert_eq!(m.get(&"a", 1), Some(2));
        m.insert("b", 3, 0);
        m.remove_where(|_, v| *v == 2);
        assert_eq!((m.get(&"a", 1), m.get(&"b", 1)), (None, Some(3)));
        m.clear();
        assert!(m.is_empty());
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
