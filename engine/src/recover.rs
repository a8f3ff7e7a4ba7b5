//! Keeping the sled index in step with the durable files, and `repair index`.
//!
//! The packs, recipe files and ref files are the store; the sled index is a
//! cache of them (spec §10). At open the store decides whether the index can
//! be trusted, and if not it *catches up*:
//!
//! - sled reports its own files damaged → the index directory is deleted and
//!   rebuilt (unless `StoreOptions::rebuild_damaged_index` is off);
//! - the index directory is new (`repair index` deleted it) → rebuilt;
//! - the `dirty` marker is there (the last process did not close the store
//!   cleanly) → sled may have lost its latest writes;
//! - the clean-close record (the index's counters when the store was last
//!   closed cleanly) is missing or disagrees with the index → sled lost or
//!   garbled data without reporting it.
//!
//! Catching up indexes every pack and recipe file on disk that the index
//! lacks (every chunk re-hashed first) and makes the index's refs agree with
//! the ref files. It is one mechanism for every case: `repair index` is the
//! same catch-up over an empty index. A clean open (record present and
//! equal) costs one small read.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use crate::check::{check_pack_name, fanout_files, list_packs, Problem, RepairReport};
use crate::error::clip;
use crate::error::{Error, Result};
use crate::format::{decode_clean, decode_ref, encode_clean, ChunkEntry, Recipe};
use crate::hash::{FileId, PackId};
use crate::index::{Index, PackInfo};
use crate::pack::PackReader;
use crate::storage::Storage;
use crate::store::{
    recipe_error, recipe_path, ref_path, write_atomic, Store, StoreOptions, CONFIG_FILE,
};

/// The clean-close record, relative to the store root.
pub const CLEAN_FILE: &str = "clean";

/// Why the store re-indexed its files when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUpReason {
    /// The index directory did not exist (after `repair index`).
    NewIndex,
    /// sled reported its files damaged; the index was deleted and rebuilt.
    DamagedIndex,
    /// The last process to open the store did not close it cleanly.
    UncleanShutdown,
    /// The index's counters differ from the clean-close record: sled lost
    /// or garbled writes without reporting an error.
    CountersDiffer,
    /// The clean-close record is missing or unreadable.
    NoCleanRecord,
}

impl std::fmt::Display for CatchUpReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CatchUpReason::NewIndex => "the index is new",
            CatchUpReason::DamagedIndex => "sled reported the index damaged; it was rebuilt",
            CatchUpReason::UncleanShutdown => "the store was not closed cleanly",
            CatchUpReason::CountersDiffer => {
                "the index disagrees with the record of the last clean close"
            }
            CatchUpReason::NoCleanRecord => "there is no record of a clean close",
        })
    }
}

/// What opening the store did to bring its index up to date.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Recovery {
    /// Why it was needed.
    pub reason: CatchUpReason,
    /// What was re-indexed, and what could not be.
    pub report: RepairReport,
}

/// Opens the sled index; if sled reports its files damaged and
/// `opts.rebuild_damaged_index` is set, deletes the index's contents and
/// opens a fresh one. Returns whether it did. (The directory itself stays,
/// so a crash in between leaves an index that is damaged or empty, never a
/// missing one.)
pub(crate) fn open_index(dir: &Path, opts: &StoreOptions) -> Result<(Index, bool)> {
    match Index::open(dir, opts.index_cache_bytes) {
        Ok(index) => Ok((index, false)),
        Err(Error::Index(e @ sled::Error::Corruption { .. })) => {
            if !opts.rebuild_damaged_index {
                return Err(Error::IndexDamaged {
                    path: dir.to_path_buf(),
                    detail: e.to_string(),
                });
            }
            tracing::warn!(index = %dir.display(), error = %e,
                "sled reports the index damaged; deleting it and rebuilding it from the packs, recipes and refs");
            let entries = std::fs::read_dir(dir).map_err(|e| Error::io("list", dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| Error::io("list", dir, e))?.path();
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
                removed.map_err(|e| Error::io("remove", &path, e))?;
            }
            Ok((Index::open(dir, opts.index_cache_bytes)?, true))
        }
        Err(e) => Err(e),
    }
}

/// The counters and write generation the clean-close record holds.
fn record_values(index: &Index) -> Result<[u64; 8]> {
    let [a, b, c, d, e, f, g] = index.counters()?.to_array();
    Ok([a, b, c, d, e, f, g, index.generation()?])
}

