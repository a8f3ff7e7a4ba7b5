//! Stores shared by several processes (spec §4.3): a bucket that several
//! Tessera processes ("nodes") open at once, each with its own local state.
//!
//! A node's index is a cache of the bucket. What another node wrote is found
//! two ways: on a miss (a file id or ref the index lacks: its recipe or ref
//! object is read, checked and indexed with the packs it names: here), and
//! by a listing (`refresh`). Refs are read from the bucket whenever they are
//! resolved (they are the only mutable objects) and written with
//! conditional writes (`shared_refs`), so no node silently overwrites a
//! change it did not see. The `dirty` and `clean` markers describe one
//! node's index, so they are node-local files ([`NodeLocal`]), not objects.
//!
//! Nothing here runs for a store that is not [`ObjectStore::shared`].

use std::collections::HashSet;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::cache::lock;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Recipe};
use crate::ids::{FileId, PackId};
use crate::index::PackInfo;
use crate::layout::Layout;
use crate::paths::{recipe_key, CLEAN, DIRTY};
use crate::report::Problem;
use crate::storage::{
    Cas, DirStore, Listed, ObjectStore, PutMode, ReadHandle, ReadMode, StagedObject, Version,
};

/// Keys under this prefix are node-local state of a shared store (kept in
/// the local directory, never in the bucket).
const NODE: &str = "node/";
/// The store a local directory is the cache of (its location).
const ORIGIN: &str = "origin";
/// Requests in flight while a listing's unknown objects are indexed.
const DISCOVERY_THREADS: usize = 16;

fn is_node_local(key: &str) -> bool {
    key == DIRTY || key == CLEAN || key.starts_with(NODE)
}

/// A shared store with its node-local keys (`dirty`, `clean`, `node/…`) kept
/// as files in the local directory (see the module docs). Everything else
/// goes to the shared store.
#[derive(Debug)]
pub(crate) struct NodeLocal {
    shared: Arc<dyn ObjectStore>,
    local: DirStore,
}

/// Wraps a shared store for a node whose local state is in `local_dir`;
/// returns other stores as they are. Refuses a local directory that is the
/// cache of another store, or that is a directory store itself.
pub(crate) fn wrap(
    objects: Arc<dyn ObjectStore>,
    local_dir: &Path,
) -> Result<Arc<dyn ObjectStore>> {
    if !objects.shared() {
        return Ok(objects);
    }
    let location = objects.location();
    let origin = local_dir.join(ORIGIN);
    let name = |p: &Path| p.display().to_string();
    if local_dir.join(crate::paths::CONFIG).exists() {
        return Err(Error::InvalidArgument(format!(
            "{} is a directory store, not a cache for {location}; give the store another local directory",
            local_dir.display()
        )));
    }
    match std::fs::read_to_string(&origin) {
        Ok(s) if s.trim_end() == location => {}
        Ok(s) => {
            return Err(Error::InvalidArgument(format!(
                "{} is the local cache of {}, not of {location}; give {location} another cache directory",
                local_dir.display(),
                s.trim_end()
            )))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir_all(local_dir)
                .map_err(|e| Error::io("create directory", name(local_dir), e))?;
            std::fs::write(&origin, format!("{location}\n"))
                .map_err(|e| Error::io("write", name(&origin), e))?;
        }
        Err(e) => return Err(Error::io("read", name(&origin), e)),
    }
    Ok(Arc::new(NodeLocal {
        shared: objects,
        local: DirStore::new(PathBuf::from(local_dir), ReadMode::Pread),
    }))
}

impl NodeLocal {
    fn pick(&self, key: &str) -> &dyn ObjectStore {
        if is_node_local(key) {
            &self.local
        } else {
            self.shared.as_ref()
        }
    }
}

impl ObjectStore for NodeLocal {
    fn location(&self) -> String {
        self.shared.location()
    }
    fn describe(&self, key: &str) -> String {
        if is_node_local(key) {
            self.local.describe(key)
        } else {
            self.shared.describe(key)
        }
    }
    fn stage(&self) -> io::Result<Box<dyn StagedObject>> {
        // The engine stages only packs and recipes, never node-local keys
        // (those are written with `put`, below).
        self.shared.stage()
    }
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> io::Result<()> {
        self.pick(key).put(key, data, mode)
    }
    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        self.pick(key).get(key)
    }
    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>> {
        self.pick(key).open(key)
    }
    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        self.shared.list(prefix)
    }
    fn exists(&self, key: &str) -> io::Result<bool> {
        self.pick(key).exists(key)
    }
    fn delete(&self, key: &str) -> io::Result<()> {
        self.pick(key).delete(key)
    }
    fn delete_by(&self, key: &str, deadline: std::time::Instant) -> io::Result<()> {
        self.pick(key).delete_by(key, deadline)
    }
    fn discard_staged(&self) -> io::Result<()> {
        self.shared.discard_staged()
    }
    fn foreign(&self) -> io::Result<Option<String>> {
        self.shared.foreign()
    }
    fn check_index_write(&self) -> io::Result<()> {
        self.shared.check_index_write()
    }
    fn shared(&self) -> bool {
        true
    }
    fn get_versioned(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        self.pick(key).get_versioned(key)
    }
    fn put_if_version(&self, key: &str, data: &[u8], expect: Option<&Version>) -> io::Result<Cas> {
        self.pick(key).put_if_version(key, data, expect)
    }
    fn list_versioned(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        self.shared.list_versioned(prefix)
    }
}

