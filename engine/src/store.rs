//! The store: the one public façade (open, ingest, read, refs, stats).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use bytes::{Bytes, BytesMut};
use rayon::prelude::*;
use sha2::Digest;

use crate::cache::Lru;
use crate::chunking::{Batch, ChunkParams, Chunker};
use crate::error::{Error, Result};
use crate::format::{
    decode_ref, encode_ref, ConfigError, Recipe, RecipeError, StoreConfig, Term, CHUNK_HEADER_LEN,
    FORMAT_VERSION, MAX_REF_LEN, TABLE_ENTRY_LEN,
};
use crate::hash::{ChunkId, FileId, FileIdHasher, PackId, Sha256};
use crate::index::{Counters, Index, NewFile, PackInfo};
use crate::pack::{encode_chunk, OpenPack, PackReader};
use crate::reader::FileReader;
use crate::recipe::Layout;
use crate::recover::{CatchUpReason, Recovery, CLEAN_FILE};
use crate::storage::{FsStorage, ReadMode, Storage};

/// Name of the config file at the store root.
pub const CONFIG_FILE: &str = "tessera.store";
/// Present while a process has the store open; left behind by a crash.
pub const DIRTY_FILE: &str = "dirty";

/// How to open a store. The defaults suit a registry server.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Chunking parameters. `None` accepts whatever the store was created
    /// with (and uses the default when creating); `Some` must match.
    pub chunking: Option<ChunkParams>,
    /// Create the store if the directory holds none.
    pub create: bool,
    /// Seal a pack once it would exceed this many bytes.
    pub pack_target_bytes: u64,
    /// zstd level for chunk compression (0 disables compression).
    pub zstd_level: i32,
    /// Store a chunk compressed only if that saves at least this fraction.
    pub min_compression_savings: f64,
    /// Bytes read and chunked per batch while ingesting (memory bound).
    pub ingest_batch_bytes: usize,
    /// How packs are read.
    pub read_mode: ReadMode,
    /// Number of open packs kept.
    pub pack_cache: usize,
    /// Number of decoded recipes kept.
    pub recipe_cache: usize,
    /// sled page-cache size.
    pub index_cache_bytes: u64,
    /// Chunks decoded ahead by a sequential [`FileReader`].
    pub read_ahead_chunks: usize,
    /// Open an existing store whose index directory is missing, with an
    /// empty index (only `repair index` wants this).
    pub allow_missing_index: bool,
    /// How long to wait for another process to release the store's lock
    /// (`None`: fail at once with [`Error::StoreLocked`]).
    pub lock_wait: Option<std::time::Duration>,
    /// When sled reports its own files damaged at open, delete the index and
    /// rebuild it from the packs, recipe files and ref files (as `repair
    /// index` would). Off: opening fails with [`Error::IndexDamaged`].
    pub rebuild_damaged_index: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunking: None,
            create: false,
            pack_target_bytes: 64 << 20,
            zstd_level: 3,
            min_compression_savings: 0.05,
            ingest_batch_bytes: 16 << 20,
            read_mode: ReadMode::Mmap,
            pack_cache: 512,
            recipe_cache: 64,
            index_cache_bytes: 256 << 20,
            read_ahead_chunks: 16,
            allow_missing_index: false,
            lock_wait: None,
            rebuild_damaged_index: true,
        }
    }
}

/// What one ingest added.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PutReport {
    /// The file id.
    pub file_id: FileId,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks this ingest stored (not already in the store).
    pub new_chunks: u64,
    /// Bytes this ingest added on disk: chunk records and table entries of
    /// its new chunks, plus its recipe file if it was new.
    pub new_bytes: u64,
    /// Whether the file was not in the store before.
    pub new_file: bool,
}

/// Summary of a stored file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// The file id.
    pub file_id: FileId,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Number of recipe terms.
    pub terms: u64,
    /// Distinct packs holding its chunks.
    pub packs: Vec<PackId>,
}

/// Store-wide figures.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Stats {
    /// Distinct files.
    pub files: u64,
    /// Refs.
    pub refs: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Sealed packs.
    pub packs: u64,
    /// Sum of distinct files' sizes.
    pub logical_bytes: u64,
    /// Sum of pack sizes on disk.
    pub stored_bytes: u64,
    /// Sum of distinct chunks' raw sizes.
    pub unique_bytes: u64,
    /// `logical_bytes / stored_bytes` (1.0 for an empty store).
    pub dedup_ratio: f64,
    /// The chunking parameters.
    #[serde(skip)]
    pub chunking: ChunkParams,
}

impl serde::Serialize for FileId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl serde::Serialize for Sha256 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}
impl serde::Serialize for PackId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

/// Where a chunk of a staged file lives.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Sealed { pack: PackId, index: u32 },
    Open { seq: u64 },
}

struct WriterState {
    open: Option<OpenPack>,
    /// Sequence number of the open (or next) pack.
    seq: u64,
}

pub(crate) struct Inner {
    pub(crate) root: PathBuf,
    pub(crate) storage: Arc<dyn Storage>,
    opts: StoreOptions,
    config: StoreConfig,
    pub(crate) index: Index,
    writer: Mutex<WriterState>,
    packs: Mutex<Lru<PackId, Arc<PackReader>>>,
    recipes: Mutex<Lru<FileId, Arc<Layout>>>,
    poison: Mutex<Option<String>>,
    tmp_seq: AtomicU64,
    /// What this open did to bring the index up to date (set once, by open).
    pub(crate) recovery: OnceLock<Recovery>,
    /// Held (flock) for the life of the store: one process at a time.
    _lock: std::fs::File,
}

/// A content-addressed chunk store. Cheap to clone; `Send + Sync`, usable
/// from many threads at once.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.root)
            .finish()
    }
}