/// Whether the index matches the clean-close record; `None` when it does.
pub(crate) fn check_clean_record(
    storage: &dyn Storage,
    index: &Index,
) -> Result<Option<CatchUpReason>> {
    match storage.read(CLEAN_FILE) {
        Ok(b) => match decode_clean(&b) {
            Ok(rec) => Ok(match record_values(index) {
                Ok(now) if now == rec => None,
                // Different, or the counters do not decode.
                _ => Some(CatchUpReason::CountersDiffer),
            }),
            Err(_) => Ok(Some(CatchUpReason::NoCleanRecord)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(Some(CatchUpReason::NoCleanRecord))
        }
        Err(e) => Err(Error::io("read", storage.root().join(CLEAN_FILE), e)),
    }
}

/// The bytes of the clean-close record for the index as it is now.
pub(crate) fn clean_record(index: &Index) -> Result<Vec<u8>> {
    Ok(encode_clean(&record_values(index)?))
}

impl Store {
    /// What the last open did to bring the index up to date, if anything.
    pub fn recovery(&self) -> Option<Recovery> {
        self.inner.recovery.get().cloned()
    }

    /// Indexes every pack and recipe file the index lacks, heals recipe and
    /// ref files from the index's copies, and makes the index's refs agree
    /// with the ref files (spec §10.3). When the counters were the reason,
    /// they are recomputed from the trees first.
    pub(crate) fn catch_up(&self, reason: CatchUpReason) -> Result<RepairReport> {
        let storage = self.inner.storage.as_ref();
        let index: &Index = &self.inner.index;
        let mut rep = RepairReport::default();
        if reason == CatchUpReason::CountersDiffer {
            index.recount()?;
        }
        let (packs, odd) = list_packs(storage)?;
        rep.problems.extend(odd);
        for (id, rel) in packs {
            if !matches!(index.pack(&id), Ok(Some(_))) {
                index_pack(storage, index, id, &rel, &mut rep)?;
            }
        }
        self.heal(&mut rep)?;
        index.flush()?;
        Ok(rep)
    }

    /// Makes the recipe and ref files and the index agree, in both
    /// directions: the files are the durable copy, but the index's copy of a
    /// recipe verifies against its file id like the file does, so a recipe
    /// file that is missing or damaged is rewritten from it, and so is a
    /// damaged ref file (spec §10.3).
    fn heal(&self, rep: &mut RepairReport) -> Result<()> {
        self.sync_recipe_files(rep)?;
        self.reconcile_refs(rep)
    }

    /// Recipe files against the index's `files` tree: a valid file the index
    /// lacks is indexed; a valid file that differs from the index copy
    /// replaces it (the file is the durable copy); a missing or damaged file
    /// whose index copy verifies is rewritten from that copy.
    fn sync_recipe_files(&self, rep: &mut RepairReport) -> Result<()> {
        let inner = &*self.inner;
        let storage = inner.storage.as_ref();
        let index = &inner.index;
        let mut on_disk: HashMap<FileId, String> = HashMap::new();
        for (rel, name) in fanout_files(storage, "recipes", &mut rep.problems)? {
            match name
                .strip_suffix(".recipe")
                .and_then(FileId::from_hex)
                .filter(|id| recipe_path(id) == rel)
            {
                Some(file) => {
                    on_disk.insert(file, rel);
                }
                None => rep.problem(rel, "unexpected file in recipes/"),
            }
        }
        // What to do with each file the index holds, decided before writing.
        let mut rewrite: Vec<(FileId, String, Vec<u8>, String)> = Vec::new();
        let mut adopt: Vec<(FileId, Vec<u8>)> = Vec::new();
        for item in index.files() {
            let (file, copy) = item?;
            let copy_ok = Recipe::decode(file, &copy).is_ok();
            let rel = on_disk.remove(&file).unwrap_or_else(|| recipe_path(&file));
            let disk = match storage.read(&rel) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("read recipe", inner.root.join(&rel), e)),
            };
            let why = match disk {
                Some(b) if b[..] == copy[..] => continue,
                Some(b) => match Recipe::decode(file, &b) {
                    Ok(_) => {
                        adopt.push((file, b));
                        continue;
                    }
                    Err(e) => format!("recipe file was damaged ({})", recipe_error(file, e)),
                },
                None => "recipe file was missing".to_string(),
            };
            if copy_ok {
                rewrite.push((file, rel, copy.to_vec(), why));
            } else {
                rep.problem(
                    format!("file {file}"),
                    format!("{why}, and the index's copy is damaged too: the file is lost"),
                );
            }
        }
        for (file, rel, bytes, why) in rewrite {
            let r = write_atomic(storage, &inner.root, &self.tmp_name("recipe"), &rel, &bytes);
            self.poison_on(r)?;
            rep.healed(
                format!("file {file}"),
                format!("{why}; rewritten from the index's verified copy"),
            );
        }
        for (file, bytes) in adopt {
            index.replace_recipe(file, &bytes)?;
            rep.files += 1;
        }
        for (file, rel) in on_disk {
            index_recipe(storage, index, file, &rel, rep)?;
        }
        Ok(())
    }

    /// Makes the index's refs agree with the ref files (the durable copy).
    /// A damaged ref file whose ref the index holds (naming a stored file)
    /// is rewritten from the index. A ref file that cannot be applied or
    /// healed (damaged, or naming a file that is not stored) is reported and
    /// left alone: it may be the only copy of its ref. (It cannot be the
    /// leftover of an unacknowledged put: a put makes the recipe file
    /// durable before the ref file, and recipe files were indexed before
    /// this runs.)
    fn reconcile_refs(&self, rep: &mut RepairReport) -> Result<()> {
        let inner = &*self.inner;
        let storage = inner.storage.as_ref();
        let index = &inner.index;
        let mut on_disk: HashMap<String, FileId> = HashMap::new();
        // Ref files that exist but cannot be applied: rel → what is wrong.
        let mut damaged: HashMap<String, String> = HashMap::new();
        for (rel, _) in fanout_files(storage, "refs", &mut rep.problems)? {
            // A failed read is an error (not damage): never guess.
            let bytes = storage
                .read(&rel)
                .map_err(|e| Error::io("read ref", inner.root.join(&rel), e))?;
            match decode_ref(&bytes) {
                Ok((ref_name, file)) if ref_path(&ref_name) == rel => {
                    if index.has_file(&file)? {
                        on_disk.insert(ref_name, file);
                    } else {
                        rep.problem(
                            format!("ref {}", clip(&ref_name)),
                            format!("names file {file}, which is not stored ({rel})"),
                        );
                        damaged.insert(rel, String::new());
                    }
                }
                Ok(_) => {
                    damaged.insert(rel, "ref file stored under the wrong name".into());
                }
                Err(detail) => {
                    damaged.insert(rel, format!("ref file: {detail}"));
                }
            }
        }
        for (name, file) in index.refs_with_prefix("")? {
            let rel = ref_path(&name);
            match on_disk.remove(&name) {
                Some(f) if f == file => {}
                Some(f) => {
                    index.set_ref(&name, f)?;
                    rep.refs += 1;
                }
                None => match damaged.remove(&rel) {
                    // The ref file names a file that is not stored: reported
                    // above; the index keeps its value.
                    Some(why) if why.is_empty() => {}
                    Some(why) if index.has_file(&file)? => {
                        let r = self.write_ref_file(&name, &file);
                        self.poison_on(r)?;
                        rep.healed(
                            format!("ref {}", clip(&name)),
                            format!("{why} ({rel}); rewritten from the index's copy (file {file})"),
                        );
                    }
                    Some(why) => {
                        rep.problem(
                            rel,
                            format!("{why}; the index's copy names a file that is not stored"),
                        );
                    }
                    // Deleted (its file is removed before the index entry).
                    None => {
                        index.delete_ref(&name)?;
                    }
                },
            }
        }
        for (rel, why) in damaged {
            if !why.is_empty() {
                rep.problem(
                    rel,
                    format!("{why}; no copy of this ref is left to rewrite it from"),
                );
            }
        }
        for (name, file) in on_disk {
            index.set_ref(&name, file)?;
            rep.refs += 1;
        }
        Ok(())
    }

    /// Rebuilds the whole index from the packs, recipe files and ref files.
    /// First, while the current index still opens, recipe and ref files
    /// that are missing or damaged are healed from its verified copies
    /// (never lose what the store still holds); then the index is deleted
    /// and rebuilt. Damaged packs, recipes and refs are reported by name;
    /// everything else is recovered. Chunks are indexed only after their
    /// data re-hashes to their id.
    pub fn repair_index(root: impl AsRef<Path>, opts: StoreOptions) -> Result<RepairReport> {
        let root = root.as_ref();
        let storage = Arc::new(crate::storage::FsStorage::new(root, opts.read_mode));
        Self::repair_index_with(root, storage, opts)
    }

    /// [`Store::repair_index`] over a given storage backend (the index itself
    /// always lives at `root/index` on the real filesystem).
    pub fn repair_index_with(
        root: impl AsRef<Path>,
        storage: Arc<dyn Storage>,
        opts: StoreOptions,
    ) -> Result<RepairReport> {
        let root = root.as_ref();
        let index_dir = root.join("index");
        match storage.read(CONFIG_FILE) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::StoreNotFound {
                    path: root.to_path_buf(),
                })
            }
            Err(e) => return Err(Error::io("read config", root.join(CONFIG_FILE), e)),
        }
        let mut healed = RepairReport::default();
        if index_dir.exists() {
            let current = Store::open_with(
                root.to_path_buf(),
                storage.clone(),
                StoreOptions {
                    create: false,
                    rebuild_damaged_index: false,
                    ..opts.clone()
                },
            );
            match current {
                Ok(store) => {
                    if let Some(r) = store.recovery() {
                        healed.healed.extend(r.report.healed);
                    }
                    store.heal(&mut healed)?;
                }
                // Nothing to salvage from an index sled cannot open.
                Err(e @ (Error::IndexDamaged { .. } | Error::Index(_))) => {
                    tracing::warn!(error = %e, "the current index does not open; rebuilding without it");
                }
                Err(e) => return Err(e),
            }
        }
        {
            // Holds the store's lock while the old index is deleted.
            let _lock = crate::store::lock_store(root, opts.lock_wait)?;
            if index_dir.exists() {
                std::fs::remove_dir_all(&index_dir)
                    .map_err(|e| Error::io("remove index", &index_dir, e))?;
            }
        }
        let store = Store::open_with(
            root.to_path_buf(),
            storage,
            StoreOptions {
                create: false,
                allow_missing_index: true,
                ..opts
            },
        )?;
        let mut rep = store.recovery().map(|r| r.report).unwrap_or_default();
        rep.healed.splice(0..0, healed.healed);
        Ok(rep)
    }
}

