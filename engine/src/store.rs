//! The store: the public façade. Each method is one call into the module
//! that implements the operation (`ingest`, `read`, `refs`, `verify`,
//! `recover`/`repair`) over the shared state of the open store.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use crate::chunking::ChunkParams;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::gc::{self, GcOptions, GcReport};
use crate::ids::{ChunkId, FileId, PackId, Sha256};
use crate::index::Counters;
use crate::ingest::{Ingest, PutReport};
use crate::local::Local;
use crate::options::StoreOptions;
use crate::read::{self, FileInfo, FileReader};
use crate::refresh::{self, RefreshReport};
use crate::remote;
use crate::repack::{self, RepackOptions, RepackReport};
use crate::repair::{self, ConfigRepair};
use crate::report::{Recovery, RepairReport};
use crate::shared_gc;
use crate::storage::{DirStore, ObjectStore};
use crate::transfer::{
    self, AdmitReport, Assembly, DownloadPlan, PackBytes, Reconstruction, VerifiedChunks,
};
use crate::verify::{self, VerifyOptions, VerifyReport};
use crate::{open, refs, shared_refs};

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

/// A content-addressed chunk store. Cheap to clone; `Send + Sync`, usable
/// from many threads at once. One process at a time opens a store.
#[derive(Clone)]
pub struct Store {
    core: Arc<Core>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("location", &self.core.location())
            .finish()
    }
}

fn dir_store(root: &Path, opts: &StoreOptions) -> Arc<dyn ObjectStore> {
    Arc::new(DirStore::new(root, opts.read_mode))
}

impl Store {
    /// Opens the store in directory `root` (creating it if `opts.create`
    /// and the directory is new or empty).
    pub fn open(root: impl AsRef<Path>, opts: StoreOptions) -> Result<Store> {
        let root = root.as_ref();
        Self::open_with(dir_store(root, &opts), root, opts)
    }

    /// Opens a store over any storage backend; its local state (the index
    /// and the lock) lives in `local_dir`.
    pub fn open_with(
        objects: Arc<dyn ObjectStore>,
        local_dir: impl Into<PathBuf>,
        opts: StoreOptions,
    ) -> Result<Store> {
        let store = Store {
            core: open::open(objects, Local::new(local_dir), opts)?,
        };
        if let (true, Some(after)) = (store.is_shared(), store.core.opts.refresh_after) {
            let stale = store
                .last_refresh()
                .and_then(|t| t.elapsed().ok())
                .is_none_or(|age| age >= after);
            if stale {
                store.refresh()?;
            }
        }
        Ok(store)
    }

    /// Closes the store cleanly and reports whether that worked: the index
    /// is flushed, the clean-close record written and the `dirty` marker
    /// removed (a store dropped without `close` does the same, logging a
    /// failure). With other handles to the store still alive, only flushes:
    /// the last handle to go closes.
    pub fn close(self) -> Result<()> {
        match Arc::try_unwrap(self.core) {
            Ok(core) => core.close(),
            Err(core) => core.index.flush(),
        }
    }

    /// Whether an earlier failed write made the store refuse writes
    /// ([`Error::Poisoned`]); reads still work.
    pub fn is_poisoned(&self) -> bool {
        self.core.is_poisoned()
    }

    /// Lets writes in again after a failed write poisoned the store, without
    /// closing it (what a long-running server does once the disk has room
    /// again or the bucket answers again). Waits up to `wait` for writers,
    /// GC and repack to finish, then does what opening the store after an
    /// unclean shutdown does: drops the open pack (nothing in it was
    /// acknowledged), flushes the index, finishes an interrupted GC and
    /// catches the index up with the objects — so an operation that failed
    /// is, as after a crash, either wholly there or not at all. Returns what
    /// the catch-up did, or `None` when the store was not poisoned. On an
    /// error (the cause persists) the store stays poisoned; try again later.
    pub fn recover_poisoned(&self, wait: std::time::Duration) -> Result<Option<RepairReport>> {
        crate::open::recover_poisoned(&self.core, wait)
    }