impl Drop for Inner {
    /// A clean close: flush the index, write the clean-close record (the
    /// index's counters), then remove the `dirty` marker. A poisoned store
    /// (or any failure here) keeps the marker, so the next open catches up.
    fn drop(&mut self) {
        if lock(&self.poison).is_some() {
            return;
        }
        let tmp = format!("tmp/{}-close.clean", std::process::id());
        let clean = self.index.flush().is_ok()
            && crate::recover::clean_record(&self.index)
                .and_then(|b| write_atomic(self.storage.as_ref(), &self.root, &tmp, CLEAN_FILE, &b))
                .is_ok()
            && self.storage.remove_file(DIRTY_FILE).is_ok()
            && self.storage.sync_dir("").is_ok();
        if !clean {
            tracing::warn!(store = %self.root.display(), "could not close the store cleanly");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind (no
    // invariant spans a panic point), so a poisoned mutex is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `dir/<hex[0..2]>/<hex>.ext`: where packs, recipe files and ref files live.
pub(crate) fn fanout(dir: &str, hex: &str, ext: &str) -> String {
    format!("{dir}/{}/{hex}.{ext}", &hex[..2])
}

/// Relative path of a recipe file.
pub fn recipe_path(file: &FileId) -> String {
    fanout("recipes", &file.to_hex(), "recipe")
}

/// Relative path of a ref file (named by the BLAKE3 of the ref name).
pub fn ref_path(name: &str) -> String {
    fanout("refs", &blake3::hash(name.as_bytes()).to_hex(), "ref")
}

/// Prefixes that make a name explicit in [`Store::resolve`]; no ref name
/// may start with one (spec §8).
pub const NAME_PREFIXES: [&str; 3] = ["file:", "sha256:", "ref:"];

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks a new ref name (spec §8): 1..=4096 bytes of UTF-8 without control
/// characters, not 64 hex digits (the form of file ids and sha256 aliases)
/// and not starting with `file:`, `sha256:` or `ref:`, so that every name
/// [`Store::resolve`] is given means one thing forever.
fn validate_ref(name: &str) -> Result<()> {
    let why = if name.is_empty() || name.len() > MAX_REF_LEN {
        Some(format!("must be 1..={MAX_REF_LEN} bytes"))
    } else if name.chars().any(|c| c.is_control()) {
        Some("must not contain control characters".to_string())
    } else if is_hex64(name) {
        Some("64 hex digits name a file id or a sha256, not a ref".to_string())
    } else {
        NAME_PREFIXES
            .iter()
            .find(|p| name.starts_with(*p))
            .map(|p| format!("{p:?} is reserved for explicit names"))
    };
    match why {
        Some(why) => Err(Error::InvalidArgument(format!(
            "bad ref name {:?}: {why}",
            crate::error::clip(name)
        ))),
        None => Ok(()),
    }
}

impl Store {
    /// Opens the store at `root` (creating it if `opts.create`).
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let root = root.as_ref().to_path_buf();
        let storage: Arc<dyn Storage> = Arc::new(FsStorage::new(&root, opts.read_mode));
        Self::open_with(root, storage, opts)
    }

    /// Opens a store over a given storage backend (for fault injection and
    /// other backends). The sled index lives at `root/index`.
    pub fn open_with(
        root: PathBuf,
        storage: Arc<dyn Storage>,
        opts: StoreOptions,
    ) -> Result<Store> {
        let io = |op, rel: &str, e| Error::io(op, root.join(rel), e);
        let index_dir = root.join("index");
        let (config, lock_file, created) = match storage.read(CONFIG_FILE) {
            Ok(bytes) => {
                let config = Self::check_config(&root, &bytes, &opts)?;
                let lock = lock_store(&root, opts.lock_wait)?;
                // An existing store without its index would look empty:
                // refuse, and say how to rebuild it.
                if !opts.allow_missing_index && !index_dir.exists() {
                    return Err(Error::IndexMissing { path: index_dir });
                }
                (config, lock, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No config: an empty directory, the remains of a creation
                // that crashed, a store that lost its config, or something
                // else entirely. Only the first two may become a store.
                match classify_without_config(&root, storage.as_ref())? {
                    DirState::Fresh => {}
                    DirState::Store(detail) => {
                        return Err(Error::ConfigMissing { path: root, detail })
                    }
                    DirState::Foreign(detail) if opts.create => {
                        return Err(Error::NotAStore { path: root, detail })
                    }
                    DirState::Foreign(_) => return Err(Error::StoreNotFound { path: root }),
                }
                if !opts.create {
                    return Err(Error::StoreNotFound { path: root });
                }
                storage
                    .create_dir_all("")
                    .map_err(|e| io("create directory", "", e))?;
                let lock_file = lock_store(&root, opts.lock_wait)?;
                // Another process may have created the store meanwhile.
                match storage.read(CONFIG_FILE) {
                    Ok(bytes) => (Self::check_config(&root, &bytes, &opts)?, lock_file, false),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
                        Self::create_layout(&root, storage.as_ref(), &opts)?,
                        lock_file,
                        true,
                    ),
                    Err(e) => return Err(io("read config", CONFIG_FILE, e)),
                }
            }
            Err(e) => return Err(io("read config", CONFIG_FILE, e)),
        };
        if let Some(p) = opts.chunking {
            p.validate()?;
        }
        // We hold the store lock, so no other process can be using tmp/:
        // whatever is there is left over from a crash and was never
        // acknowledged.
        for name in storage.list_dir("tmp").map_err(|e| io("list", "tmp", e))? {
            let rel = format!("tmp/{name}");
            storage
                .remove_file(&rel)
                .map_err(|e| io("remove temp file", &rel, e))?;
        }
        // Mark the session open before touching the index: a crash from
        // here on (in a rebuild or catch-up too) makes the next open catch
        // up. A clean close removes the marker.
        let unclean = storage
            .exists(DIRTY_FILE)
            .map_err(|e| io("stat", DIRTY_FILE, e))?;
        write_atomic(
            storage.as_ref(),
            &root,
            &format!("tmp/{}-open.dirty", std::process::id()),
            DIRTY_FILE,
            std::process::id().to_string().as_bytes(),
        )?;
        let index_is_new = !index_dir.exists();
        let (index, rebuilt) = crate::recover::open_index(&index_dir, &opts)?;
        let reason = if rebuilt {
            Some(CatchUpReason::DamagedIndex)
        } else if index_is_new {
            Some(CatchUpReason::NewIndex)
        } else if unclean {
            Some(CatchUpReason::UncleanShutdown)
        } else if created {
            None
        } else {
            crate::recover::check_clean_record(storage.as_ref(), &index)?
        };
        let (pack_cache, recipe_cache) = (opts.pack_cache, opts.recipe_cache);
        let store = Store {
            inner: Arc::new(Inner {
                root,
                storage,
                opts,
                config,
                index,
                writer: Mutex::new(WriterState { open: None, seq: 0 }),
                packs: Mutex::new(Lru::new(pack_cache)),
                recipes: Mutex::new(Lru::new(recipe_cache)),
                poison: Mutex::new(None),
                tmp_seq: AtomicU64::new(0),
                recovery: OnceLock::new(),
                _lock: lock_file,
            }),
        };
        if let Some(reason) = reason {
            let report = match store.catch_up(reason) {
                Ok(r) => r,
                Err(e) => {
                    // Keep `dirty` (a poisoned store does not close cleanly):
                    // the next open must catch up again.
                    *lock(&store.inner.poison) = Some(format!("catching up the index failed: {e}"));
                    return Err(e);
                }
            };
            let changed = report.packs + report.files + report.refs > 0;
            if changed || !report.problems.is_empty() || reason != CatchUpReason::NewIndex {
                tracing::warn!(
                    store = %store.inner.root.display(),
                    packs = report.packs,
                    files = report.files,
                    refs = report.refs,
                    problems = report.problems.len(),
                    "index caught up with the store's files ({reason})"
                );
            }
            for p in &report.problems {
                tracing::warn!(object = %p.object, "{}", p.detail);
            }
            let _ = store.inner.recovery.set(Recovery { reason, report });
        }
        Ok(store)
    }

    fn check_config(root: &Path, bytes: &[u8], opts: &StoreOptions) -> Result<StoreConfig> {
        let path = root.join(CONFIG_FILE);
        let cfg = StoreConfig::decode(bytes).map_err(|e| match e {
            ConfigError::Version(v) => Error::UnsupportedVersion {
                object: format!("store {}", root.display()),
                found: v,
                supported: FORMAT_VERSION,
            },
            ConfigError::Corrupt(detail) => Error::ConfigCorrupt {
                path: path.clone(),
                detail,
            },
        })?;
        if let Some(p) = opts.chunking {
            if p != cfg.chunking {
                return Err(Error::ChunkParamsMismatch {
                    path: root.to_path_buf(),
                    stored: cfg.chunking.to_string(),
                    requested: p.to_string(),
                });
            }
        }
        Ok(cfg)
    }

    fn create_layout(
        root: &Path,
        storage: &dyn Storage,
        opts: &StoreOptions,
    ) -> Result<StoreConfig> {
        let chunking = opts.chunking.unwrap_or_default();
        chunking.validate()?;
        let io = |op, rel: &str, e| Error::io(op, root.join(rel), e);
        storage
            .create_dir_all("")
            .map_err(|e| io("create directory", "", e))?;
        for top in ["packs", "recipes", "refs"] {
            for i in 0..=255u8 {
                let d = format!("{top}/{i:02x}");
                storage
                    .create_dir_all(&d)
                    .map_err(|e| io("create directory", &d, e))?;
            }
            storage
                .sync_dir(top)
                .map_err(|e| io("fsync directory", top, e))?;
        }
        storage
            .create_dir_all("tmp")
            .map_err(|e| io("create directory", "tmp", e))?;
        // The index directory belongs to sled, on the real filesystem, outside
        // the storage trait. It must exist before the config does: a store
        // with a config and no index directory is refused at open.
        let index_dir = root.join("index");
        std::fs::create_dir_all(&index_dir)
            .map_err(|e| Error::io("create directory", &index_dir, e))?;
        // The top-level directories must be durable before the config is:
        // otherwise a crash could keep the config but lose `tmp/` or `packs/`.
        storage
            .sync_dir("")
            .map_err(|e| io("fsync directory", "", e))?;
        // A creation that crashed may have left its temp config behind (we
        // hold the store lock, so nobody else is creating this store).
        match storage.remove_file("tmp/config.new") {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove stale temp config", "tmp/config.new", e)),
        }
        let config = StoreConfig {
            version: FORMAT_VERSION,
            chunking,
        };
        // The config is written last: its presence means the layout is complete.
        write_atomic(
            storage,
            root,
            "tmp/config.new",
            CONFIG_FILE,
            &config.encode(),
        )?;
        Ok(config)
    }

    /// The store directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The chunking parameters of this store.
    pub fn chunk_params(&self) -> ChunkParams {
        self.inner.config.chunking
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.inner.opts
    }

    fn check_poison(&self) -> Result<()> {
        match &*lock(&self.inner.poison) {
            Some(why) => Err(Error::Poisoned(why.clone())),
            None => Ok(()),
        }
    }

    pub(crate) fn poison_on<T>(&self, r: Result<T>) -> Result<T> {
        if let Err(e) = &r {
            if matches!(e, Error::Io { .. } | Error::Index(_)) {
                let mut p = lock(&self.inner.poison);
                if p.is_none() {
                    *p = Some(e.to_string());
                }
            }
        }
        r
    }

    pub(crate) fn tmp_name(&self, kind: &str) -> String {
        format!(
            "tmp/{}-{}.{kind}",
            std::process::id(),
            self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed)
        )
    }

    // ------------------------------------------------------------ ingest

    /// Starts a group of ingests that are made durable together by
    /// [`Ingest::commit`] (one pack seal, one index flush for many files).
    pub fn ingest(&self) -> Ingest<'_> {
        Ingest {
            store: self,
            staged: Vec::new(),
        }
    }

    /// Ingests one file and commits it; `refs` are set to it.
    pub fn put(&self, reader: impl Read + Send, refs: &[&str]) -> Result<PutReport> {
        let mut ing = self.ingest();
        ing.add(reader, refs, &mut |_| {})?;
        let mut reports = ing.commit()?;
        reports
            .pop()
            .ok_or_else(|| Error::InvalidArgument("ingest produced no report".into()))
    }

    /// Puts a byte slice (convenience for small data and tests).
    pub fn put_bytes(&self, data: &[u8], refs: &[&str]) -> Result<PutReport> {
        self.put(data, refs)
    }

    /// Appends new chunks of a batch to the shared open pack. Returns each
    /// chunk's location and the (count, bytes) this call stored.
    fn store_chunks(&self, ids: &[ChunkId], chunks: &[Bytes]) -> Result<(Vec<Loc>, u64, u64)> {
        let inner = &*self.inner;
        let mut locs: Vec<Option<Loc>> = Vec::with_capacity(ids.len());
        let mut candidates = Vec::new();
        let mut seen = HashSet::new();
        for (i, id) in ids.iter().enumerate() {
            match inner.index.chunk(id)? {
                Some(l) => locs.push(Some(Loc::Sealed {
                    pack: l.pack,
                    index: l.index,
                })),
                None => {
                    locs.push(None);
                    if seen.insert(*id) {
                        candidates.push(i);
                    }
                }
            }
        }
        // Compress outside the writer lock, in parallel.
        let (level, savings) = (inner.opts.zstd_level, inner.opts.min_compression_savings);
        let encoded: Vec<_> = candidates
            .par_iter()
            .map(|&i| encode_chunk(&chunks[i], &ids[i], level, savings).map(|e| (i, e)))
            .collect::<Result<_>>()?;

        let mut new_chunks = 0u64;
        let mut new_bytes = 0u64;
        let mut placed: HashMap<ChunkId, Loc> = HashMap::new();
        {
            let mut w = lock(&inner.writer);
            self.check_poison()?;
            for (i, (compression, stored)) in encoded {
                let id = ids[i];
                // Re-check under the lock: another thread may have stored it.
                if w.open.as_ref().is_some_and(|o| o.contains(&id)) {
                    placed.insert(id, Loc::Open { seq: w.seq });
                    continue;
                }
                if let Some(l) = inner.index.chunk(&id)? {
                    placed.insert(
                        id,
                        Loc::Sealed {
                            pack: l.pack,
                            index: l.index,
                        },
                    );
                    continue;
                }
                let r =
                    self.append_locked(&mut w, id, chunks[i].len() as u32, compression, &stored);
                self.poison_on(r)?;
                placed.insert(id, Loc::Open { seq: w.seq });
                new_chunks += 1;
                new_bytes += (CHUNK_HEADER_LEN + stored.len() + TABLE_ENTRY_LEN) as u64;
            }
        }
        let locs = locs
            .into_iter()
            .zip(ids)
            .map(|(l, id)| {
                l.or_else(|| placed.get(id).copied())
                    .ok_or_else(|| Error::InvalidArgument(format!("chunk {id} was not placed")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((locs, new_chunks, new_bytes))
    }

    fn append_locked(
        &self,
        w: &mut WriterState,
        id: ChunkId,
        raw_len: u32,
        compression: crate::format::Compression,
        stored: &[u8],
    ) -> Result<()> {
        let storage = self.inner.storage.as_ref();
        if let Some(open) = &w.open {
            if !open.entries.is_empty()
                && open.sealed_len_with(stored.len()) > self.inner.opts.pack_target_bytes
            {
                self.seal_locked(w)?;
            }
        }
        if w.open.is_none() {
            w.open = Some(OpenPack::create(storage, self.tmp_name("pack"))?);
        }
        if let Some(open) = w.open.as_mut() {
            open.append(storage, id, raw_len, compression, stored)?;
        }
        Ok(())
    }

    /// Seals the open pack (durably) and records it in the index.
    fn seal_locked(&self, w: &mut WriterState) -> Result<()> {
        let Some(open) = w.open.take() else {
            return Ok(());
        };
        let sealed = open.seal(self.inner.storage.as_ref())?;
        let info = PackInfo {
            size: sealed.size,
            chunk_count: sealed.entries.len() as u32,
            raw_bytes: sealed.raw_bytes,
        };
        self.inner
            .index
            .add_pack(sealed.id, info, &sealed.entries)?;
        tracing::debug!(pack = %sealed.id, chunks = sealed.entries.len(), size = sealed.size, "sealed pack");
        w.seq += 1;
        Ok(())
    }

    /// Makes sure pack `seq` is sealed.
    fn ensure_sealed(&self, seq: u64) -> Result<()> {
        let mut w = lock(&self.inner.writer);
        self.check_poison()?;
        if w.seq == seq && w.open.is_some() {
            let r = self.seal_locked(&mut w);
            self.poison_on(r)?;
        }
        Ok(())
    }

    // ------------------------------------------------------------ refs

    /// Points ref `name` at `file` (durably).
    pub fn set_ref(&self, name: &str, file: FileId) -> Result<()> {
        validate_ref(name)?;
        self.check_poison()?;
        if !self.inner.index.has_file(&file)? {
            return Err(Error::not_found("file", &file.to_hex()));
        }
        let r = self.write_ref_file(name, &file);
        self.poison_on(r)?;
        self.inner.index.set_ref(name, file)?;
        let r = self.inner.index.flush();
        self.poison_on(r)
    }

    pub(crate) fn write_ref_file(&self, name: &str, file: &FileId) -> Result<()> {
        let tmp = self.tmp_name("ref");
        write_atomic(
            self.inner.storage.as_ref(),
            &self.inner.root,
            &tmp,
            &ref_path(name),
            &encode_ref(name, file),
        )
    }

    /// Resolves a ref. A ref the index lacks whose ref file exists and names
    /// a file whose recipe file is missing or damaged is damage, not absence
    /// ([`Error::RefDangling`]). (A ref file naming a file with an intact
    /// recipe file belongs to a commit in flight, or one that failed: not
    /// found until it is indexed.)
    pub fn resolve_ref(&self, name: &str) -> Result<FileId> {
        if let Some(id) = self.inner.index.get_ref(name)? {
            return Ok(id);
        }
        if let Ok(Some(file)) = self.read_ref_file(name) {
            let recipe = self.inner.storage.read(&recipe_path(&file));
            if !recipe.is_ok_and(|b| Recipe::decode(file, &b).is_ok()) {
                return Err(Error::RefDangling {
                    name: crate::error::clip(name),
                    file,
                });
            }
        }
        Err(Error::not_found("ref", name))
    }

    /// Deletes a ref (durably). Deleting a missing ref is "not found". A ref
    /// file the index does not know (damaged, or naming a file that is not
    /// stored) is deleted too: that is how a user acknowledges its loss.
    pub fn delete_ref(&self, name: &str) -> Result<()> {
        self.check_poison()?;
        let rel = ref_path(name);
        let storage = self.inner.storage.as_ref();
        let on_disk = storage
            .exists(&rel)
            .map_err(|e| Error::io("stat", self.inner.root.join(&rel), e))?;
        if self.inner.index.get_ref(name)?.is_none() && !on_disk {
            return Err(Error::not_found("ref", name));
        }
        let r = match storage.remove_file(&rel) {
            Ok(()) => storage
                .sync_dir(parent(&rel))
                .map_err(|e| Error::io("fsync directory", self.inner.root.join(parent(&rel)), e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove ref", self.inner.root.join(&rel), e)),
        };
        self.poison_on(r)?;
        self.inner.index.delete_ref(name)?;
        let r = self.inner.index.flush();
        self.poison_on(r)
    }

    /// Refs whose names start with `prefix` (all refs for ""), by name.
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, FileId)>> {
        self.inner.index.refs_with_prefix(prefix)
    }

    /// Reads a ref file from disk (the durable copy of a ref).
    pub fn read_ref_file(&self, name: &str) -> Result<Option<FileId>> {
        let rel = ref_path(name);
        match self.inner.storage.read(&rel) {
            Ok(b) => {
                let (n, id) = decode_ref(&b).map_err(|detail| Error::IndexCorrupt {
                    tree: "refs",
                    key: name.to_string(),
                    detail: format!("ref file {rel}: {detail}"),
                })?;
                Ok((n == name).then_some(id))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io("read ref", self.inner.root.join(rel), e)),
        }
    }

    // ------------------------------------------------------------ reads

    /// Resolves a user-supplied name (spec §8.2): `file:ID`, `sha256:HEX` or
    /// `ref:NAME` explicitly; a bare 64-hex string is a file id, else the
    /// sha256 of a stored file's content; anything else is a ref.
    pub fn resolve(&self, name: &str) -> Result<FileId> {
        let hex_id = |s: &str, kind: &'static str| {
            FileId::from_hex(s).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "{kind} {:?} is not 64 hex digits",
                    crate::error::clip(s)
                ))
            })
        };
        if let Some(rest) = name.strip_prefix("file:") {
            let id = hex_id(rest, "file id")?;
            return match self.inner.index.has_file(&id)? {
                true => Ok(id),
                false => Err(Error::not_found("file", rest)),
            };
        }
        if let Some(rest) = name.strip_prefix("sha256:") {
            return self.by_sha256(&Sha256(hex_id(rest, "sha256")?.0));
        }
        if let Some(rest) = name.strip_prefix("ref:") {
            return self.resolve_ref(rest);
        }
        if is_hex64(name) {
            let id = hex_id(name, "file id")?;
            if self.inner.index.has_file(&id)? {
                return Ok(id);
            }
            return match self.inner.index.by_sha256(&Sha256(id.0))? {
                Some(f) => Ok(f),
                None => Err(Error::not_found("file id or sha256", name)),
            };
        }
        self.resolve_ref(name)
    }

    /// Looks a file up by the sha256 of its content.
    pub fn by_sha256(&self, sha: &Sha256) -> Result<FileId> {
        self.inner
            .index
            .by_sha256(sha)?
            .ok_or_else(|| Error::not_found("sha256", &sha.to_hex()))
    }

    /// Whether a file is in the store.
    pub fn contains(&self, file: &FileId) -> Result<bool> {
        self.inner.index.has_file(file)
    }

    /// The checked recipe of a file, with its prefix sums. Falls back to the
    /// recipe file when the index copy is damaged.
    pub fn layout(&self, file: &FileId) -> Result<Arc<Layout>> {
        if let Some(l) = lock(&self.inner.recipes).get(file) {
            return Ok(l);
        }
        let bytes = self
            .inner
            .index
            .recipe_bytes(file)?
            .ok_or_else(|| Error::not_found("file", &file.to_hex()))?;
        let recipe = match Recipe::decode(*file, &bytes) {
            Ok(r) => r,
            Err(first) => {
                let rel = recipe_path(file);
                let from_disk = self
                    .inner
                    .storage
                    .read(&rel)
                    .ok()
                    .map(|b| Recipe::decode(*file, &b));
                match from_disk {
                    Some(Ok(r)) => {
                        tracing::warn!(file = %file, "index copy of recipe is damaged; using recipe file");
                        r
                    }
                    _ => return Err(recipe_error(*file, first)),
                }
            }
        };
        let layout = Arc::new(Layout::new(recipe));
        lock(&self.inner.recipes).insert(*file, layout.clone());
        Ok(layout)
    }

    /// Size, chunks, terms, packs and sha256 of a file.
    pub fn info(&self, file: &FileId) -> Result<FileInfo> {
        let l = self.layout(file)?;
        Ok(FileInfo {
            file_id: *file,
            sha256: l.recipe.sha256,
            size: l.size(),
            chunks: l.chunk_count() as u64,
            terms: l.recipe.terms.len() as u64,
            packs: l.packs(),
        })
    }

    /// An open, checked pack (cached).
    pub fn pack(&self, id: &PackId) -> Result<Arc<PackReader>> {
        if let Some(p) = lock(&self.inner.packs).get(id) {
            return Ok(p);
        }
        let p = Arc::new(PackReader::open(self.inner.storage.as_ref(), *id)?);
        lock(&self.inner.packs).insert(*id, p.clone());
        Ok(p)
    }

    /// Reads chunk `i` of a layout, verified.
    pub(crate) fn read_chunk(&self, layout: &Layout, i: usize) -> Result<Bytes> {
        let c = layout.chunk(i).ok_or_else(|| Error::RecipeCorrupt {
            file: layout.recipe.file,
            detail: format!("chunk {i} out of range"),
        })?;
        self.pack(&c.pack)?.read_chunk(c.pack_index, &c.id)
    }

    /// Opens (checking each footer) every pack that holds a byte of
    /// `offset..offset+len` of `file`, so that a missing or truncated pack
    /// fails before a reader returns any byte.
    pub fn open_packs(&self, file: &FileId, offset: u64, len: u64) -> Result<()> {
        let layout = self.layout(file)?;
        if len == 0 || offset >= layout.size() {
            return Ok(());
        }
        let end = offset.saturating_add(len).min(layout.size());
        let (first, last) = (layout.term_at(offset), layout.term_at(end - 1));
        let mut seen = HashSet::new();
        for t in layout.recipe.terms.iter().take(last + 1).skip(first) {
            if seen.insert(t.pack) {
                self.pack(&t.pack)?;
            }
        }
        Ok(())
    }

    /// A streaming, seekable reader over a file's content.
    pub fn read(&self, file: &FileId) -> Result<FileReader> {
        Ok(FileReader::new(self.clone(), self.layout(file)?))
    }

    /// Reads `len` bytes at `offset`, touching only the chunks that cover them.
    pub fn read_range(&self, file: &FileId, offset: u64, len: u64) -> Result<Bytes> {
        let layout = self.layout(file)?;
        let size = layout.size();
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Error::RangeOutOfBounds {
                file: *file,
                offset,
                len,
                size,
            });
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset + len;
        let first = layout.chunk_at(offset);
        let last = layout.chunk_at(end - 1);
        let parts: Vec<Bytes> = (first..=last)
            .into_par_iter()
            .map(|i| {
                let data = self.read_chunk(&layout, i)?;
                let start = layout.chunk(i).map_or(0, |c| c.file_offset);
                let lo = offset.saturating_sub(start) as usize;
                let hi = ((end - start) as usize).min(data.len());
                Ok(data.slice(lo.min(hi)..hi))
            })
            .collect::<Result<_>>()?;
        if parts.len() == 1 {
            return Ok(parts.into_iter().next().unwrap_or_default());
        }
        let mut out = BytesMut::with_capacity(len as usize);
        for p in parts {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Store-wide figures.
    pub fn stats(&self) -> Result<Stats> {
        let Counters {
            files,
            refs,
            chunks,
            packs,
            logical_bytes,
            stored_bytes,
            chunk_bytes,
        } = self.inner.index.counters()?;
        Ok(Stats {
            files,
            refs,
            chunks,
            packs,
            logical_bytes,
            stored_bytes,
            unique_bytes: chunk_bytes,
            dedup_ratio: if stored_bytes == 0 {
                1.0
            } else {
                logical_bytes as f64 / stored_bytes as f64
            },
            chunking: self.inner.config.chunking,
        })
    }

    /// Flushes the index (everything acknowledged is already durable; this
    /// only shortens recovery).
    pub fn flush(&self) -> Result<()> {
        self.inner.index.flush()
    }
}

/// What a directory without a store config holds.
enum DirState {
    /// Nothing, or only the skeleton a crashed creation leaves: a store may
    /// be created here.
    Fresh,
    /// Packs, recipes, refs or markers of a store: its config was lost.
    Store(String),
    /// Anything else: not ours to touch.
    Foreign(String),
}

/// Tells an empty directory (or the remains of a creation that crashed
/// before writing the config, spec §4) from a store that lost its config
/// and from a directory that is none of our business.
fn classify_without_config(root: &Path, storage: &dyn Storage) -> Result<DirState> {
    let list = |rel: &str| match storage.list_dir(rel) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Some(Vec::new())),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => Ok(None),
        Err(e) => Err(Error::io("list directory", root.join(rel), e)),
    };
    let Some(top) = list("")? else {
        return Ok(DirState::Foreign("it is not a directory".into()));
    };
    let mut stored = 0usize;
    for name in top {
        match name.as_str() {
            // The lock file is taken before anything else is created.
            "lock" => {}
            // sled writes its files only once the config exists.
            "index" => {
                let dir = root.join("index");
                let used = std::fs::read_dir(&dir).map(|mut d| d.next().is_some());
                if used.unwrap_or(false) {
                    return Ok(DirState::Store("index/ holds an index".into()));
                }
            }
            DIRTY_FILE | crate::recover::CLEAN_FILE => {
                return Ok(DirState::Store(format!("it holds the `{name}` marker")))
            }
            "packs" | "recipes" | "refs" => {
                let Some(fans) = list(&name)? else {
                    return Ok(DirState::Foreign(format!("{name} is not a directory")));
                };
                for fan in fans {
                    let is_fan = fan.len() == 2 && fan.bytes().all(|b| b.is_ascii_hexdigit());
                    match list(&format!("{name}/{fan}"))? {
                        Some(files) if is_fan => stored += files.len(),
                        _ => return Ok(DirState::Foreign(format!("it holds {name}/{fan}"))),
                    }
                }
            }
            "tmp" => match list("tmp")? {
                Some(v) if v.iter().all(|n| n == "config.new") => {}
                _ => return Ok(DirState::Foreign("tmp/ holds files".into())),
            },
            other => {
                return Ok(DirState::Foreign(format!(
                    "it holds {:?}",
                    crate::error::clip(other)
                )))
            }
        }
    }
    Ok(match stored {
        0 => DirState::Fresh,
        n => DirState::Store(format!("{n} pack, recipe or ref files")),
    })
}