// ------------------------------------------------------------ discovery

/// Whether the store holds the object at `key` (a "not found" from the
/// backend counts as absent).
pub(crate) fn exists(core: &Core, key: &str) -> Result<bool> {
    let objects = core.objects.as_ref();
    match objects.exists(key) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(objects, "stat", key, e)),
    }
}

pub(crate) fn io_err(
    objects: &dyn ObjectStore,
    op: &'static str,
    key: &str,
    e: io::Error,
) -> Error {
    Error::io(op, objects.describe(key), e)
}

/// Indexes a pack found in the bucket: its footer is read and checked
/// (header, trailer, chunk-table checksum, every table entry inside the
/// data region; spec §6.4), through the store's pack cache so a read that
/// follows reuses the open. The chunk data is not read here: every chunk is
/// verified against its id when it is read (§7.1), and `verify` hashes
/// whole packs (spec §4.3 says why that is enough).
pub(crate) fn discover_pack(core: &Core, id: &PackId) -> Result<u64> {
    let r = core.packs.get(id)?;
    let mut entries: Vec<(u32, ChunkEntry)> = Vec::with_capacity(r.chunk_count() as usize);
    let mut raw = 0u64;
    for i in 0..r.chunk_count() {
        let e = r.entry(i)?;
        raw += u64::from(e.raw_len);
        entries.push((i, e));
    }
    let info = PackInfo {
        size: r.file_len(),
        chunk_count: r.chunk_count(),
        raw_bytes: raw,
    };
    core.index.add_pack(*id, info, &entries)?;
    Ok(entries.len() as u64)
}

/// Indexes the packs of `packs` the index lacks, several at once. A pack
/// that is missing or damaged is reported (reads of what it holds fail,
/// naming it); an I/O error fails the call.
pub(crate) fn discover_packs(
    core: &Core,
    packs: &[PackId],
    problems: &mut Vec<Problem>,
) -> Result<(u64, u64)> {
    let mut todo = Vec::new();
    let mut seen = HashSet::new();
    for p in packs {
        if seen.insert(*p) && !core.index.has_pack(p)? {
            todo.push(*p);
        }
    }
    let results = parallel(&todo, |id| discover_pack(core, id));
    let (mut n, mut chunks) = (0, 0);
    for (id, r) in todo.iter().zip(results) {
        match r {
            Ok(c) => {
                n += 1;
                chunks += c;
            }
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => problems.push(Problem {
                object: format!("pack {id}"),
                detail: e.to_string(),
            }),
        }
    }
    Ok((n, chunks))
}

/// Finds a file another node stored: reads its recipe object, checks it
/// against the file id (§7), indexes the packs it names and then the file.
/// `Ok(false)` when the bucket has no recipe for it; a damaged recipe is
/// an error ([`Error::RecipeCorrupt`]).
pub(crate) fn discover_file(core: &Core, file: &FileId) -> Result<bool> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    let bytes = match objects.get(&key) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(objects, "read recipe", &key, e)),
    };
    let recipe = Recipe::decode(*file, &bytes).map_err(|e| e.into_error(*file))?;
    let packs: Vec<PackId> = recipe.terms.iter().map(|t| t.pack).collect();
    let mut problems = Vec::new();
    discover_packs(core, &packs, &mut problems)?;
    for p in &problems {
        tracing::warn!(object = %p.object, file = %file, "a pack the file's recipe names: {}", p.detail);
    }
    core.index
        .add_file(*file, recipe.sha256, recipe.size, &bytes, &[])?;
    Ok(true)
}

/// Whether the file is known, looking in the bucket on a miss.
pub(crate) fn has_file(core: &Core, file: &FileId) -> Result<bool> {
    Ok(core.index.has_file(file)? || discover_file(core, file)?)
}

/// Re-reads the recipe object of a file whose cached recipe names a pack
/// that is gone (another node's repack or GC replaced the recipe and
/// removed the pack, spec §4.3): when the object is valid and differs from
/// the cached copy, the cache takes it. Returns whether it changed.
pub(crate) fn reload_file(core: &Core, file: &FileId) -> Result<bool> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    let bytes = match objects.get(&key) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err(objects, "read recipe", &key, e)),
    };
    if core.index.recipe_bytes(file)?.as_deref() == Some(&bytes[..]) {
        return Ok(false);
    }
    let Ok(recipe) = Recipe::decode(*file, &bytes) else {
        return Ok(false);
    };
    let packs: Vec<PackId> = recipe.terms.iter().map(|t| t.pack).collect();
    discover_packs(core, &packs, &mut Vec::new())?;
    if core.index.has_file(file)? {
        core.index.replace_recipe(*file, &bytes)?;
    } else {
        core.index
            .add_file(*file, recipe.sha256, recipe.size, &bytes, &[])?;
    }
    let layout = Arc::new(Layout::new(recipe));
    let weight = layout.heap_bytes();
    lock(&core.recipes).insert_weighted(*file, layout, weight);
    tracing::info!(file = %file, "the file's recipe changed in the store; reloaded it");
    Ok(true)
}

