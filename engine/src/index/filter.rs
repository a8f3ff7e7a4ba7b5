//! The chunk index's miss filter: a Bloom filter of every chunk id the
//! index holds, kept in memory, so looking up a chunk the store lacks (every
//! chunk of new data) usually does not reach the database.
//!
//! It never answers "absent" for an indexed chunk: ids are added before the
//! index transaction that inserts them (an aborted transaction leaves a
//! harmless extra id), and the filter is only consulted once a scan of the
//! `chunks` tree, started when the filter was made, has added every id
//! that was there (ids inserted meanwhile are added by their insert: a
//! filter is made, and inserts add to it, under one lock). Removed ids stay
//! in it (false positives, never false negatives). Chunk ids are BLAKE3
//! outputs, uniformly distributed, so the bit positions are taken from the
//! id's bytes directly.
//!
//! Sized at 10 bits per id for twice the chunks the index holds when it is
//! made (at least 4 million: 5 MiB): about 1 % false positives at that
//! load. Past it the filter stops answering, and the next lookup or insert
//! makes a new one, sized for the index then, with a new scan.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use crate::cache::lock;
use crate::ids::ChunkId;

/// Bit positions per id.
const PROBES: u64 = 7;
/// Bits per id at the design load.
const BITS_PER_ID: u64 = 10;
/// The smallest design load.
const MIN_IDS: u64 = 4 << 20;

/// A Bloom filter of chunk ids (see the module docs).
pub(crate) struct MissFilter {
    words: Vec<AtomicU64>,
    /// Number of bits: `words.len() * 64`.
    bits: u64,
    /// Ids added (counting repeats), and how many the filter is sized for.
    added: AtomicU64,
    capacity: u64,
    /// Set once the scan of the existing ids is complete.
    ready: AtomicBool,
}

impl MissFilter {
    /// A filter for an index that holds `chunks` ids now.
    pub(crate) fn new(chunks: u64) -> Self {
        let capacity = chunks.saturating_mul(2).max(MIN_IDS);
        let words = (capacity * BITS_PER_ID).div_ceil(64);
        MissFilter {
            words: (0..words).map(|_| AtomicU64::new(0)).collect(),
            bits: words * 64,
            added: AtomicU64::new(0),
            capacity,
            ready: AtomicBool::new(false),
        }
    }

    fn positions(&self, id: &ChunkId) -> impl Iterator<Item = u64> + '_ {
        let b = &id.0;
        let word = |i: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(w)
        };
        // Double hashing over two independent 64-bit words of the id.
        let (h1, h2) = (word(0), word(8) | 1);
        (0..PROBES).map(move |i| h1.wrapping_add(i.wrapping_mul(h2)) % self.bits)
    }

    /// Adds an id.
    pub(crate) fn add(&self, id: &ChunkId) {
        for p in self.positions(id) {
            self.words[(p / 64) as usize].fetch_or(1 << (p % 64), Ordering::Relaxed);
        }
        self.added.fetch_add(1, Ordering::Relaxed);
    }

    /// `false` only when the id is certainly not indexed; `true` when it
    /// may be, or the filter cannot tell (not ready, or over capacity).
    pub(crate) fn may_contain(&self, id: &ChunkId) -> bool {
        if !self.answers() {
            return true;
        }
        self.positions(id)
            .all(|p| self.words[(p / 64) as usize].load(Ordering::Relaxed) & (1 << (p % 64)) != 0)
    }

    /// Whether a "certainly not" from [`MissFilter::may_contain`] can be
    /// trusted: the scan is done and the filter is within its design load.
    pub(crate) fn answers(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.added.load(Ordering::Relaxed) <= self.capacity
    }

    /// Whether more ids were added than it is sized for.
    fn full(&self) -> bool {
        self.added.load(Ordering::Relaxed) > self.capacity
    }

    /// Marks the scan of the existing ids complete.
    pub(crate) fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// Stops answering, as past the design load (tests).
    #[cfg(test)]
    pub(crate) fn stop_answering(&self) {
        self.added.store(self.capacity + 1, Ordering::Relaxed);
    }

    /// Memory held, in bytes.
    #[cfg(feature = "testing")]
    pub(crate) fn bytes(&self) -> u64 {
        self.bits / 8
    }
}

