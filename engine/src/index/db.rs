//! The index's database: sled 0.34, and the only module that names it
//! (with its children `gc`, what GC and repack ask of it, and `counters`).
//!
//! sled is used with its limits in mind (see `shared/ARCHITECTURE.md`): its
//! `flush` is not a full fsync barrier everywhere, it has reports of damage
//! after unclean shutdowns, and it can reopen a damaged log as an older or
//! empty database without an error. So nothing lives only here, the store
//! records the counters and a write generation at every clean close to
//! notice silent loss, and every sled error becomes an [`Error::Index`]
//! naming the index directory (or [`Error::IndexDamaged`] at open).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use sled::transaction::{ConflictableTransactionError, TransactionError, TransactionalTree};
use sled::Transactional;

use super::filter::{FilterSlot, Ids, MissFilter};
use super::run::{self, Run};
use super::{ChunkLocation, Counters, NewFile, PackInfo, CHUNK_VALUE_LEN, COUNTER_NAMES};
use crate::error::{Error, Result};
use crate::format::ChunkEntry;
use crate::ids::{ChunkId, FileId, PackId, Sha256};

mod counters;
mod gc;

/// sled log segment size. Fixed per store: sled refuses to reopen with another.
pub(crate) const SEGMENT_BYTES: usize = 128 * 1024;

/// `meta` key of the write generation: incremented by every write
/// transaction, so an index that lost any write, even one that changed no
/// other counter (a ref pointed elsewhere), is told from an intact one.
const GENERATION: &str = "generation";

/// `meta` key of the checksum of the chunk run the `chunks` tree is layered
/// over (absent: no run). A run file whose checksum differs belongs to no
/// database of this index (a crash between publishing it and recording it,
/// or a cleared index) and is discarded; a recorded run that is missing or
/// damaged makes the index damaged (it held entries the tree no longer has).
const RUN_KEY: &str = "chunk_run";

/// Entries written to the `chunks` tree after which it is merged into the
/// run (compaction): the tree stays small enough to live in sled's cache.
const COMPACT_AFTER: u64 = 500_000;

/// Called before every index write; an error fails the write (tests).
pub(crate) type WriteGuard = Arc<dyn Fn() -> io::Result<()> + Send + Sync>;

/// An error inside this module: sled's, or the engine's (a corrupt entry).
enum DbError {
    Sled(sled::Error),
    Engine(Error),
}

impl From<sled::Error> for DbError {
    fn from(e: sled::Error) -> Self {
        DbError::Sled(e)
    }
}

impl From<Error> for DbError {
    fn from(e: Error) -> Self {
        DbError::Engine(e)
    }
}

impl From<TransactionError<Error>> for DbError {
    fn from(e: TransactionError<Error>) -> Self {
        match e {
            TransactionError::Abort(e) => DbError::Engine(e),
            TransactionError::Storage(e) => DbError::Sled(e),
        }
    }
}

type Db<T> = std::result::Result<T, DbError>;
type TxResult<T> = std::result::Result<T, ConflictableTransactionError<Error>>;

/// A key of `tree` that is not a 32-byte id.
fn bad_key(tree: &'static str, k: &[u8]) -> Error {
    Error::IndexCorrupt {
        tree,
        key: hex::encode(k),
        detail: "key is not 32 bytes".into(),
    }
}

fn undecodable(tree: &'static str, key: String, len: usize) -> Error {
    Error::IndexCorrupt {
        tree,
        key,
        detail: format!("undecodable {len}-byte value"),
    }
}

fn decode_counter(name: &str, v: &[u8]) -> Result<u64> {
    <[u8; 8]>::try_from(v)
        .map(u64::from_le_bytes)
        .map_err(|_| Error::IndexCorrupt {
            tree: "meta",
            key: name.to_string(),
            detail: "counter is not 8 bytes".into(),
        })
}

fn add_counter(meta: &TransactionalTree, name: &str, delta: i64) -> TxResult<()> {
    let cur = match meta.get(name)? {
        Some(v) => decode_counter(name, &v).map_err(ConflictableTransactionError::Abort)?,
        None => 0,
    };
    let new = cur.saturating_add_signed(delta);
    meta.insert(name, &new.to_le_bytes())?;
    Ok(())
}

