//! A small map whose entries are trusted for a fixed time, for the records the
//! gateway reads on every request (projects, parent keys, budgets).

use crate::FastMap as HashMap;
use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::RwLock;

/// Values by key, each fresh for `ttl_ms` after it was stored.
pub struct TtlMap<K, V> {
    entries: RwLock<HashMap<K, (V, i64)>>,
    ttl_ms: i64,
}

impl<K: Eq + Hash + Clone, V: Clone> TtlMap<K, V> {
    /// An empty map.
    pub fn new(ttl_ms: i64) -> Self {
        Self {
            entries: RwLock::default(),
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
            .get(key)
            .filter(|(_, at)| now_ms - at < self.ttl_ms)
            .map(|(v, _)| v.clone())
    }

    /// Stores a value.
    pub fn insert(&self, key: K, value: V, now_ms: i64) {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, (value, now_ms));
    }

    /// Forgets a value (after a change made through this node).
    pub fn remove<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
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
}