/// Indexes the intact chunks of one pack file.
fn index_pack(
    storage: &dyn Storage,
    index: &Index,
    id: PackId,
    rel: &str,
    rep: &mut RepairReport,
) -> Result<()> {
    let reader = match PackReader::open(storage, id) {
        Ok(r) => r,
        Err(e) => {
            rep.problem(format!("pack {id}"), e.to_string());
            return Ok(());
        }
    };
    if let Err(detail) = check_pack_name(storage, &id, rel) {
        // Index its intact chunks anyway: each is verified below.
        rep.problem(format!("pack {id}"), detail);
    }
    let mut good: Vec<(u32, ChunkEntry)> = Vec::new();
    let mut raw = 0u64;
    for i in 0..reader.chunk_count() {
        let verified = reader
            .entry(i)
            .and_then(|e| reader.read_chunk(i, &e.id).map(|_| e));
        match verified {
            Ok(e) => {
                raw += u64::from(e.raw_len);
                good.push((i, e));
            }
            Err(e) => rep.problem(format!("pack {id} chunk {i}"), e.to_string()),
        }
    }
    let info = PackInfo {
        size: reader.file_len(),
        chunk_count: reader.chunk_count(),
        raw_bytes: raw,
    };
    index.add_pack_chunks(id, info, &good)?;
    rep.packs += 1;
    rep.chunks += good.len() as u64;
    Ok(())
}