/// Takes the store's exclusive lock (`STORE/lock`, an advisory `flock`
/// released by the kernel when the process exits, however it exits) and
/// records our pid in it for the error message of the next would-be opener.
pub(crate) fn lock_store(root: &Path, wait: Option<std::time::Duration>) -> Result<std::fs::File> {
    use std::io::{Seek, Write};
    let path = root.join("lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io("open lock file", &path, e))?;
    let deadline = wait.map(|w| std::time::Instant::now().checked_add(w));
    loop {
        match f.try_lock() {
            Err(std::fs::TryLockError::WouldBlock)
                if deadline.is_some_and(|d| d.is_none_or(|d| std::time::Instant::now() < d)) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            r => break lock_result(r, root, &path)?,
        }
    }
    let r = f
        .set_len(0)
        .and_then(|()| f.seek(std::io::SeekFrom::Start(0)))
        .and_then(|_| writeln!(f, "{}", std::process::id()));
    r.map_err(|e| Error::io("write lock file", &path, e))?;
    Ok(f)
}

fn lock_result(
    r: std::result::Result<(), std::fs::TryLockError>,
    root: &Path,
    path: &Path,
) -> Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => {
            let pid = std::fs::read_to_string(path)
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0);
            Err(Error::StoreLocked {
                path: root.to_path_buf(),
                pid,
            })
        }
        Err(std::fs::TryLockError::Error(e)) => Err(Error::io("lock", path, e)),
    }
}

