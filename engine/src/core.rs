//! The state every operation of an open store shares: its storage, index,
//! options and config, the read caches, the shared open pack, and whether
//! an earlier failure poisoned it. The operations (`ingest`, `read`,
//! `refs`, `verify`, `recover`) work on a `&Core`; the `Store` façade owns
//! it; nothing here calls back into them.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::cache::{lock, Lru};
use crate::error::{Error, Result};
use crate::format::{decode_clean, encode_clean, CleanRecord, StoreConfig};
use crate::ids::FileId;
use crate::index::Index;
use crate::layout::Layout;
use crate::local::LockGuard;
use crate::options::StoreOptions;
use crate::pack::PackCache;
use crate::packwriter::PackWriter;
use crate::paths::{CLEAN, DIRTY, REFS};
use crate::report::Problem;
use crate::report::{CatchUpReason, Recovery};
use crate::storage::{ObjectStore, PutMode};

/// A node's copy of the condemned packs and when it was read.
pub(crate) type CondemnedCopy = Mutex<
    Option<(
        std::time::Instant,
        Arc<std::collections::HashSet<crate::ids::PackId>>,
    )>,
>;

/// The shared state of an open store (see the module docs).
pub(crate) struct Core {
    pub(crate) objects: Arc<dyn ObjectStore>,
    pub(crate) opts: StoreOptions,
    pub(crate) config: StoreConfig,
    pub(crate) index: Arc<Index>,
    pub(crate) packs: Arc<PackCache>,
    pub(crate) recipes: Mutex<Lru<FileId, Arc<Layout>>>,
    /// The open pack all writers append to, and the packs being sealed.
    pub(crate) writer: PackWriter,
    poison: Mutex<Option<Arc<Error>>>,
    /// What this open did to bring the index up to date (set once, by open).
    pub(crate) recovery: OnceLock<Recovery>,
    /// Held shared by writers that may dedup against stored chunks or name
    /// files, exclusively by GC and repack (spec §10.5).
    pub(crate) gate: Gate,
    /// Held by a GC or repack for its whole run: one at a time.
    pub(crate) maintenance: Mutex<()>,
    /// On a shared store, this node's recent copy of the GC's condemned
    /// packs (dedup skips them, spec §10.6).
    pub(crate) condemned: CondemnedCopy,
    /// On a shared store, the ref objects the last refresh could not read
    /// (their names unknown): listings may lack their refs.
    pub(crate) unreadable_refs: Mutex<Vec<Problem>>,
    /// Where this process keeps the store's local state (index, lock).
    pub(crate) local_dir: std::path::PathBuf,
    closed: AtomicBool,
    /// Held for the life of the store: one process at a time. Declared
    /// last, so it is released after the index is closed.
    _lock: LockGuard,
}

impl Core {
    pub(crate) fn new(
        objects: Arc<dyn ObjectStore>,
        opts: StoreOptions,
        config: StoreConfig,
        index: Index,
        lock: LockGuard,
        local_dir: std::path::PathBuf,
    ) -> Core {
        Core {
            local_dir,
            packs: Arc::new(PackCache::new(objects.clone(), opts.pack_cache)),
            recipes: Mutex::new(Lru::with_max_weight(
                opts.recipe_cache,
                opts.recipe_cache_bytes,
            )),
            objects,
            opts,
            config,
            index: Arc::new(index),
            writer: PackWriter::default(),
            gate: Gate::default(),
            maintenance: Mutex::new(()),
            condemned: Default::default(),
            unreadable_refs: Mutex::new(Vec::new()),
            poison: Mutex::new(None),
            recovery: OnceLock::new(),
            closed: AtomicBool::new(false),
            _lock: lock,
        }
    }

    /// `Err(Poisoned)` once an earlier write failed.
    pub(crate) fn check_poison(&self) -> Result<()> {
        match &*lock(&self.poison) {
            Some(cause) => Err(Error::Poisoned {
                cause: cause.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Poisons the store if `r` is a failed write (I/O or index): the page
    /// cache is not trusted after a failed write or sync (spec §10.1 rule 8).
    pub(crate) fn poison_on<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if matches!(e, Error::Io { .. } | Error::Index { .. }) {
                self.poison(e);
            }
        }
        r
    }

    /// Poisons the store with `cause` (the first cause is kept).
    pub(crate) fn poison(&self, cause: &Error) {
        let mut p = lock(&self.poison);
        if p.is_none() {
            *p = Some(Arc::new(replicate(cause)));
        }
    }

    pub(crate) fn is_poisoned(&self) -> bool {
        lock(&self.poison).is_some()
    }

    /// Lets writes in again (see `open::recover_poisoned`, the one caller).
    pub(crate) fn clear_poison(&self) {
        *lock(&self.poison) = None;
    }

    /// Where the store is, for messages.
    pub(crate) fn location(&self) -> String {
        self.objects.location()
    }

    /// A clean close: flush the index, write the clean-close record (the
    /// index's counters), then remove the `dirty` marker. A poisoned store
    /// keeps the marker, so the next open catches up. Idempotent.
    pub(crate) fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.check_poison()?;
        self.index.flush()?;
        let record = clean_record(self.objects.as_ref(), &self.index)?;
        self.objects
            .put(CLEAN, &record, PutMode::Replace)
            .map_err(|e| Error::io("write", self.objects.describe(CLEAN), e))?;
        match self.objects.delete(DIRTY) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", self.objects.describe(DIRTY), e)),
        }
    }
}

