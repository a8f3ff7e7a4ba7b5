//! Stores shared by several processes (spec §4.3): a bucket that several
//! Tessera processes ("nodes") open at once, each with its own local state.
//!
//! A node's index is a cache of the bucket. What another node wrote is found
//! two ways: on a miss (a file id or ref the index lacks: its recipe or ref
//! object is read, checked and indexed with the packs it names), and by a
//! listing ([`refresh`]). Refs are read from the bucket whenever they are
//! resolved (they are the only mutable objects) and written with
//! conditional writes, so no node silently overwrites a change it did not
//! see. The `dirty` and `clean` markers describe one node's index, so they
//! are node-local files ([`NodeLocal`]), not objects.
//!
//! Nothing here runs for a store that is not [`ObjectStore::shared`].

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::lock;
use crate::core::Core;
use crate::error::{clip, Error, Result};
use crate::format::{decode_ref, encode_ref, ChunkEntry, Recipe};
use crate::ids::{FileId, PackId};
use crate::index::PackInfo;
use crate::layout::Layout;
use crate::paths::{
    file_of_key, is_ref_key, pack_of_key, recipe_key, ref_key, CLEAN, DIRTY, PACKS, RECIPES, REFS,
};
use crate::report::{CatchUpReason, Problem, RepairReport};
use crate::storage::{
    Cas, DirStore, Listed, ObjectStore, PutMode, ReadHandle, ReadMode, StagedObject, Version,
};

/// Keys under this prefix are node-local state of a shared store (kept in
/// the local directory, never in the bucket).
const NODE: &str = "node/";
/// What the last listing of refs saw: `<key> <version>` per line.
const REFS_SEEN: &str = "node/refs-seen";
/// When the last [`refresh`] finished: milliseconds since the epoch.
const REFRESHED: &str = "node/refreshed";
/// The store a local directory is the cache of (its location).
const ORIGIN: &str = "origin";
/// Conditional ref writes that lose a race are retried this many times.
const REF_ATTEMPTS: u32 = 8;
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

// ------------------------------------------------------------ opening

/// Brings a shared store's index up to date at open when it cannot be
/// trusted. A new index (a node's first open with this cache) is left
/// empty: it fills on misses and by [`refresh`] (`repair index`, which
/// opens over an empty index, fills it whole from a listing). An index whose counters disagree with this node's clean-close
/// record is recounted; after a crash, or over a damaged index, the node
/// refreshes from a listing (what it lost is in the bucket).
pub(crate) fn catch_up(core: &Core, reason: CatchUpReason) -> Result<RepairReport> {
    match reason {
        // `repair index` opens over an empty index to fill it whole.
        CatchUpReason::NewIndex if !core.opts.allow_missing_index => Ok(RepairReport::default()),
        CatchUpReason::CountersDiffer => {
            core.index.recount()?;
            Ok(RepairReport::default())
        }
        _ => {
            forget_seen_refs(core)?;
            let r = refresh(core)?;
            Ok(RepairReport {
                packs: r.packs,
                chunks: r.chunks,
                files: r.files,
                refs: r.refs_updated + r.refs_removed,
                healed: Vec::new(),
                problems: r.problems,
            })
        }
    }
}

// ------------------------------------------------------------ discovery