/// The index (see the parent module).
pub(crate) struct Index {
    path: PathBuf,
    guard: Option<WriteGuard>,
    db: sled::Db,
    chunks: sled::Tree,
    files: sled::Tree,
    sha256: sled::Tree,
    refs: sled::Tree,
    packs: sled::Tree,
    meta: sled::Tree,
    /// pack id → u64 sealed_at (unix milliseconds) ‖ u64 live bytes (u64::MAX:
    /// not measured yet), for GC (spec §10.5).
    pack_gc: sled::Tree,
    /// file id → u64 stored_at (unix milliseconds).
    stored: sled::Tree,
    /// The miss filter in front of `chunks`, made by the first lookup or
    /// insert, and again when it is full.
    filter: FilterSlot,
    /// The sorted run under `chunks` (module `run`): most chunk entries. A
    /// lookup reads `chunks` first (an empty value there is a tombstone: the
    /// entry was removed from the run), then the run. Swapped by compaction.
    chunk_run: RwLock<Arc<Run>>,
    /// Held shared by writes to `chunks`, exclusively by a compaction while
    /// it swaps the run and drops from `chunks` what the run now answers.
    layering: RwLock<()>,
    /// One compaction at a time.
    compacting: Mutex<()>,
    /// Entries written to `chunks` since the last compaction (about).
    written: AtomicU64,
}