impl Drop for Core {
    fn drop(&mut self) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let poisoned = self.is_poisoned();
        if let Err(e) = self.close() {
            if !poisoned {
                tracing::warn!(store = %self.location(), error = %e, "could not close the store cleanly; the next open will catch up");
            }
        }
    }
}

/// A copy of an error that poisons the store, kept as its cause (errors are
/// not `Clone`: an I/O error keeps its kind and message).
fn replicate(e: &Error) -> Error {
    match e {
        Error::Io { op, object, source } => Error::Io {
            op,
            object: object.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Index {
            path,
            detail,
            damaged,
        } => Error::Index {
            path: path.clone(),
            detail: detail.clone(),
            damaged: *damaged,
        },
        Error::Poisoned { cause } => replicate(cause),
        other => Error::Bug(format!("poisoned by: {other}")),
    }
}

/// The counters and write generation the clean-close record holds.
fn record_values(index: &Index) -> Result<[u64; 8]> {
    let [a, b, c, d, e, f, g] = index.counters()?.to_array();
    Ok([a, b, c, d, e, f, g, index.generation()?])
}

/// The stamp of the ref tree (zeros where the backend has none).
fn refs_stamp(objects: &dyn ObjectStore) -> Result<[u8; 32]> {
    objects
        .tree_stamp(REFS)
        .map(Option::unwrap_or_default)
        .map_err(|e| Error::io("stat", objects.describe(REFS), e))
}

/// The bytes of the clean-close record for the store as it is now.
fn clean_record(objects: &dyn ObjectStore, index: &Index) -> Result<Vec<u8>> {
    Ok(encode_clean(&CleanRecord {
        counters: record_values(index)?,
        refs_stamp: refs_stamp(objects)?,
    }))
}

/// Whether the index and the ref tree match the clean-close record; `None`
/// when they do.
pub(crate) fn check_clean_record(
    objects: &dyn ObjectStore,
    index: &Index,
) -> Result<Option<CatchUpReason>> {
    match objects.get(CLEAN) {
        Ok(b) => match decode_clean(&b) {
            Ok(rec) => Ok(match record_values(index) {
                Ok(now) if now == rec.counters => {
                    // The index is the one closed; a ref file written since
                    // (the index and the record restored from an older
                    // copy) would otherwise be hidden by its older entry.
                    (refs_stamp(objects)? != rec.refs_stamp).then_some(CatchUpReason::RefsChanged)
                }
                // Different, or the counters do not decode.
                _ => Some(CatchUpReason::CountersDiffer),
            }),
            Err(_) => Ok(Some(CatchUpReason::NoCleanRecord)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Some(CatchUpReason::NoCleanRecord))
        }
        Err(e) => Err(Error::io("read", objects.describe(CLEAN), e)),
    }
}

impl crate::packwriter::Host for Core {
    fn objects(&self) -> &dyn ObjectStore {
        self.objects.as_ref()
    }

    fn index(&self) -> &Index {
        &self.index
    }

    fn pack_target_bytes(&self) -> u64 {
        self.opts.pack_target_bytes
    }

    fn check_poison(&self) -> Result<()> {
        Core::check_poison(self)
    }

    fn poison_on<T>(&self, r: Result<T>) -> Result<T> {
        Core::poison_on(self, r)
    }
}

/// The GC gate: any number of writers share it; GC and repack hold it alone.
/// A writer never waits for a GC that is only waiting (so a thread holding
/// the gate can take it again without deadlock); a GC waits until no writer
/// holds it, up to a deadline.
#[derive(Default)]
pub(crate) struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Default)]
struct GateState {
    shared: usize,
    exclusive: bool,
}

/// A writer's hold on the gate.
pub(crate) struct Shared<'a>(&'a Gate);

/// GC's or repack's hold on the gate.
pub(crate) struct Exclusive<'a>(&'a Gate);

impl Gate {
    /// Holds the gate shared (waits while a GC holds it).
    pub(crate) fn shared(&self) -> Shared<'_> {
        let mut s = lock(&self.state);
        while s.exclusive {
            s = self.changed.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.shared += 1;
        Shared(self)
    }

    /// Holds the gate alone, waiting up to `wait` for writers to let go.
    pub(crate) fn exclusive(&self, wait: Duration) -> Result<Exclusive<'_>> {
        // A wait too long to add to the clock is no deadline.
        let deadline = Instant::now().checked_add(wait);
        let mut s = lock(&self.state);
        while s.shared > 0 || s.exclusive {
            let left = deadline.map_or(wait, |d| d.saturating_duration_since(Instant::now()));
            if left.is_zero() {
                return Err(Error::Busy(format!(
                    "{} writers kept the store busy for {wait:?}",
                    s.shared
                )));
            }
            s = self
                .changed
                .wait_timeout(s, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        s.exclusive = true;
        Ok(Exclusive(self))
    }
}

impl Drop for Shared<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).shared -= 1;
        self.0.changed.notify_all();
    }
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        lock(&self.0.state).exclusive = false;
        self.0.changed.notify_all();
    }
}
