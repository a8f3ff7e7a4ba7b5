//! A small least-recently-used map for the store's read caches (open packs,
//! decoded recipes). Bounded by entry count: an evicted pack's mapping is
//! released as soon as no reader holds it, so a store with thousands of
//! packs keeps at most `capacity` of them mapped.

use std::collections::HashMap;
use std::hash::Hash;

/// An LRU map of at most `capacity` entries (at least 1).
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    map: HashMap<K, (V, u64)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Lru<K, V> {
    /// An empty cache.
    pub(crate) fn new(capacity: usize) -> Self {
        Lru {
            capacity: capacity.max(1),
            tick: 0,
            map: HashMap::new(),
        }
    }

    /// The value for `k`, marked as just used.
    pub(crate) fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|(v, t)| {
            *t = tick;
            v.clone()
        })
    }

    /// Inserts `v`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        if !self.map.contains_key(&k) && self.map.len() >= self.capacity {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| k.clone());
            if let Some(old) = oldest {
                self.map.remove(&old);
            }
        }
        self.tick += 1;
        self.map.insert(k, (v, self.tick));
    }

    /// Forgets `k`.
    pub(crate) fn remove(&mut self, k: &K) {
        self.map.remove(k);
    }

    /// Number of entries.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }
}

/// Locks a cache (or any) mutex. A panic while holding one of the engine's
/// locks leaves plain data behind (no invariant spans a panic point), so a
/// poisoned mutex is still usable.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn evicts_the_least_recently_used() {
        let mut c = Lru::new(2);
        c.insert(1, "a");
        c.insert(2, "b");
        assert_eq!(c.get(&1), Some("a")); // 2 is now the oldest
        c.insert(3, "c");
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&2), None);
        assert_eq!(c.get(&1), Some("a"));
        assert_eq!(c.get(&3), Some("c"));
        c.insert(3, "c2"); // replacing does not evict
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(&3), Some("c2"));
    }
}