pub(crate) fn recipe_error(file: FileId, e: RecipeError) -> Error {
    match e {
        RecipeError::Corrupt(detail) => Error::RecipeCorrupt { file, detail },
        RecipeError::Version(v) => Error::UnsupportedVersion {
            object: format!("recipe of file {file}"),
            found: v,
            supported: FORMAT_VERSION,
        },
    }
}

fn parent(rel: &str) -> &str {
    rel.rsplit_once('/').map_or("", |(d, _)| d)
}

/// Writes `data` to `dest` durably: temp file → fsync → rename → fsync directory.
pub(crate) fn write_atomic(
    storage: &dyn Storage,
    root: &Path,
    tmp: &str,
    dest: &str,
    data: &[u8],
) -> Result<()> {
    let mut h = storage
        .create_new(tmp)
        .map_err(|e| Error::io("create", root.join(tmp), e))?;
    h.write_all(data)
        .map_err(|e| Error::io("write", root.join(tmp), e))?;
    h.sync()
        .map_err(|e| Error::io("fsync", root.join(tmp), e))?;
    drop(h);
    storage
        .rename(tmp, dest)
        .map_err(|e| Error::io("rename", root.join(dest), e))?;
    let dir = parent(dest);
    storage
        .sync_dir(dir)
        .map_err(|e| Error::io("fsync directory", root.join(dir), e))
}