/// Indexes one recipe file.
fn index_recipe(
    storage: &dyn Storage,
    index: &Index,
    file: FileId,
    rel: &str,
    rep: &mut RepairReport,
) -> Result<()> {
    let bytes = match storage.read(rel) {
        Ok(b) => b,
        Err(e) => {
            rep.problem(
                format!("file {file}"),
                format!("recipe file unreadable: {e}"),
            );
            return Ok(());
        }
    };
    match Recipe::decode(file, &bytes) {
        Ok(r) => {
            let missing = r
                .chunks
                .iter()
                .filter(|(c, _)| !matches!(index.chunk(c), Ok(Some(_))))
                .count();
            if missing > 0 {
                rep.problem(
                    format!("file {file}"),
                    format!(
                        "{missing} of its chunks are missing or damaged; reads will fail there"
                    ),
                );
            }
            index.add_file(file, r.sha256, r.size, &bytes, &[])?;
            rep.files += 1;
        }
        Err(e) => rep.problem(format!("file {file}"), recipe_error(file, e).to_string()),
    }
    Ok(())
}

impl RepairReport {
    fn problem(&mut self, object: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            object: object.into(),
            detail: detail.into(),
        });
    }

    fn healed(&mut self, object: impl Into<String>, detail: impl Into<String>) {
        let p = Problem {
            object: object.into(),
            detail: detail.into(),
        };
        tracing::warn!(object = %p.object, "healed: {}", p.detail);
        self.healed.push(p);
    }
}