/// Runs `op` on a file; if it fails because a pack the cached recipe names
/// is gone, reloads the recipe from the bucket and runs it once more (see
/// [`reload_stale`]).
pub(crate) fn retry_stale<T>(core: &Core, file: &FileId, op: impl Fn() -> Result<T>) -> Result<T> {
    match op() {
        Err(Error::PackMissing { pack, object }) if core.objects.shared() => {
            if reload_stale(core, file)? {
                tracing::debug!(%pack, %object, "retrying with the reloaded recipe");
                return op();
            }
            Err(Error::PackMissing { pack, object })
        }
        r => r,
    }
}

/// For a read that found a pack of the file's cached recipe gone, on a
/// shared store: reloads the recipe from the bucket ([`reload_file`];
/// whether it changed). A file whose recipe object is gone too was
/// collected by another node: "not found" (as on a node that never knew
/// it), not damaged.
pub(crate) fn reload_stale(core: &Core, file: &FileId) -> Result<bool> {
    if reload_file(core, file)? {
        return Ok(true);
    }
    if !exists(core, &recipe_key(file))? {
        return Err(Error::not_found("file", &file.to_hex()));
    }
    Ok(false)
}

// ------------------------------------------------------------ publishing

/// Publishes the recipe object of a file on a shared store and returns
/// whether it was written and the bytes the index should hold. Create-only
/// first (one request when the file is new). When the object exists: the
/// same bytes, nothing to do; another valid recipe of the same file (a node
/// that stored the same file at the same time, with its chunks in its own
/// packs) is adopted, its packs indexed, so every node indexes the object
/// the bucket holds; a damaged one is replaced (healed) with ours, and so
/// is one `adopt` turns down (given the file and the packs the recipe names:
/// a GC condemned the recipe or one of its packs, spec §10.6) — a recipe
/// object `adopt` turns down for the file alone is replaced even when it
/// holds our bytes, so its age starts again (as is one kept for a file
/// stored without a ref, `unnamed`).
pub(crate) fn publish_recipe(
    core: &Core,
    file: &FileId,
    bytes: Vec<u8>,
    probably_stored: bool,
    adopt: &dyn Fn(&FileId, &HashSet<PackId>) -> Result<bool>,
    unnamed: bool,
) -> Result<(bool, Vec<u8>)> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    let renew = !adopt(file, &HashSet::new())?;
    if !probably_stored || renew {
        match objects.put(&key, &bytes, PutMode::Create) {
            Ok(()) => return Ok((true, bytes)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(objects, "write recipe", &key, e)),
        }
    }
    let current = match objects.get(&key) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(objects, "read recipe", &key, e)),
    };
    // A recipe object kept as it is gets written again all the same when
    // the file is stored without a ref (`unnamed`): its `Last-Modified` is
    // the file's age to a collector on a shared store (§10.6), and only the
    // grace period protects an unnamed file. (A ref written within the
    // writer check's time protects a named one.)
    let touch = |b: &[u8]| {
        if !unnamed {
            return Ok(());
        }
        objects
            .put(&key, b, PutMode::Replace)
            .map_err(|e| io_err(objects, "write recipe", &key, e))
    };
    match current {
        Some(cur) if cur == bytes && !renew => {
            touch(&bytes)?;
            return Ok((false, bytes));
        }
        Some(cur) if !renew => {
            if let Ok(r) = Recipe::decode(*file, &cur) {
                let packs: Vec<PackId> = r.terms.iter().map(|t| t.pack).collect();
                let mut problems = Vec::new();
                discover_packs(core, &packs, &mut problems)?;
                match problems.first() {
                    None if adopt(file, &packs.iter().copied().collect())? => {
                        touch(&cur)?;
                        return Ok((false, cur));
                    }
                    None => tracing::info!(file = %file,
                        "the stored recipe names a pack a GC condemned or deleted; replacing it"),
                    Some(p) => tracing::warn!(file = %file, problem = %p.detail,
                        "the stored recipe names a pack that cannot be read; replacing it"),
                }
            }
        }
        Some(_) | None => {}
    }
    objects
        .put(&key, &bytes, PutMode::Replace)
        .map_err(|e| io_err(objects, "write recipe", &key, e))?;
    Ok((true, bytes))
}

/// `f` over every item, [`DISCOVERY_THREADS`] at a time (object-store
/// requests spend their time waiting); results in item order.
pub(crate) fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut out: Vec<(usize, R)> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..DISCOVERY_THREADS.min(items.len()))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(item) = items.get(i) else { break };
                        mine.push((i, f(item)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    out.sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, r)| r).collect()
}