/// How a regular file changed between two `stat`s around reading `read`
/// bytes of it, if it did.
fn source_change(
    before: &std::fs::Metadata,
    after: &std::fs::Metadata,
    read: u64,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if before.len() != after.len() {
        return Some(format!(
            "its size went from {} to {} bytes",
            before.len(),
            after.len()
        ));
    }
    if read != before.len() {
        return Some(format!("{read} bytes read of {}", before.len()));
    }
    if (before.mtime(), before.mtime_nsec()) != (after.mtime(), after.mtime_nsec()) {
        return Some("it was modified".into());
    }
    if (before.ctime(), before.ctime_nsec()) != (after.ctime(), after.ctime_nsec()) {
        return Some("its status changed".into());
    }
    None
}

/// A file ingested but not yet committed.
struct Staged {
    file: FileId,
    sha: Sha256,
    size: u64,
    chunks: Vec<(ChunkId, u32)>,
    locs: Vec<Loc>,
    refs: Vec<String>,
    new_chunks: u64,
    new_bytes: u64,
}

/// A group of ingests made durable together. Nothing is acknowledged until
/// [`Ingest::commit`] returns; dropping an uncommitted ingest leaves only
/// unreferenced chunks behind.
pub struct Ingest<'s> {
    store: &'s Store,
    staged: Vec<Staged>,
}