fn io_err(objects: &dyn ObjectStore, op: &'static str, key: &str, e: io::Error) -> Error {
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
fn discover_packs(
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
    lock(&core.recipes).insert(*file, Arc::new(Layout::new(recipe)));
    tracing::info!(file = %file, "the file's recipe changed in the store; reloaded it");
    Ok(true)
}

/// Runs `op` on a file; if it fails because a pack the cached recipe names
/// is gone, reloads the recipe from the bucket and runs it once more.
pub(crate) fn retry_stale<T>(core: &Core, file: &FileId, op: impl Fn() -> Result<T>) -> Result<T> {
    match op() {
        Err(Error::PackMissing { pack, object })
            if core.objects.shared() && reload_file(core, file)? =>
        {
            tracing::debug!(%pack, %object, "retrying with the reloaded recipe");
            op()
        }
        r => r,
    }
}

// ------------------------------------------------------------ publishing

/// Publishes the recipe object of a file on a shared store and returns
/// whether it was written and the bytes the index should hold. Create-only
/// first (one request when the file is new). When the object exists: the
/// same bytes, nothing to do; another valid recipe of the same file (a node
/// that stored the same file at the same time, with its chunks in its own
/// packs) is adopted, its packs indexed, so every node indexes the object
/// the bucket holds; a damaged one is replaced (healed) with ours.
pub(crate) fn publish_recipe(
    core: &Core,
    file: &FileId,
    bytes: Vec<u8>,
    probably_stored: bool,
) -> Result<(bool, Vec<u8>)> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    if !probably_stored {
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
    match current {
        Some(cur) if cur == bytes => return Ok((false, bytes)),
        Some(cur) => {
            if let Ok(r) = Recipe::decode(*file, &cur) {
                let packs: Vec<PackId> = r.terms.iter().map(|t| t.pack).collect();
                let mut problems = Vec::new();
                discover_packs(core, &packs, &mut problems)?;
                if problems.is_empty() {
                    return Ok((false, cur));
                }
                tracing::warn!(file = %file, problem = %problems[0].detail,
                    "the stored recipe names a pack that cannot be read; replacing it");
            }
        }
        None => {}
    }
    objects
        .put(&key, &bytes, PutMode::Replace)
        .map_err(|e| io_err(objects, "write recipe", &key, e))?;
    Ok((true, bytes))
}

// ------------------------------------------------------------ refs

/// What a conditional ref write expects the ref to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expect {
    /// Anything: the write is retried on whatever the ref became.
    Any,
    /// Exactly this (`None`: no ref); otherwise [`Error::RefConflict`].
    Is(Option<FileId>),
}

/// The file a ref object names, if it is a valid ref object of `name`.
fn ref_target(name: &str, bytes: &[u8]) -> Option<FileId> {
    match decode_ref(bytes) {
        Ok((n, f)) if n == name => Some(f),
        _ => None,
    }
}

/// Points ref `name` at `file` in the store with conditional writes: the
/// write names the version it replaces (or that there is none), so a
/// concurrent change by another node makes it fail instead of being
/// overwritten unseen. With [`Expect::Any`] a lost race is retried on the
/// new state (up to 8 times, with growing jittered pauses); with
/// [`Expect::Is`] a ref that is not what the caller expects fails with
/// [`Error::RefConflict`]. Returns what the ref named before. Works on any
/// store (a non-shared one serializes within the process).
pub(crate) fn write_ref(
    core: &Core,
    name: &str,
    file: &FileId,
    expect: Expect,
) -> Result<Option<FileId>> {
    let objects = core.objects.as_ref();
    let key = ref_key(name);
    let data = encode_ref(name, file);
    // What is there: `None` no object; else its target (`None` when it is
    // damaged or another name's) and version. New refs are the common
    // case, so the first attempt assumes there is none (a create-only
    // write: one request) unless the caller expects a file.
    let mut state: Option<(Option<FileId>, Version)> = None;
    let mut assumed = matches!(expect, Expect::Any | Expect::Is(None));
    for attempt in 0..REF_ATTEMPTS {
        if !assumed {
            state = objects
                .get_versioned(&key)
                .map_err(|e| io_err(objects, "read ref", &key, e))?
                .map(|(b, v)| (ref_target(name, &b), v));
        }
        assumed = false;
        let before = state.as_ref().and_then(|(f, _)| *f);
        if let Expect::Is(want) = expect {
            if before != want {
                return Err(Error::RefConflict {
                    name: clip(name),
                    detail: format!(
                        "expected it to name {}, but it names {}; nothing was written",
                        show(want),
                        show(before)
                    ),
                });
            }
        }
        if before == Some(*file) {
            return Ok(before);
        }
        let version = state.as_ref().map(|(_, v)| v);
        match objects
            .put_if_version(&key, &data, version)
            .map_err(|e| io_err(objects, "write ref", &key, e))?
        {
            Cas::Written(_) => return Ok(before),
            // Another writer got in between: read what it wrote and go
            // again (at once the first time: usually a create that found
            // the ref existing).
            Cas::Conflict if attempt > 0 => backoff(attempt - 1),
            Cas::Conflict => {}
        }
    }
    Err(Error::RefConflict {
        name: clip(name),
        detail: format!(
            "other writers changed it {REF_ATTEMPTS} times while this update was retried; nothing was written"
        ),
    })
}

fn show(f: Option<FileId>) -> String {
    f.map_or("nothing (no such ref)".to_string(), |f| format!("file {f}"))
}

/// A pause before retrying a lost race: 10 ms doubling per attempt (to
/// 1.3 s), times a jitter factor in [0.5, 1.5) so racing nodes drift apart.
fn backoff(attempt: u32) {
    let base = 10u64 << attempt.min(7);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = 500 + (u64::from(nanos) ^ u64::from(std::process::id())) % 1000;
    std::thread::sleep(Duration::from_millis(base * jitter / 1000));
}