/// An index's miss filter, made by its first use (and again when it is
/// full), and the scan that adds the ids indexed before it was made.
pub(crate) struct FilterSlot {
    current: RwLock<Option<Arc<MissFilter>>>,
    /// Held by every chunk insert and while a filter is made: inserts are
    /// serialized, and none is in flight when a scan starts.
    adding: Mutex<()>,
    /// The current filter's scan, and its stop flag.
    scan: Mutex<Option<(Arc<AtomicBool>, JoinHandle<()>)>>,
}

/// Every indexed id, for a scan (`None`: an unreadable key, and the filter
/// then never answers).
pub(crate) type Ids = Box<dyn Iterator<Item = Option<ChunkId>> + Send>;

/// How a filter is sized and filled: the number of ids indexed now, and
/// every indexed id (iterated on the scan's thread).
pub(crate) type Source<'a> = &'a dyn Fn() -> (u64, Ids);

impl FilterSlot {
    pub(crate) fn new() -> Self {
        FilterSlot {
            current: RwLock::new(None),
            adding: Mutex::new(()),
            scan: Mutex::new(None),
        }
    }

    /// The filter for a lookup. Until its scan is done it cannot tell, and
    /// every lookup reads the database.
    pub(crate) fn get(&self, source: Source<'_>) -> Arc<MissFilter> {
        if let Some(f) = self.current() {
            if !f.full() {
                return f;
            }
        }
        self.for_insert(source).1
    }

    /// For an insert: holds the insert lock and gives the filter to add
    /// the ids to before they are inserted (made now if there is none or it
    /// is full).
    pub(crate) fn for_insert(&self, source: Source<'_>) -> (MutexGuard<'_, ()>, Arc<MissFilter>) {
        let adding = lock(&self.adding);
        if let Some(f) = self.current() {
            if !f.full() {
                return (adding, f);
            }
        }
        // No insert is in flight (the lock is held): the scan sees every id
        // inserted so far, and every later insert adds to the new filter.
        let (chunks, keys) = source();
        let filter = Arc::new(MissFilter::new(chunks));
        let stop = Arc::new(AtomicBool::new(false));
        let (f, halt) = (filter.clone(), stop.clone());
        let scan = std::thread::Builder::new()
            .name("tessera-index-filter".into())
            .spawn(move || {
                for id in keys {
                    if halt.load(Ordering::Relaxed) {
                        return;
                    }
                    match id {
                        Some(id) => f.add(&id),
                        None => return,
                    }
                }
                f.set_ready();
            });
        // A scan that cannot start leaves a filter that never answers.
        let old = std::mem::replace(&mut *lock(&self.scan), scan.ok().map(|h| (stop, h)));
        stop_scan(old);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(filter.clone());
        (adding, filter)
    }

    fn current(&self) -> Option<Arc<MissFilter>> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

fn stop_scan(scan: Option<(Arc<AtomicBool>, JoinHandle<()>)>) {
    if let Some((stop, scan)) = scan {
        stop.store(true, Ordering::Relaxed);
        let _ = scan.join();
    }
}

impl Drop for FilterSlot {
    fn drop(&mut self) {
        stop_scan(lock(&self.scan).take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_false_negatives_and_few_false_positives() {
        let f = MissFilter::new(100_000);
        let ids: Vec<ChunkId> = (0u64..100_000)
            .map(|i| ChunkId::of(&i.to_le_bytes()))
            .collect();
        for id in &ids {
            f.add(id);
        }
        // Not ready: it cannot tell.
        assert!(f.may_contain(&ChunkId::of(b"absent")));
        f.set_ready();
        assert!(ids.iter().all(|id| f.may_contain(id)));
        let fp = (100_000u64..200_000)
            .filter(|i| f.may_contain(&ChunkId::of(&i.to_le_bytes())))
            .count();
        assert!(fp < 1000, "{fp} false positives in 100000");
    }

    #[test]
    fn over_capacity_it_stops_answering() {
        let f = MissFilter::new(0);
        f.set_ready();
        assert!(!f.may_contain(&ChunkId::of(b"x")));
        f.added.store(f.capacity + 1, Ordering::Relaxed);
        assert!(f.may_contain(&ChunkId::of(b"x")));
    }
}
