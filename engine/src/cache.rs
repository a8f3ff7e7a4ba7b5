//! A small least-recently-used map for the store's read caches (open packs,
//! decoded recipes). Bounded by entry count: an evicted pack's mapping is
//! released as soon as no reader holds it, so a store with thousands of
//! packs keeps at most `capacity` of them mapped. Optionally bounded by
//! weight too (decoded recipes by their size: one of a 100 GB file holds
//! tens of megabytes).

use std::collections::HashMap;
use std::hash::Hash;

/// An LRU map of at most `capacity` entries (at least 1).
#[derive(Debug)]
pub(crate) struct Lru<K, V> {
    capacity: usize,
    /// Most total weight kept.
    max_weight: u64,
    weight: u64,
    tick: u64,
    /// Value, last use, weight.
    map: HashMap<K, (V, u64, u64)>,
}

impl<K: Eq + Hash + Clone, V: Clone> Lru<K, V> {
    /// An empty cache.
    pub(crate) fn new(capacity: usize) -> Self {
        Self::with_max_weight(capacity, u64::MAX)
    }

    /// An empty cache of at most `capacity` entries weighing at most
    /// `max_weight` in all (see [`Lru::insert_weighted`]).
    pub(crate) fn with_max_weight(capacity: usize, max_weight: u64) -> Self {
        Lru {
            capacity: capacity.max(1),
            max_weight,
            weight: 0,
            tick: 0,
            map: HashMap::new(),
        }
    }

    /// The value for `k`, marked as just used.
    pub(crate) fn get(&mut self, k: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(k).map(|(v, t, _)| {
            *t = tick;
            v.clone()
        })
    }

    /// Inserts `v`, evicting the least recently used entry when full.
    pub(crate) fn insert(&mut self, k: K, v: V) {
        self.insert_weighted(k, v, 0);
    }

    /// Inserts `v` of weight `w`, evicting the least recently used entries
    /// until it fits; a value heavier than the whole cache is not kept.
    pub(crate) fn insert_weighted(&mut self, k: K, v: V, w: u64) {
        self.remove(&k);
        if w > self.max_weight {
            return;
        }
        while !self.map.is_empty()
            && (self.map.len() >= self.capacity || self.weight.saturating_add(w) > self.max_weight)
        {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, (_, t, _))| *t)
                .map(|(k, _)| k.clone());
            match oldest {
                Some(old) => self.remove(&old),
                None => break,
            }
        }
        self.tick += 1;
        self.weight += w;
        self.map.insert(k, (v, self.tick, w));
    }

    /// Forgets `k`.
    pub(crate) fn remove(&mut self, k: &K) {
        if let Some((_, _, w)) = self.map.remove(k) {
            self.weight -= w;
        }
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

    #[test]
    fn weight_is_bounded_too() {
        let mut c = Lru::with_max_weight(10, 100);
        c.insert_weighted(1, "a", 60);
        c.insert_weighted(2, "b", 30);
        assert_eq!(c.len(), 2);
        // 50 more: the oldest (60) goes.
        c.insert_weighted(3, "c", 50);
        assert_eq!(
            (c.get(&1), c.get(&2), c.get(&3)),
            (None, Some("b"), Some("c"))
        );
        // Heavier than the whole cache: not kept, nothing evicted.
        c.insert_weighted(4, "d", 101);
        assert_eq!((c.get(&4), c.len()), (None, 2));
        // Replacing gives the old weight back.
        c.insert_weighted(3, "c2", 70);
        assert_eq!((c.get(&2), c.get(&3)), (Some("b"), Some("c2")));
        c.remove(&2);
        c.remove(&3);
        c.insert_weighted(5, "e", 100);
        assert_eq!(c.get(&5), Some("e"));
    }
}