/// What `repair config` checked before writing a config.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConfigRepair {
    /// Stored files whose leading chunks were re-chunked with the parameters.
    pub files_checked: u64,
    /// Chunk boundaries compared.
    pub boundaries_checked: u64,
}

/// Files whose leading chunks `repair config` re-chunks.
const CONFIG_CHECK_FILES: usize = 8;
/// Leading chunks of each file it reads (at most 16 MiB at the default max).
const CONFIG_CHECK_CHUNKS: usize = 64;

impl Store {
    /// Writes the config of a store that lost it (or whose config is
    /// corrupt), after checking `chunking` against the stored files: the
    /// leading chunks of several stored files are read from their packs
    /// (verified), re-chunked with `chunking`, and every boundary must fall
    /// where the recipe has it. Refuses when no stored file has two chunks
    /// to compare (nothing would confirm the parameters), when a boundary
    /// differs, or when the config is intact.
    pub fn repair_config(
        root: impl AsRef<Path>,
        chunking: crate::ChunkParams,
        opts: &StoreOptions,
    ) -> Result<ConfigRepair> {
        let root = root.as_ref();
        chunking.validate()?;
        let storage = crate::storage::FsStorage::new(root, opts.read_mode);
        let _lock = crate::store::lock_store(root, opts.lock_wait)?;
        match storage.read(CONFIG_FILE) {
            Ok(b) if crate::format::StoreConfig::decode(&b).is_ok() => {
                return Err(Error::InvalidArgument(format!(
                    "the config of {} is intact; nothing to repair",
                    root.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("read config", root.join(CONFIG_FILE), e)),
        }
        let mut rep = ConfigRepair::default();
        let mut problems = Vec::new();
        let mut recipes: Vec<Recipe> = Vec::new();
        for (rel, name) in fanout_files(&storage, "recipes", &mut problems)? {
            let Some(file) = name.strip_suffix(".recipe").and_then(FileId::from_hex) else {
                continue;
            };
            let Ok(bytes) = storage.read(&rel) else {
                continue;
            };
            if let Ok(r) = Recipe::decode(file, &bytes) {
                if r.chunks.len() >= 2 {
                    recipes.push(r);
                }
            }
        }
        // The files with the most chunks say the most.
        recipes.sort_by_key(|r| std::cmp::Reverse(r.chunks.len()));
        for recipe in recipes.iter().take(CONFIG_CHECK_FILES) {
            let layout = crate::recipe::Layout::new(recipe.clone());
            let n = layout.chunk_count().min(CONFIG_CHECK_CHUNKS);
            let mut data = Vec::new();
            for i in 0..n {
                let Some(c) = layout.chunk(i) else { break };
                let pack = PackReader::open(&storage, c.pack)?;
                data.extend_from_slice(&pack.read_chunk(c.pack_index, &c.id)?);
            }
            // Every cut but the last of the prefix is a real boundary.
            let cuts = chunking.boundaries(&data);
            let compare = n.saturating_sub(1);
            for (i, (range, (_, len))) in cuts.iter().zip(&recipe.chunks).take(compare).enumerate()
            {
                if range.len() != *len as usize {
                    return Err(Error::InvalidArgument(format!(
                        "file {} was not chunked with {chunking}: its chunk {i} is {len} bytes, these parameters cut {} (try other parameters)",
                        recipe.file,
                        range.len()
                    )));
                }
            }
            rep.files_checked += 1;
            rep.boundaries_checked += compare as u64;
        }
        if rep.boundaries_checked == 0 {
            return Err(Error::InvalidArgument(
                "no stored file has two chunks to check the parameters against; restore tessera.store from a backup".into(),
            ));
        }
        let config = crate::format::StoreConfig {
            version: crate::format::FORMAT_VERSION,
            chunking,
        };
        let tmp = "tmp/config.new";
        match storage.remove_file(tmp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io("remove stale temp config", root.join(tmp), e)),
        }
        write_atomic(&storage, root, tmp, CONFIG_FILE, &config.encode())?;
        Ok(rep)
    }
}
