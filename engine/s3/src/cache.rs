//! A byte-bounded LRU of fetched blocks, shared by a store's read handles
//! and keyed by (object version, aligned block index). The object version
//! is the key plus its ETag, so a replaced object never serves the old
//! bytes; the store also drops a key's blocks when it replaces or deletes it.
//! Under it, optionally, an on-disk tier ([`DiskCache`]) that outlives the
//! process: a block missing in memory is looked for there before it is
//! fetched, and every fetched block is written there too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::counters::Counters;
use crate::disk::DiskCache;
use crate::version::ObjectVersion;

type BlockKey = (ObjectVersion, u64);

#[derive(Default)]
struct State {
    map: HashMap<BlockKey, (Bytes, u64)>,
    order: BTreeMap<u64, BlockKey>,
    bytes: u64,
    tick: u64,
}

/// The block cache.
pub(crate) struct BlockCache {
    bound: u64,
    state: Mutex<State>,
    disk: Option<DiskCache>,
    counters: Arc<Counters>,
}

impl std::fmt::Debug for BlockCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockCache")
            .field("bound", &self.bound)
            .field("disk", &self.disk)
            .finish()
    }
}

impl BlockCache {
    /// A cache holding at most `bound` bytes of blocks in memory (0:
    /// nothing), over `disk` if given; disk hits are counted in `counters`.
    pub(crate) fn new(bound: u64, disk: Option<DiskCache>, counters: Arc<Counters>) -> Self {
        BlockCache {
            bound,
            state: Mutex::new(State::default()),
            disk,
            counters,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves a consistent map (every
        // mutation below completes before it could panic), so poisoning is
        // ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether anything can be cached at all.
    pub(crate) fn enabled(&self) -> bool {
        self.bound > 0 || self.disk.is_some()
    }

    /// The block, if cached in memory or on disk (and marks it most
    /// recently used; a block from disk is kept in memory too).
    pub(crate) fn get(&self, v: &ObjectVersion, block: u64) -> Option<Bytes> {
        if let Some(b) = self.get_mem(v, block) {
            return Some(b);
        }
        let data = self.disk.as_ref()?.get(v, block)?;
        self.counters
            .disk_hits
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.insert_mem(v, block, data.clone());
        Some(data)
    }

    fn get_mem(&self, v: &ObjectVersion, block: u64) -> Option<Bytes> {
        let mut s = self.lock();
        let s = &mut *s;
        let key = (v.clone(), block);
        let (data, tick) = s.map.get_mut(&key)?;
        let old = *tick;
        s.tick += 1;
        *tick = s.tick;
        let data = data.clone();
        s.order.remove(&old);
        s.order.insert(s.tick, key);
        Some(data)
    }

    /// Whether the block is cached (without touching its recency).
    pub(crate) fn contains(&self, v: &ObjectVersion, block: u64) -> bool {
        self.lock().map.contains_key(&(v.clone(), block))
            || self.disk.as_ref().is_some_and(|d| d.contains(v, block))
    }

    /// Caches a fetched block, in memory (evicting the least recently used
    /// ones past the bound) and on disk.
    pub(crate) fn insert(&self, v: &ObjectVersion, block: u64, data: Bytes) {
        if let Some(d) = &self.disk {
            d.insert(v, block, &data);
        }
        self.insert_mem(v, block, data);
    }

    fn insert_mem(&self, v: &ObjectVersion, block: u64, data: Bytes) {
        let len = data.len() as u64;
        if len > self.bound {
            return;
        }
        let mut s = self.lock();
        let s = &mut *s;
        let key = (v.clone(), block);
        s.tick += 1;
        if let Some((old, tick)) = s.map.insert(key.clone(), (data, s.tick)) {
            s.bytes -= old.len() as u64;
            s.order.remove(&tick);
        }
        s.order.insert(s.tick, key);
        s.bytes += len;
        while s.bytes > self.bound {
            let Some((_, oldest)) = s.order.pop_first() else {
                break;
            };
            if let Some((d, _)) = s.map.remove(&oldest) {
                s.bytes -= d.len() as u64;
            }
        }
    }

    /// Drops every cached block of every version of `key`.
    pub(crate) fn invalidate(&self, key: &str) {
        let mut s = self.lock();
        let s = &mut *s;
        let gone: Vec<(BlockKey, u64)> = s
            .map
            .iter()
            .filter(|((v, _), _)| &*v.key == key)
            .map(|(k, (_, t))| (k.clone(), *t))
            .collect();
        for (k, t) in gone {
            if let Some((d, _)) = s.map.remove(&k) {
                s.bytes -= d.len() as u64;
            }
            s.order.remove(&t);
        }
    }

    /// Bytes cached in memory.
    pub(crate) fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    /// Bytes cached on disk (0 without a disk tier).
    pub(crate) fn disk_bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, DiskCache::bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, etag: &str) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            etag: etag.into(),
        }
    }

    #[test]
    fn evicts_least_recently_used_past_the_byte_bound() {
        let c = BlockCache::new(10, None, Arc::default());
        let a = v("a", "1");
        c.insert(&a, 0, Bytes::from_static(b"0000"));
        c.insert(&a, 1, Bytes::from_static(b"1111"));
        assert!(c.get(&a, 0).is_some()); // 1 is now the oldest
        c.insert(&a, 2, Bytes::from_static(b"2222"));
        assert_eq!(c.bytes(), 8);
        assert!(c.get(&a, 1).is_none());
        assert_eq!(c.get(&a, 0).as_deref(), Some(&b"0000"[..]));
        assert_eq!(c.get(&a, 2).as_deref(), Some(&b"2222"[..]));
        // Versions are distinct; a block larger than the bound is not kept.
        assert!(c.get(&v("a", "2"), 0).is_none());
        c.insert(&a, 3, Bytes::from(vec![0u8; 11]));
        assert!(!c.contains(&a, 3));
        c.insert(&v("b", "1"), 0, Bytes::from_static(b"b"));
        c.invalidate("a");
        assert_eq!(c.bytes(), 1);
        assert!(c.get(&a, 0).is_none());
        assert!(c.contains(&v("b", "1"), 0));
    }
}