    /// Where the store is (a directory, or a URL).
    pub fn location(&self) -> String {
        self.core.location()
    }

    /// Where this process keeps the store's local state: its index and
    /// lock (for a directory store, the store's directory).
    pub fn local_dir(&self) -> &Path {
        &self.core.local_dir
    }

    /// The chunking parameters of this store.
    pub fn chunk_params(&self) -> ChunkParams {
        self.core.config.chunking
    }

    /// The options the store was opened with.
    pub fn options(&self) -> &StoreOptions {
        &self.core.opts
    }

    /// What the open did to bring the index up to date, if anything.
    pub fn recovery(&self) -> Option<Recovery> {
        self.core.recovery.get().cloned()
    }

    // ------------------------------------------------------------ ingest

    /// Starts a group of ingests that are made durable together by
    /// [`Ingest::commit`] (one pack seal, one index flush for many files).
    pub fn ingest(&self) -> Ingest<'_> {
        Ingest::new(&self.core)
    }

    /// Ingests one file read from `reader` (named `source` in errors) and
    /// commits it; `refs` are set to it.
    pub fn put(&self, source: &str, reader: impl Read + Send, refs: &[&str]) -> Result<PutReport> {
        let mut ing = self.ingest();
        ing.add(source, reader, refs, &mut |_| {})?;
        ing.commit()?
            .pop()
            .ok_or_else(|| Error::Bug("a commit of one file reported none".into()))
    }

    /// Ingests one file from disk and commits it; `refs` are set to it. A
    /// file that changes while it is read is refused
    /// ([`Error::SourceChanged`]).
    pub fn put_file(&self, path: impl AsRef<Path>, refs: &[&str]) -> Result<PutReport> {
        let mut ing = self.ingest();
        ing.add_file(path.as_ref(), refs, &mut |_| {})?;
        ing.commit()?
            .pop()
            .ok_or_else(|| Error::Bug("a commit of one file reported none".into()))
    }

    /// Puts a byte slice (convenience for small data and tests).
    pub fn put_bytes(&self, data: &[u8], refs: &[&str]) -> Result<PutReport> {
        self.put("bytes in memory", data, refs)
    }

    // ------------------------------------------------------------ reads

    /// A streaming, seekable reader over a file's content.
    pub fn read(&self, file: &FileId) -> Result<FileReader> {
        FileReader::new(&self.core, file)
    }

    /// Reads `len` bytes at `offset`, touching only the chunks that cover them.
    pub fn read_range(&self, file: &FileId, offset: u64, len: u64) -> Result<Bytes> {
        remote::retry_stale(&self.core, file, || {
            read::read_range(&self.core, file, offset, len)
        })
    }

    /// Opens (checking each footer) every pack that holds a byte of
    /// `offset..offset+len` of `file`, so that a missing or truncated pack
    /// fails before a reader returns any byte.
    pub fn open_packs(&self, file: &FileId, offset: u64, len: u64) -> Result<()> {
        remote::retry_stale(&self.core, file, || {
            read::open_packs(&self.core, file, offset, len)
        })
    }

    /// Size, chunks, terms, packs and sha256 of a file.
    pub fn info(&self, file: &FileId) -> Result<FileInfo> {
        read::info(&self.core, file)
    }

    /// What a stored file is (spec §7.2): its model format, tensors (name,
    /// dtype, shape, byte offset and length) and pickle imports with the
    /// verdict, as seen at ingest (computed by reading the file, once, for
    /// files stored before descriptions existed).
    pub fn model_info(&self, file: &FileId) -> Result<crate::ModelInfo> {
        crate::models::read(&self.core, file)
    }

    /// Applies the store's pickle policy to a stored file, by its model
    /// description: `Refused` (naming the file and its unsafe imports) when
    /// the policy forbids it. What a pull checks before it writes out a file
    /// the store holds already (perhaps stored under another policy).
    pub fn check_policy(&self, file: &FileId) -> Result<()> {
        let info = self.model_info(file)?;
        crate::models::check_policy(&self.core, &format!("file {file}"), &info)
    }

    /// Where tensor `name` of a model file lies: (offset, length) of its
    /// bytes in the file. `NotFound` (naming the tensor, the file and its
    /// format) when the description has no such tensor; `TensorUnreadable`
    /// when it lists the tensor without a plain run of bytes in the file
    /// (external, typed or compressed data) or lists several under the name
    /// (formats whose readers disagree on which one counts).
    pub fn tensor_range(&self, file: &FileId, name: &str) -> Result<(u64, u64)> {
        let model = self.model_info(file)?;
        let unreadable = |reason: String| Error::TensorUnreadable {
            file: *file,
            name: crate::error::clip(name),
            reason,
        };
        let mut found = model.tensors.iter().filter(|t| t.name == name);
        match (found.next(), found.count()) {
            (None, _) => Err(Error::NotFound {
                kind: "tensor",
                name: format!(
                    "{} in file {file} ({} tensors, format {})",
                    crate::error::clip(name),
                    model.tensors.len(),
                    model.format.as_str()
                ),
            }),
            (Some(_), more) if more > 0 => Err(unreadable(format!(
                "{} tensors of this {} file have that name",
                more + 1,
                model.format.as_str()
            ))),
            (Some(t), _) => match t.offset {
                Some(offset) => Ok((offset, t.length)),
                None if t.length == 0 => Err(unreadable(format!(
                    "it has no bytes in this {} file (an empty tensor, or a data type without a fixed size)",
                    model.format.as_str()
                ))),
                None => Err(unreadable(format!(
                    "its {} bytes are not stored as one plain run in this {} file (external data, typed or split fields, or a compressed member; `info` lists them)",
                    t.length,
                    model.format.as_str()
                ))),
            },
        }
    }

    /// Whether a file is in the store (on a shared store, looking in the
    /// bucket when this node's index lacks it).
    pub fn contains(&self, file: &FileId) -> Result<bool> {
        refs::has_file(&self.core, file)
    }

    // ------------------------------------------------------------ names

    /// Resolves a user-supplied name (spec §8.2): `file:ID`, `sha256:HEX`
    /// or `ref:NAME` explicitly; a bare 64-hex string is a file id, else
    /// the sha256 of a stored file's content; anything else is a ref.
    pub fn resolve(&self, name: &str) -> Result<FileId> {
        refs::resolve(&self.core, name)
    }

    /// Resolves a ref (see [`Error::RefDangling`] for a ref whose file's
    /// recipe is lost).
    pub fn resolve_ref(&self, name: &str) -> Result<FileId> {
        refs::resolve_ref(&self.core, name)
    }

    /// Looks a file up by the sha256 of its content.
    pub fn by_sha256(&self, sha: &Sha256) -> Result<FileId> {
        refs::by_sha256(&self.core, sha)
    }

    /// Points ref `name` at `file` (durably).
    pub fn set_ref(&self, name: &str, file: FileId) -> Result<()> {
        refs::set(&self.core, name, file)
    }

    /// Points ref `name` at `file` only if it names `expected` now (`None`:
    /// only if there is no such ref); otherwise [`Error::RefConflict`] and
    /// nothing is written. On a store shared by several processes this is
    /// a conditional write: of racing updates that expect the same state,
    /// exactly one succeeds (spec §8.3).
    pub fn compare_and_set_ref(
        &self,
        name: &str,
        expected: Option<FileId>,
        file: FileId,
    ) -> Result<()> {
        refs::compare_and_set(&self.core, name, expected, file)
    }

    /// Deletes a ref (durably); also a damaged ref the index no longer lists.
    pub fn delete_ref(&self, name: &str) -> Result<()> {
        refs::delete(&self.core, name)
    }

    /// Refs whose names start with `prefix` (all refs for ""), by name.
    pub fn list_refs(&self, prefix: &str) -> Result<Vec<(String, FileId)>> {
        self.core.index.refs_with_prefix(prefix)
    }

    /// Reads a ref's durable copy (its ref object).
    pub fn read_ref_file(&self, name: &str) -> Result<Option<FileId>> {
        shared_refs::read_ref(&self.core, name)
    }

    // ------------------------------------------------------------ store

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
        } = self.core.index.counters()?;
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
            chunking: self.core.config.chunking,
        })
    }

    /// Whether other processes may use this store at the same time (a
    /// bucket shared by several nodes: see [`crate::storage::ObjectStore::shared`]).
    pub fn is_shared(&self) -> bool {
        self.core.objects.shared()
    }

    /// Brings this node's index up to date with a listing of a shared
    /// store: packs and recipes other nodes wrote are indexed, changed refs
    /// applied and deleted ones removed (spec §4.3). A store that is not
    /// shared has nothing to refresh: an empty report.
    pub fn refresh(&self) -> Result<RefreshReport> {
        if !self.is_shared() {
            return Ok(RefreshReport::default());
        }
        refresh::refresh(&self.core)
    }

    /// The ref objects the last [`Store::refresh`] could not read (a shared
    /// store; none on a directory store): their names are unknown (an
    /// object's key is a hash of its name), so [`Store::list_refs`] may lack
    /// their refs, or list what they named before.
    pub fn unreadable_refs(&self) -> Vec<crate::report::Problem> {
        crate::cache::lock(&self.core.unreadable_refs).clone()
    }

    /// When this node last finished a [`Store::refresh`] (never: `None`).
    pub fn last_refresh(&self) -> Option<std::time::SystemTime> {
        if !self.is_shared() {
            return None;
        }
        refresh::last_refresh(&self.core)
    }

    /// Bytes the index takes on disk.
    pub fn index_size(&self) -> Result<u64> {
        self.core.index.size_on_disk()
    }

    /// Flushes the index (everything acknowledged is already durable; this
    /// only shortens recovery).
    pub fn flush(&self) -> Result<()> {
        self.core.index.flush()
    }

    /// Checks the store (spec §10.4); see [`VerifyReport`].
    pub fn verify(&self, opts: VerifyOptions) -> Result<VerifyReport> {
        self.verify_with_progress(opts, &mut |_, _| {})
    }

    /// [`Store::verify`] with a progress callback: (packs done, packs total).
    pub fn verify_with_progress(
        &self,
        opts: VerifyOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        verify::verify(&self.core, opts, progress)
    }

    /// Collects garbage (spec §10.5): deletes files no ref names that are
    /// older than the grace period, and packs no live file names, and
    /// records every pack's live bytes for [`Store::repack`]. Runs beside
    /// readers and writers (it waits for writers in flight to let go while
    /// it marks and updates the index).
    pub fn gc(&self, opts: &GcOptions) -> Result<GcReport> {
        self.gc_with_progress(opts, &mut |_, _, _| {})
    }

    /// [`Store::gc`] with a progress callback: (phase, done, total).
    pub fn gc_with_progress(
        &self,
        opts: &GcOptions,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<GcReport> {
        if self.is_shared() {
            shared_gc::gc(&self.core, opts, progress)
        } else {
            gc::gc(&self.core, opts, progress)
        }
    }

    /// Runs [`Store::gc`], then rewrites packs whose live fraction is below
    /// `opts.threshold` (and combines small ones) into packs holding only
    /// live chunks, in the order files read them; recipes and the chunk
    /// index switch to the copies and the old packs are deleted (spec
    /// §10.5). Readers holding old recipes keep working.
    pub fn repack(&self, opts: &RepackOptions) -> Result<RepackReport> {
        self.repack_with_progress(opts, &mut |_, _, _| {})
    }

    /// [`Store::repack`] with a progress callback: (phase, done, total).
    pub fn repack_with_progress(
        &self,
        opts: &RepackOptions,
        progress: &mut dyn FnMut(&str, u64, u64),
    ) -> Result<RepackReport> {
        if self.is_shared() {
            shared_gc::repack(&self.core, opts, progress)
        } else {
            repack::repack(&self.core, opts, progress)
        }
    }

    /// Rebuilds the index of the store in directory `root` from its packs,
    /// recipes and refs, healing damaged recipe and ref files from the
    /// current index first (spec §10.3).
    pub fn repair_index(root: impl AsRef<Path>, opts: StoreOptions) -> Result<RepairReport> {
        let root = root.as_ref();
        Self::repair_index_with(dir_store(root, &opts), root, opts)
    }

    /// [`Store::repair_index`] over any storage backend.
    pub fn repair_index_with(
        objects: Arc<dyn ObjectStore>,
        local_dir: impl Into<PathBuf>,
        opts: StoreOptions,
    ) -> Result<RepairReport> {
        repair::repair_index(objects, Local::new(local_dir), opts)
    }

    /// Writes the config of the store in directory `root` that lost it (or
    /// whose config is corrupt), after confirming `chunking` against the
    /// stored files.
    pub fn repair_config(
        root: impl AsRef<Path>,
        chunking: ChunkParams,
        opts: &StoreOptions,
    ) -> Result<ConfigRepair> {
        let root = root.as_ref();
        repair::repair_config(
            dir_store(root, opts).as_ref(),
            &Local::new(root),
            chunking,
            opts,
        )
    }

    /// [`Store::repair_config`] over any storage backend (`local_dir`: the
    /// store's local state, a shared store's node cache). On a shared store
    /// the config is written with a conditional write: only if it is still
    /// missing (or still the corrupt version read).
    pub fn repair_config_with(
        objects: Arc<dyn ObjectStore>,
        local_dir: impl Into<PathBuf>,
        chunking: ChunkParams,
        opts: &StoreOptions,
    ) -> Result<ConfigRepair> {
        repair::repair_config(objects.as_ref(), &Local::new(local_dir), chunking, opts)
    }

    // ------------------------------------------------------------ transfer

    /// How to rebuild `file` (or `len` bytes of it at `offset`) from pack
    /// byte ranges: enough for a client to fetch with plain HTTP Range
    /// requests and verify every chunk (see `format-spec/PROTOCOL.md`).
    pub fn reconstruction(
        &self,
        file: &FileId,
        range: Option<(u64, u64)>,
    ) -> Result<Reconstruction> {
        remote::retry_stale(&self.core, file, || {
            transfer::reconstruction(&self.core, file, range)
        })
    }

    /// The byte ranges of `pack` holding records of `file`'s chunks (sorted,
    /// merged): what a pack URL handed out with `file`'s reconstruction may
    /// read (see `format-spec/PROTOCOL.md`).
    pub fn pack_spans(&self, file: &FileId, pack: &PackId) -> Result<Vec<(u64, u64)>> {
        remote::retry_stale(&self.core, file, || {
            transfer::pack_spans(&self.core, file, pack)
        })
    }

    /// Plans downloading `rec` (from another store) into this one: which
    /// chunks this store already holds, and which pack byte ranges to fetch
    /// (records less than `gap` bytes apart share a request of at most
    /// `max_request` bytes).
    pub fn plan_download(
        &self,
        rec: &Reconstruction,
        gap: u64,
        max_request: u64,
    ) -> Result<DownloadPlan> {
        transfer::plan_download(&self.core, rec, gap, max_request)
    }

    /// Which of `ids` this store does not hold (each once, in order).
    pub fn missing_chunks(&self, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
        transfer::missing_chunks(&self.core, ids)
    }

    /// Admits a pack a client uploaded, after verifying all of it (its id,
    /// footer, layout and every chunk); a refused pack leaves nothing behind.
    /// `max_raw` bounds the chunks' total decoded size, checked before any
    /// is decoded: a server passes its pack body limit, so an upload costs
    /// it at most that much decoding however well its records compress.
    pub fn admit_pack(&self, claimed: PackId, bytes: Bytes, max_raw: u64) -> Result<AdmitReport> {
        transfer::admit_pack(&self.core, claimed, bytes, max_raw)
    }

    /// Stores verified chunks (from [`crate::verify_fetched`]) durably.
    /// Returns how many were new.
    pub fn admit_chunks(&self, chunks: &VerifiedChunks) -> Result<u64> {
        transfer::admit_chunks(&self.core, chunks)
    }

    /// Starts assembling the file of `rec` (a whole-file reconstruction from
    /// another store) into `out` as its chunks arrive, in any order, from a
    /// download `plan` made by [`Store::plan_download`] for it: each batch of
    /// verified chunks given to [`Assembly::add`] is admitted into this store
    /// and written to `out` at its offsets, the chunks this store already
    /// held are read from it, and the file's SHA-256 is computed in file
    /// order as the bytes come. [`Assembly::finish`] then registers the file
    /// without reading a chunk back, and only if its SHA-256 is the one
    /// `rec` names. `out` is cut or extended to the file's size first.
    pub fn assemble(
        &self,
        rec: &Reconstruction,
        plan: &DownloadPlan,
        out: std::fs::File,
    ) -> Result<Assembly> {
        Assembly::new(self.core.clone(), rec, plan, out)
    }

    /// Registers a file from its chunk list, only when every chunk is
    /// stored; its SHA-256 is computed from the stored chunks (a claimed one
    /// must match). Sets `refs` to it.
    pub fn register_file(
        &self,
        file: FileId,
        size: u64,
        chunks: &[(ChunkId, u32)],
        claimed_sha256: Option<Sha256>,
        refs: &[&str],
    ) -> Result<PutReport> {
        transfer::register_file(&self.core, file, size, chunks, claimed_sha256, refs)
    }

    /// A stored pack, opened to serve its bytes as stored (what a Range
    /// request on a pack serves; clients verify the records); "not found"
    /// when it is not stored.
    pub fn pack_bytes(&self, pack: &PackId) -> Result<PackBytes> {
        transfer::pack_bytes(&self.core, pack)
    }

    /// The size of a stored pack.
    pub fn pack_size(&self, pack: &PackId) -> Result<u64> {
        Ok(self.core.packs.get(pack)?.file_len())
    }

    /// A pack holding the given stored chunks (copied as stored, each
    /// re-verified): what a push uploads. Returns its id and bytes.
    pub fn export_pack(&self, ids: &[ChunkId]) -> Result<(PackId, Vec<u8>)> {
        transfer::export_pack(&self.core, ids)
    }

    /// The chunk list of a stored file: (chunk id, raw length) in order.
    pub fn chunk_list(&self, file: &FileId) -> Result<Vec<(ChunkId, u32)>> {
        transfer::chunk_list(&self.core, file)
    }

    /// The checked recipe of a file, with its prefix sums (tests).
    #[cfg(feature = "testing")]
    pub fn layout(&self, file: &FileId) -> Result<Arc<crate::layout::Layout>> {
        read::layout(&self.core, file)
    }

    /// An open, checked pack (tests).
    #[cfg(feature = "testing")]
    pub fn pack(&self, id: &crate::ids::PackId) -> Result<Arc<crate::pack::PackReader>> {
        self.core.packs.get(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    /// A recipe in the index that does not decode stops GC as damage
    /// (`RecipeUnreadable`, naming the file; it once said "busy"), before
    /// anything is deleted.
    #[test]
    fn a_damaged_index_recipe_stops_gc_as_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let opts = StoreOptions {
            create: true,
            ..StoreOptions::default()
        };
        let store = Store::open(dir.path(), opts).expect("open");
        let kept = store.put_bytes(&[7u8; 300_000], &["m/a"]).expect("put");
        let dead = store.put_bytes(&[9u8; 300_000], &[]).expect("put");
        store
            .core
            .index
            .replace_recipe(kept.file_id, b"not a recipe")
            .expect("damage the index's recipe");
        let gc = GcOptions {
            grace: Duration::ZERO,
            ..GcOptions::default()
        };
        match store.gc(&gc) {
            Err(e @ Error::RecipeUnreadable { .. }) => {
                assert!(e.to_string().contains(&kept.file_id.to_hex()), "{e}");
                assert!(e.is_corruption(), "{e:?}");
            }
            other => panic!("gc over a damaged index recipe: {other:?}"),
        }
        assert!(
            store.core.index.has_file(&dead.file_id).expect("has file"),
            "nothing was collected"
        );
    }
}