/// The file the ref object of `name` names; `None` when there is none (or
/// it is another name's). A ref object that does not decode is damage.
fn read_ref(core: &Core, name: &str) -> Result<Option<FileId>> {
    let objects = core.objects.as_ref();
    let key = ref_key(name);
    match objects.get(&key) {
        Ok(b) => match decode_ref(&b) {
            Ok((n, f)) => Ok((n == name).then_some(f)),
            Err(detail) => Err(Error::IndexCorrupt {
                tree: "refs",
                key: clip(name),
                detail: format!("ref file {key}: {detail}"),
            }),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(objects, "read ref", &key, e)),
    }
}

/// Resolves a ref on a shared store: the ref object is read every time (a
/// ref is the one kind of object another node may change), the file it
/// names is found (on a miss, in the bucket), and the index is brought in
/// line. A ref object naming a file whose recipe is missing or damaged is
/// [`Error::RefDangling`].
pub(crate) fn resolve_ref(core: &Core, name: &str) -> Result<FileId> {
    let Some(file) = read_ref(core, name)? else {
        if core.index.get_ref(name)?.is_some() {
            core.index.delete_ref(name)?;
        }
        return Err(Error::not_found("ref", name));
    };
    let found = match has_file(core, &file) {
        Ok(f) => f,
        Err(e) if e.is_corruption() => false,
        Err(e) => return Err(e),
    };
    if !found {
        return Err(Error::RefDangling {
            name: clip(name),
            file,
        });
    }
    if core.index.get_ref(name)? != Some(file) {
        core.index.set_ref(name, file)?;
    }
    Ok(file)
}

// ------------------------------------------------------------ refresh

/// What a [`refresh`] found.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RefreshReport {
    /// Packs indexed (new to this node).
    pub packs: u64,
    /// Chunks those packs hold.
    pub chunks: u64,
    /// Files indexed (recipes new to this node).
    pub files: u64,
    /// Refs added or changed in the index.
    pub refs_updated: u64,
    /// Refs removed from the index (deleted in the store).
    pub refs_removed: u64,
    /// Objects listed.
    pub listed: u64,
    /// Objects that could not be indexed (damaged), by name.
    pub problems: Vec<Problem>,
}

fn list(objects: &dyn ObjectStore, prefix: &str) -> Result<Vec<Listed>> {
    objects
        .list_versioned(prefix)
        .map_err(|e| Error::io("list", objects.describe(prefix), e))
}

/// Brings this node's index up to date with a listing of the bucket: packs
/// and recipes it lacks are indexed (as on a miss), refs that changed since
/// the last listing (by version) are read and applied, and refs deleted in
/// the store are removed. Objects written during the listing may be missed;
/// they are found on a miss or by the next refresh.
pub(crate) fn refresh(core: &Core) -> Result<RefreshReport> {
    let mut rep = RefreshReport::default();
    refresh_files(core, &mut rep)?;
    refresh_refs(core, &mut rep)?;
    core.index.flush()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let objects = core.objects.as_ref();
    objects
        .put(REFRESHED, now.to_string().as_bytes(), PutMode::Replace)
        .map_err(|e| io_err(objects, "write", REFRESHED, e))?;
    Ok(rep)
}