/// A lock that a panic elsewhere poisoned is still usable here: the data
/// it guards (an `Arc` or nothing) cannot be left half-changed.
fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn pack_gc_value(sealed_at: u64, live: u64) -> [u8; 16] {
    let mut v = [0u8; 16];
    v[..8].copy_from_slice(&sealed_at.to_le_bytes());
    v[8..].copy_from_slice(&live.to_le_bytes());
    v
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Opens (or creates) the index at `dir`. Damage sled reports is
    /// [`Error::IndexDamaged`].
    ///
    /// The caller holds the store's lock, so the only other holder of sled's
    /// own lock file can be an earlier `Index` of this process whose
    /// background threads are still ending (sled releases its lock only
    /// then): that one error is retried for a few seconds.
    pub(crate) fn open(dir: &Path, cache_bytes: u64, guard: Option<WriteGuard>) -> Result<Self> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Self::open_once(dir, cache_bytes) {
                Ok((db, trees)) => {
                    let [chunks, files, sha256, refs, packs, meta, pack_gc, stored] = trees;
                    let run = Self::open_run(dir, &meta)?;
                    // About how many entries the tree holds over the run.
                    let total = meta
                        .get("chunks")
                        .ok()
                        .flatten()
                        .and_then(|v| <[u8; 8]>::try_from(&v[..]).ok())
                        .map_or(0, u64::from_le_bytes);
                    let written = total.saturating_sub(run.len() as u64);
                    return Ok(Index {
                        chunk_run: RwLock::new(Arc::new(run)),
                        layering: RwLock::new(()),
                        compacting: Mutex::new(()),
                        written: AtomicU64::new(written),
                        path: dir.to_path_buf(),
                        guard,
                        db,
                        chunks,
                        files,
                        sha256,
                        refs,
                        packs,
                        meta,
                        pack_gc,
                        stored,
                        filter: FilterSlot::new(),
                    });
                }
                Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                    if std::time::Instant::now() >= deadline {
                        return Err(Error::IndexInUse {
                            path: dir.to_path_buf(),
                        });
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e @ sled::Error::Corruption { .. }) => {
                    return Err(Error::IndexDamaged {
                        path: dir.to_path_buf(),
                        detail: e.to_string(),
                    })
                }
                Err(e) => {
                    return Err(Error::Index {
                        path: dir.to_path_buf(),
                        detail: e.to_string(),
                        damaged: false,
                    })
                }
            }
        }
    }

    /// The run this database is layered over (see [`RUN_KEY`]).
    fn open_run(dir: &Path, meta: &sled::Tree) -> Result<Run> {
        let damaged = |detail: String| Error::IndexDamaged {
            path: dir.to_path_buf(),
            detail,
        };
        let recorded = meta
            .get(RUN_KEY)
            .map_err(|e| damaged(format!("reading {RUN_KEY}: {e}")))?;
        let run = match Run::open(dir) {
            Ok(r) => r,
            // A damaged file the database does not name is just discarded.
            Err(_) if recorded.is_none() => Run::empty(),
            Err(e) => return Err(e),
        };
        match (recorded, run.checksum()) {
            (None, None) => {}
            (None, Some(_)) => {
                tracing::info!(index = %dir.display(), "discarding a chunk run the index does not record");
                Run::remove(dir)?;
                return Ok(Run::empty());
            }
            (Some(r), Some(c)) if &r[..] == c => {}
            (Some(_), _) => {
                return Err(damaged(
                    "the chunk run the index records is missing or another one".into(),
                ))
            }
        }
        Ok(run)
    }

    fn open_once(dir: &Path, cache_bytes: u64) -> sled::Result<(sled::Db, [sled::Tree; 8])> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            // sled pads its log to a whole segment when a store is reopened; a
            // small segment keeps that one-off growth small.
            .segment_size(SEGMENT_BYTES)
            .open()?;
        let trees = [
            db.open_tree("chunks")?,
            db.open_tree("files")?,
            db.open_tree("sha256")?,
            db.open_tree("refs")?,
            db.open_tree("packs")?,
            db.open_tree("meta")?,
            db.open_tree("pack_gc")?,
            db.open_tree("stored")?,
        ];
        Ok((db, trees))
    }

    /// Runs `f`, turning its sled errors into engine errors naming the index.
    fn run<T>(&self, f: impl FnOnce() -> Db<T>) -> Result<T> {
        f().map_err(|e| match e {
            DbError::Engine(e) => e,
            DbError::Sled(e) => Error::Index {
                path: self.path.clone(),
                damaged: matches!(e, sled::Error::Corruption { .. }),
                detail: e.to_string(),
            },
        })
    }

    /// Runs `f` as a write: the guard first, then `f`.
    fn write<T>(&self, f: impl FnOnce() -> Db<T>) -> Result<T> {
        if let Some(g) = &self.guard {
            g().map_err(|e| Error::io("write index", self.path.display().to_string(), e))?;
        }
        self.run(f)
    }

    /// Makes everything inserted so far durable (and merges a grown
    /// `chunks` tree into the run).
    pub(crate) fn flush(&self) -> Result<()> {
        self.write(|| {
            self.db.flush()?;
            Ok(())
        })?;
        self.maybe_compact()
    }

    /// The chunk count and every chunk id, to size and fill a miss filter.
    fn filter_source(&self) -> (u64, Ids) {
        let keys = self.entries().map(|e| e.ok().map(|(id, _)| ChunkId(id)));
        (self.meta_counter("chunks").unwrap_or(0), Box::new(keys))
    }

    /// The current run.
    fn chunk_run(&self) -> Arc<Run> {
        read(&self.chunk_run).clone()
    }

    /// Every chunk entry, in id order: the tree over the run, tombstones
    /// applied.
    fn entries(&self) -> Entries {
        Entries {
            tree: self.chunks.iter().peekable(),
            run: self.chunk_run(),
            at: 0,
        }
    }

    /// Compacts now, however little the tree holds (tests).
    #[cfg(test)]
    pub(crate) fn compact_now(&self) -> Result<()> {
        self.written.store(COMPACT_AFTER, Ordering::Relaxed);
        self.maybe_compact()
    }

    /// Entries in the run and in the tree (tests).
    #[cfg(test)]
    pub(crate) fn layers(&self) -> (usize, usize) {
        (self.chunk_run().len(), self.chunks.len())
    }

    /// Merges the `chunks` tree into a new run when it has grown (called at
    /// flushes). Writers wait only while the run is swapped and the tree
    /// trimmed; lookups never wait.
    fn maybe_compact(&self) -> Result<()> {
        if self.written.load(Ordering::Relaxed) < COMPACT_AFTER {
            return Ok(());
        }
        let _one = match self.compacting.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return Ok(()), // another thread is at it
        };
        let t0 = std::time::Instant::now();
        let before = self.written.load(Ordering::Relaxed);
        let mut merged = self.entries().map(|e| e.map_err(|e| self.run_err(e)));
        let count = run::write(&self.path, &mut merged)?;
        let new = Arc::new(Run::open(&self.path)?);
        let _alone = write(&self.layering);
        *write(&self.chunk_run) = new.clone();
        self.run(|| {
            self.meta
                .insert(RUN_KEY, new.checksum().unwrap_or_default())?;
            self.db.flush()?;
            // The tree keeps only what the run does not answer the same way.
            let mut kept = 0u64;
            for kv in self.chunks.iter() {
                let (k, v) = kv?;
                let Some(id) = ChunkId::from_slice(&k) else {
                    return Err(bad_key("chunks", &k).into());
                };
                let same = match new.get(&id) {
                    None => v.is_empty(),
                    Some(r) => r == &v[..],
                };
                if same {
                    // Unchanged since it was read, or kept.
                    let _ = self.chunks.compare_and_swap(&k, Some(v), None::<&[u8]>)?;
                } else {
                    kept += 1;
                }
            }
            self.db.flush()?;
            let during = self.written.load(Ordering::Relaxed).saturating_sub(before);
            self.written.store(kept.max(during), Ordering::Relaxed);
            Ok(())
        })?;
        tracing::debug!(
            entries = count,
            kept = self.written.load(Ordering::Relaxed),
            ms = t0.elapsed().as_millis() as u64,
            "chunk index compacted"
        );
        Ok(())
    }

    /// The miss filter for a lookup (see [`FilterSlot::get`]).
    pub(super) fn filter(&self) -> Arc<MissFilter> {
        self.filter.get(&|| self.filter_source())
    }

    /// Memory held by the miss filter, and whether it answers yet.
    #[cfg(feature = "testing")]
    pub(crate) fn filter_state(&self) -> (u64, bool) {
        let f = self.filter();
        (f.bytes(), f.answers())
    }

    /// Looks up a chunk. Most chunks the index lacks are answered by the
    /// miss filter without reading the database.
    pub(crate) fn chunk(&self, id: &ChunkId) -> Result<Option<ChunkLocation>> {
        if !self.filter().may_contain(id) {
            return Ok(None);
        }
        self.run(|| match self.chunks.get(id.0)? {
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => ChunkLocation::decode(*id, &v)
                .map(Some)
                .ok_or_else(|| undecodable("chunks", id.to_hex(), v.len()).into()),
            None => match self.chunk_run().get(id) {
                None => Ok(None),
                Some(v) => ChunkLocation::decode(*id, v)
                    .map(Some)
                    .ok_or_else(|| undecodable("chunks", id.to_hex(), v.len()).into()),
            },
        })
    }

    /// Records a pack and the given (index in pack, entry) chunks of it,
    /// atomically. A chunk already indexed elsewhere keeps its entry.
    pub(crate) fn add_pack(
        &self,
        pack: PackId,
        info: PackInfo,
        chunks: &[(u32, ChunkEntry)],
    ) -> Result<()> {
        self.insert_pack(pack, info, chunks, false)
    }

    /// Records a pack written by repack and points every one of `chunks` at
    /// it, replacing entries that point elsewhere.
    pub(crate) fn relocate_chunks(
        &self,
        pack: PackId,
        info: PackInfo,
        chunks: &[(u32, ChunkEntry)],
    ) -> Result<()> {
        self.insert_pack(pack, info, chunks, true)
    }

    /// Every insert into `chunks` is made here, so the miss filter learns
    /// every indexed id.
    fn insert_pack(
        &self,
        pack: PackId,
        info: PackInfo,
        chunks: &[(u32, ChunkEntry)],
        replace: bool,
    ) -> Result<()> {
        let now = now_millis();
        let _layer = read(&self.layering);
        let run = self.chunk_run();
        self.write(|| {
            // Held through the transaction (see `FilterSlot::for_insert`).
            let (_adding, f) = self.filter.for_insert(&|| self.filter_source());
            // Chunks the filter has never seen are not indexed (inserts are
            // serialized): no lookup for them in the transaction. Every id
            // goes into the filter before the transaction inserts it.
            let unseen: Vec<bool> = chunks
                .iter()
                .map(|(_, e)| f.answers() && !f.may_contain(&e.id))
                .collect();
            for (_, e) in chunks {
                f.add(&e.id);
            }
            (&self.chunks, &self.packs, &self.meta, &self.pack_gc).transaction(
                |(ct, pt, mt, gt)| {
                    add_counter(mt, GENERATION, 1)?;
                    let mut new_chunks = 0i64;
                    let mut new_bytes = 0i64;
                    for ((i, e), unseen) in chunks.iter().zip(&unseen) {
                        let loc = ChunkLocation {
                            pack,
                            index: *i,
                            entry: *e,
                        };
                        let old = if *unseen {
                            None
                        } else {
                            match ct.get(e.id.0)? {
                                Some(v) if v.is_empty() => None,
                                Some(_) => Some(()),
                                None => run.get(&e.id).map(|_| ()),
                            }
                        };
                        if old.is_some() && !replace {
                            continue;
                        }
                        ct.insert(&e.id.0, &loc.encode()[..])?;
                        if old.is_none() {
                            new_chunks += 1;
                            new_bytes += i64::from(e.raw_len);
                        }
                    }
                    if pt.insert(&pack.0, &info.encode()[..])?.is_none() {
                        add_counter(mt, "packs", 1)?;
                        add_counter(mt, "stored_bytes", info.size as i64)?;
                    }
                    if gt.get(pack.0)?.is_none() {
                        gt.insert(&pack.0, &pack_gc_value(now, u64::MAX)[..])?;
                    }
                    add_counter(mt, "chunks", new_chunks)?;
                    add_counter(mt, "chunk_bytes", new_bytes)?;
                    Ok(())
                },
            )?;
            Ok(())
        })?;
        self.written
            .fetch_add(chunks.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The recipe bytes of a file.
    pub(crate) fn recipe_bytes(&self, file: &FileId) -> Result<Option<Bytes>> {
        self.run(|| Ok(self.files.get(file.0)?.map(Bytes::from_owner)))
    }

    /// Whether a file is known.
    pub(crate) fn has_file(&self, file: &FileId) -> Result<bool> {
        self.run(|| Ok(self.files.contains_key(file.0)?))
    }

    /// Records a file (recipe, sha256 alias and optionally refs), atomically.
    /// Returns whether the file was new.
    pub(crate) fn add_file(
        &self,
        file: FileId,
        sha: Sha256,
        size: u64,
        recipe: &[u8],
        refs: &[String],
    ) -> Result<bool> {
        let new = self.add_files(&[NewFile {
            file,
            sha,
            size,
            recipe,
            refs,
        }])?;
        Ok(new.first().copied().unwrap_or(false))
    }

    /// Records several files in one transaction: readers see all of them or
    /// none. Returns, per file, whether it was new. A file already held
    /// with another recipe gets this one (another valid recipe of the same
    /// file, whose packs are durable: one that placed chunks again because
    /// the packs the held one names are gone).
    pub(crate) fn add_files(&self, files: &[NewFile<'_>]) -> Result<Vec<bool>> {
        // Re-ingesting known files must not write to the index at all.
        let known = self.run(|| {
            for f in files {
                let mut known = self.files.get(f.file.0)?.as_deref() == Some(f.recipe)
                    && self.sha256.contains_key(f.sha.0)?;
                for r in f.refs {
                    known = known && self.refs.get(r.as_bytes())?.as_deref() == Some(&f.file.0[..]);
                }
                if !known {
                    return Ok(false);
                }
            }
            Ok(true)
        })?;
        if known {
            return Ok(vec![false; files.len()]);
        }
        self.write(|| {
            let now = now_millis().to_le_bytes();
            let out = (
                &self.files,
                &self.sha256,
                &self.refs,
                &self.meta,
                &self.stored,
            )
                .transaction(|(ft, st, rt, mt, tt)| {
                    add_counter(mt, GENERATION, 1)?;
                    let mut out = Vec::with_capacity(files.len());
                    for f in files {
                        let held = ft.get(f.file.0)?;
                        let new = held.is_none();
                        if new {
                            ft.insert(&f.file.0, f.recipe)?;
                            tt.insert(&f.file.0, &now[..])?;
                            add_counter(mt, "files", 1)?;
                            add_counter(mt, "logical_bytes", f.size as i64)?;
                        } else if held.as_deref() != Some(f.recipe) {
                            ft.insert(&f.file.0, f.recipe)?;
                        }
                        if st.get(f.sha.0)?.is_none() {
                            st.insert(&f.sha.0, &f.file.0)?;
                        }
                        for r in f.refs {
                            if rt.insert(r.as_bytes(), &f.file.0)?.is_none() {
                                add_counter(mt, "refs", 1)?;
                            }
                        }
                        out.push(new);
                    }
                    Ok(out)
                })?;
            Ok(out)
        })
    }

    /// Replaces the recipe copy of a file the index already holds (with
    /// another valid recipe of the same file: same chunks, same size).
    pub(crate) fn replace_recipe(&self, file: FileId, recipe: &[u8]) -> Result<()> {
        self.write(|| {
            (&self.files, &self.meta).transaction(|(ft, mt)| {
                add_counter(mt, GENERATION, 1)?;
                ft.insert(&file.0, recipe)?;
                Ok(())
            })?;
            Ok(())
        })
    }

    /// File id for a sha256 alias.
    pub(crate) fn by_sha256(&self, sha: &Sha256) -> Result<Option<FileId>> {
        self.id_value(&self.sha256, "sha256", &sha.0)
    }

    fn id_value(
        &self,
        tree: &sled::Tree,
        name: &'static str,
        key: &[u8],
    ) -> Result<Option<FileId>> {
        self.run(|| match tree.get(key)? {
            None => Ok(None),
            Some(v) => FileId::from_slice(&v).map(Some).ok_or_else(|| {
                Error::IndexCorrupt {
                    tree: name,
                    key: String::from_utf8_lossy(key).into_owned(),
                    detail: format!("{}-byte value, expected 32", v.len()),
                }
                .into()
            }),
        })
    }

    /// Sets a ref.
    pub(crate) fn set_ref(&self, name: &str, file: FileId) -> Result<()> {
        self.write(|| {
            (&self.refs, &self.meta).transaction(|(rt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                if rt.insert(name.as_bytes(), &file.0)?.is_none() {
                    add_counter(mt, "refs", 1)?;
                }
                Ok(())
            })?;
            Ok(())
        })
    }

    /// Deletes a ref; returns whether it existed.
    pub(crate) fn delete_ref(&self, name: &str) -> Result<bool> {
        self.write(|| {
            let existed = (&self.refs, &self.meta).transaction(|(rt, mt)| {
                add_counter(mt, GENERATION, 1)?;
                let existed = rt.remove(name.as_bytes())?.is_some();
                if existed {
                    add_counter(mt, "refs", -1)?;
                }
                Ok(existed)
            })?;
            Ok(existed)
        })
    }

    /// Resolves a ref.
    pub(crate) fn get_ref(&self, name: &str) -> Result<Option<FileId>> {
        self.id_value(&self.refs, "refs", name.as_bytes())
    }

    /// Refs whose names start with `prefix`, in name order.
    pub(crate) fn refs_with_prefix(&self, prefix: &str) -> Result<Vec<(String, FileId)>> {
        self.run(|| {
            let mut out = Vec::new();
            for kv in self.refs.scan_prefix(prefix.as_bytes()) {
                let (k, v) = kv?;
                let name = String::from_utf8_lossy(&k).into_owned();
                let id = FileId::from_slice(&v).ok_or_else(|| Error::IndexCorrupt {
                    tree: "refs",
                    key: name.clone(),
                    detail: format!("{}-byte value, expected 32", v.len()),
                })?;
                out.push((name, id));
            }
            Ok(out)
        })
    }

    /// What is recorded about a pack.
    pub(crate) fn pack(&self, pack: &PackId) -> Result<Option<PackInfo>> {
        self.run(|| match self.packs.get(pack.0)? {
            None => Ok(None),
            Some(v) => PackInfo::decode(&v)
                .map(Some)
                .ok_or_else(|| undecodable("packs", pack.to_hex(), v.len()).into()),
        })
    }

    /// Whether a pack is indexed.
    pub(crate) fn has_pack(&self, pack: &PackId) -> Result<bool> {
        self.run(|| Ok(self.packs.contains_key(pack.0)?))
    }

    /// Every pack entry, in id order.
    pub(crate) fn packs(&self) -> impl Iterator<Item = Result<(PackId, PackInfo)>> + '_ {
        self.packs.iter().map(move |kv| {
            self.run(|| {
                let (k, v) = kv?;
                let id = PackId::from_slice(&k).ok_or_else(|| bad_key("packs", &k))?;
                let info = PackInfo::decode(&v)
                    .ok_or_else(|| undecodable("packs", id.to_hex(), v.len()))?;
                Ok((id, info))
            })
        })
    }

    /// Every chunk entry, in id order.
    pub(crate) fn chunks(&self) -> impl Iterator<Item = Result<ChunkLocation>> + '_ {
        self.entries().map(move |e| {
            let (id, v) = e.map_err(|e| self.run_err(e))?;
            let id = ChunkId(id);
            ChunkLocation::decode(id, &v).ok_or_else(|| undecodable("chunks", id.to_hex(), v.len()))
        })
    }

    /// An error of the merged iteration, named like any other.
    fn run_err(&self, e: DbError) -> Error {
        self.run(|| -> Db<()> { Err(e) })
            .err()
            .unwrap_or_else(|| Error::Bug("no error".into()))
    }

    /// Every file id with its recipe bytes, in id order.
    pub(crate) fn files(&self) -> impl Iterator<Item = Result<(FileId, Bytes)>> + '_ {
        self.files.iter().map(move |kv| {
            self.run(|| {
                let (k, v) = kv?;
                let id = FileId::from_slice(&k).ok_or_else(|| bad_key("files", &k))?;
                Ok((id, Bytes::from_owner(v)))
            })
        })
    }

    /// On-disk size of the index: the database as it reports it, and the
    /// chunk run.
    pub(crate) fn size_on_disk(&self) -> Result<u64> {
        let run = std::fs::metadata(self.path.join(run::RUN_FILE)).map_or(0, |m| m.len());
        self.run(|| Ok(self.db.size_on_disk()? + run))
    }
}