impl Ingest<'_> {
    /// Chunks, hashes, dedups and stores the new chunks of one file, streaming
    /// from `reader` in bounded batches. `progress` is called with the bytes
    /// consumed so far. Returns the file id (not yet durable).
    pub fn add(
        &mut self,
        reader: impl Read + Send,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileId> {
        let staged = self.stage(reader, Path::new("<input>"), refs, progress)?;
        let file = staged.file;
        self.staged.push(staged);
        Ok(file)
    }

    /// Like [`Ingest::add`] for a file on disk, refusing one that changes
    /// while it is read: for a regular file, its size, modification and
    /// change times must be the same before and after, and the bytes read
    /// must equal its size ([`Error::SourceChanged`], nothing staged).
    pub fn add_file(
        &mut self,
        path: &Path,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileId> {
        let file = std::fs::File::open(path).map_err(|e| Error::io("open input", path, e))?;
        let stat = |f: &std::fs::File| f.metadata().map_err(|e| Error::io("stat input", path, e));
        let before = stat(&file)?;
        if before.is_dir() {
            return Err(Error::io(
                "open input",
                path,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let staged = self.stage(
            std::io::BufReader::with_capacity(1 << 20, &file),
            path,
            refs,
            progress,
        )?;
        if before.is_file() {
            let after = stat(&file)?;
            if let Some(detail) = source_change(&before, &after, staged.size) {
                return Err(Error::SourceChanged {
                    path: path.to_path_buf(),
                    detail,
                });
            }
        }
        let id = staged.file;
        self.staged.push(staged);
        Ok(id)
    }

    fn stage(
        &mut self,
        reader: impl Read + Send,
        source: &Path,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Staged> {
        let store = self.store;
        store.check_poison()?;
        for r in refs {
            validate_ref(r)?;
        }
        let opts = &store.inner.opts;
        let chunker = Chunker::new(reader, store.inner.config.chunking, opts.ingest_batch_bytes)?;
        let mut fid = FileIdHasher::new();
        let mut size = 0u64;
        let mut chunks = Vec::new();
        let mut locs = Vec::new();
        let (mut new_chunks, mut new_bytes) = (0u64, 0u64);
        let input_err = |e| Error::io("read input", source, e);
        // Two-stage pipeline: a producer thread reads, cuts and SHA-256s the
        // next batch while this thread hashes, dedups and stores the current
        // one. The channel holds one batch, so at most three batches are in
        // memory at once.
        let sha = std::thread::scope(|scope| -> Result<Sha256> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Batch>>(1);
            let producer = scope.spawn(move || {
                let mut chunker = chunker;
                let mut sha = sha2::Sha256::new();
                loop {
                    match chunker.next_batch() {
                        Ok(Some(b)) => {
                            sha.update(&b.data);
                            if tx.send(Ok(b)).is_err() {
                                return None;
                            }
                        }
                        Ok(None) => return Some(Sha256(sha.finalize().into())),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return None;
                        }
                    }
                }
            });
            for batch in rx {
                let batch = batch.map_err(input_err)?;
                let pieces: Vec<Bytes> = batch.chunk_bytes().collect();
                let ids: Vec<ChunkId> = pieces.par_iter().map(|c| ChunkId::of(c)).collect();
                let (l, n, b) = store.store_chunks(&ids, &pieces)?;
                for (id, p) in ids.iter().zip(&pieces) {
                    fid.push(id, p.len() as u64);
                    chunks.push((*id, p.len() as u32));
                }
                locs.extend(l);
                new_chunks += n;
                new_bytes += b;
                size += batch.data.len() as u64;
                progress(size);
            }
            producer
                .join()
                .ok()
                .flatten()
                .ok_or_else(|| input_err(std::io::Error::other("input reader thread failed")))
        })?;
        Ok(Staged {
            file: fid.finish(),
            sha,
            size,
            chunks,
            locs,
            refs: refs.iter().map(|s| s.to_string()).collect(),
            new_chunks,
            new_bytes,
        })
    }

    /// Number of files staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Makes every staged file durable and acknowledges it: packs sealed and
    /// fsynced → recipe and ref files written → index updated and flushed.
    pub fn commit(self) -> Result<Vec<PutReport>> {
        let store = self.store;
        let inner = &*store.inner;
        let mut seqs: Vec<u64> = self
            .staged
            .iter()
            .flat_map(|s| s.locs.iter())
            .filter_map(|l| match l {
                Loc::Open { seq } => Some(*seq),
                Loc::Sealed { .. } => None,
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            store.ensure_sealed(seq)?;
        }
        // Every recipe and ref file first, then the whole group is indexed
        // in one transaction: readers see all of its files or none.
        let mut done: Vec<(Vec<String>, Vec<u8>, PutReport)> =
            Vec::with_capacity(self.staged.len());
        for s in self.staged {
            // Resolve chunks that were in an open pack to their sealed pack.
            let mut terms: Vec<Term> = Vec::new();
            for ((id, len), loc) in s.chunks.iter().zip(&s.locs) {
                let (pack, index) = match *loc {
                    Loc::Sealed { pack, index } => (pack, index),
                    Loc::Open { .. } => {
                        let l = inner.index.chunk(id)?.ok_or_else(|| {
                            Error::Poisoned(format!("chunk {id} was not sealed by its pack writer"))
                        })?;
                        (l.pack, l.index)
                    }
                };
                match terms.last_mut() {
                    Some(t)
                        if t.pack == pack
                            && t.first_chunk.checked_add(t.chunk_count) == Some(index) =>
                    {
                        t.chunk_count += 1;
                        t.unpacked_len += u64::from(*len);
                    }
                    _ => terms.push(Term {
                        pack,
                        first_chunk: index,
                        chunk_count: 1,
                        unpacked_len: u64::from(*len),
                    }),
                }
            }
            let recipe = Recipe {
                file: s.file,
                sha256: s.sha,
                size: s.size,
                terms,
                chunks: s.chunks,
            };
            let bytes = recipe.encode();
            let rel = recipe_path(&s.file);
            let mut new_bytes = s.new_bytes;
            // The recipe file must say exactly what the index will say. A
            // file left by an ingest that crashed before its index flush may
            // name packs the index no longer knows (their chunks were then
            // stored again elsewhere): replace it.
            let current = match inner.storage.read(&rel) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("read recipe", inner.root.join(&rel), e)),
            };
            if current.as_deref() != Some(&bytes[..]) {
                let r = write_atomic(
                    inner.storage.as_ref(),
                    &inner.root,
                    &store.tmp_name("recipe"),
                    &rel,
                    &bytes,
                );
                store.poison_on(r)?;
                new_bytes += bytes.len() as u64;
            }
            for r in &s.refs {
                let w = store.write_ref_file(r, &s.file);
                store.poison_on(w)?;
            }
            let report = PutReport {
                file_id: s.file,
                sha256: s.sha,
                size: s.size,
                chunks: recipe.chunks.len() as u64,
                new_chunks: s.new_chunks,
                new_bytes,
                new_file: false,
            };
            done.push((s.refs, bytes, report));
        }
        let batch: Vec<NewFile<'_>> = done
            .iter()
            .map(|(refs, bytes, r)| NewFile {
                file: r.file_id,
                sha: r.sha256,
                size: r.size,
                recipe: bytes,
                refs,
            })
            .collect();
        let new = inner.index.add_files(&batch);
        let new = store.poison_on(new)?;
        drop(batch);
        let reports: Vec<PutReport> = done
            .into_iter()
            .zip(new)
            .map(|((_, _, r), new_file)| PutReport { new_file, ..r })
            .collect();
        let r = inner.index.flush();
        store.poison_on(r)?;
        Ok(reports)
    }
}