/// When this node last finished a [`refresh`], if ever.
pub(crate) fn last_refresh(core: &Core) -> Option<SystemTime> {
    let b = core.objects.get(REFRESHED).ok()?;
    let ms: u64 = std::str::from_utf8(&b).ok()?.trim().parse().ok()?;
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

/// The packs and recipes part of [`refresh`].
pub(crate) fn refresh_files(core: &Core, rep: &mut RefreshReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let mut packs = Vec::new();
    for l in list(objects, PACKS)? {
        rep.listed += 1;
        match pack_of_key(&l.key) {
            Some(id) => packs.push(id),
            None => rep.problems.push(stray(&l.key)),
        }
    }
    let (n, chunks) = discover_packs(core, &packs, &mut rep.problems)?;
    rep.packs += n;
    rep.chunks += chunks;
    let mut files = Vec::new();
    for l in list(objects, RECIPES)? {
        rep.listed += 1;
        match file_of_key(&l.key) {
            Some(f) if !core.index.has_file(&f)? => files.push(f),
            Some(_) => {}
            None => rep.problems.push(stray(&l.key)),
        }
    }
    let results = parallel(&files, |f| discover_file(core, f));
    for (f, r) in files.iter().zip(results) {
        match r {
            Ok(true) => rep.files += 1,
            Ok(false) => {} // deleted since it was listed
            Err(e @ Error::Io { .. }) => return Err(e),
            Err(e) => rep.problems.push(Problem {
                object: format!("file {f}"),
                detail: e.to_string(),
            }),
        }
    }
    Ok(())
}

fn stray(key: &str) -> Problem {
    Problem {
        object: key.to_string(),
        detail: "unexpected object (not named like a pack, recipe or ref)".into(),
    }
}

/// The refs part of [`refresh`].
fn refresh_refs(core: &Core, rep: &mut RefreshReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let seen = load_seen(core);
    let listed = list(objects, REFS)?;
    rep.listed += listed.len() as u64;
    let mut now_seen: HashMap<String, Version> = HashMap::new();
    let mut todo: Vec<String> = Vec::new();
    let mut present: HashSet<String> = HashSet::new();
    for l in listed {
        if !is_ref_key(&l.key) {
            rep.problems.push(stray(&l.key));
            continue;
        }
        present.insert(l.key.clone());
        match (&l.version, seen.get(&l.key)) {
            (Some(v), Some(s)) if v == s => {
                now_seen.insert(l.key, v.clone());
            }
            _ => todo.push(l.key),
        }
    }
    let fetched = parallel(&todo, |key| match objects.get_versioned(key) {
        Ok(r) => Ok(r),
        Err(e) => Err(io_err(objects, "read ref", key, e)),
    });
    for (key, r) in todo.iter().zip(fetched) {
        let Some((bytes, version)) = r? else {
            continue; // deleted since it was listed
        };
        let (name, file) = match decode_ref(&bytes) {
            Ok((n, f)) if ref_key(&n) == *key => (n, f),
            Ok(_) => {
                rep.problems.push(Problem {
                    object: key.clone(),
                    detail: "ref file stored under the wrong name".into(),
                });
                continue;
            }
            Err(d) => {
                rep.problems.push(Problem {
                    object: key.clone(),
                    detail: format!("damaged ref file: {d}"),
                });
                continue;
            }
        };
        match has_file(core, &file) {
            Ok(true) => {}
            Err(e @ Error::Io { .. }) => return Err(e),
            Ok(false) | Err(_) => {
                rep.problems.push(Problem {
                    object: format!("ref {}", clip(&name)),
                    detail: format!("names file {file}, whose recipe is missing or damaged"),
                });
                continue;
            }
        }
        if core.index.get_ref(&name)? != Some(file) {
            core.index.set_ref(&name, file)?;
            rep.refs_updated += 1;
        }
        now_seen.insert(key.clone(), version);
    }
    // Refs the index holds whose objects are gone: deleted by another node
    // (confirmed by a read, since a ref may have been set since the listing).
    for (name, _) in core.index.refs_with_prefix("")? {
        let key = ref_key(&name);
        if present.contains(&key) {
            continue;
        }
        match objects.get(&key) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                core.index.delete_ref(&name)?;
                rep.refs_removed += 1;
            }
            Err(e) => return Err(io_err(objects, "read ref", &key, e)),
            Ok(_) => {}
        }
    }
    core.index.flush()?;
    save_seen(core, &now_seen)
}

fn load_seen(core: &Core) -> HashMap<String, Version> {
    let Ok(b) = core.objects.get(REFS_SEEN) else {
        return HashMap::new();
    };
    String::from_utf8_lossy(&b)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_string(), Version(v.to_string())))
        .collect()
}

fn save_seen(core: &Core, seen: &HashMap<String, Version>) -> Result<()> {
    let mut text = String::new();
    for (k, v) in seen {
        text.push_str(k);
        text.push(' ');
        text.push_str(&v.0);
        text.push('\n');
    }
    let objects = core.objects.as_ref();
    objects
        .put(REFS_SEEN, text.as_bytes(), PutMode::Replace)
        .map_err(|e| io_err(objects, "write", REFS_SEEN, e))
}

/// Makes the next refresh read every ref (after the index may have lost
/// writes).
fn forget_seen_refs(core: &Core) -> Result<()> {
    let objects = core.objects.as_ref();
    match objects.delete(REFS_SEEN) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(objects, "remove", REFS_SEEN, e)),
    }
}

/// `f` over every item, [`DISCOVERY_THREADS`] at a time (object-store
/// requests spend their time waiting); results in item order.
fn parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
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