/// The merged iteration of [`Index::entries`].
struct Entries {
    tree: std::iter::Peekable<sled::Iter>,
    run: Arc<Run>,
    at: usize,
}

type Entry = ([u8; 32], [u8; CHUNK_VALUE_LEN]);

impl Iterator for Entries {
    type Item = Db<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let run_key = (self.at < self.run.len()).then(|| self.run.record(self.at).0);
            let tree_first = match (self.tree.peek(), run_key) {
                (None, None) => return None,
                (None, Some(_)) => false,
                (Some(Ok((k, _))), Some(r)) => k.as_ref() <= r,
                (Some(_), _) => true,
            };
            if !tree_first {
                let (k, v) = self.run.record(self.at);
                self.at += 1;
                return match (k.try_into(), v.try_into()) {
                    (Ok(k), Ok(v)) => Some(Ok((k, v))),
                    _ => Some(Err(bad_key("chunks", k).into())),
                };
            }
            let (k, v) = match self.tree.next()? {
                Ok(kv) => kv,
                Err(e) => return Some(Err(e.into())),
            };
            if run_key.is_some_and(|r| r == k.as_ref()) {
                self.at += 1; // the tree's entry replaces the run's
            }
            if v.is_empty() {
                continue; // a tombstone
            }
            let Ok(id) = <[u8; 32]>::try_from(k.as_ref()) else {
                return Some(Err(bad_key("chunks", &k).into()));
            };
            let Ok(value) = <[u8; CHUNK_VALUE_LEN]>::try_from(v.as_ref()) else {
                return Some(Err(undecodable("chunks", hex::encode(id), v.len()).into()));
            };
            return Some(Ok((id, value)));
        }
    }
}
