//! Garbage collection (spec §10.5): files no ref names (and older than the
//! grace period) and packs no live recipe names are deleted, through a
//! deletion journal so that a crash never brings them back; every other
//! pack gets its live bytes measured for repack.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cache::lock;
use crate::condemned::Condemned;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{decode_ref, Recipe, DELETED_REF, TABLE_ENTRY_LEN};
use crate::ids::{ChunkId, FileId, PackId, Sha256};
use crate::index::now_millis;
use crate::lease::LeaseOptions;
use crate::options::{check_duration, millis};
use crate::paths::{
    file_of_model_key, model_key, pack_key, recipe_key, ref_key, GC_JOURNAL, MODELS,
};
use crate::storage::PutMode;

/// How to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Files stored and packs sealed less than this long ago are kept even
    /// when nothing names them (uploads in flight; a push sets its ref after
    /// it registers the file).
    pub grace: Duration,
    /// Report what would be reclaimed; change nothing.
    pub dry_run: bool,
    /// How long to wait for writers in flight to let the store go.
    pub wait: Duration,
    /// On a shared store: how long the collector waits between publishing
    /// what it condemns and deleting it (spec §10.6). At least twice every
    /// node's `StoreOptions::gc_check_valid`.
    pub writer_window: Duration,
    /// On a shared store: the GC lease's time to live and clock skew.
    pub lease: LeaseOptions,
}

impl GcOptions {
    /// Refuses time spans too long to compute with
    /// ([`crate::MAX_DURATION`]): a huge grace must not wrap to none, nor a
    /// huge window overflow the clock.
    pub(crate) fn check(&self) -> Result<()> {
        check_duration("gc grace", self.grace)?;
        check_duration("gc wait", self.wait)?;
        check_duration("gc writer_window", self.writer_window)?;
        check_duration("gc lease ttl", self.lease.ttl)?;
        check_duration("gc lease max_clock_skew", self.lease.max_clock_skew)
    }
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            dry_run: false,
            wait: Duration::from_secs(600),
            writer_window: Duration::from_secs(300),
            lease: LeaseOptions::default(),
        }
    }
}

/// What a GC found and did.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GcReport {
    /// Files in the store before.
    pub files: u64,
    /// Files kept: named by a ref or within the grace period.
    pub live_files: u64,
    /// Files deleted (or, with `dry_run`, that would be).
    pub dead_files: u64,
    /// Packs before.
    pub packs: u64,
    /// Packs deleted (or that would be).
    pub dead_packs: u64,
    /// Packs kept only because they are younger than the grace period.
    pub young_packs: u64,
    /// Bytes of packs and recipes deleted (or that would be).
    pub reclaimed_bytes: u64,
    /// Pack bytes before.
    pub stored_bytes_before: u64,
    /// Pack bytes after.
    pub stored_bytes_after: u64,
    /// Bytes live files need in packs: their chunk records and table
    /// entries (what a repack keeps).
    pub live_bytes: u64,
    /// On a shared store: bytes of chunks live files name in one pack while
    /// the index holds another live copy (two nodes stored them at once); not
    /// in `live_bytes`, so a repack reclaims them.
    pub duplicate_bytes: u64,
    /// Damage GC met and worked around, one line each: a copy a live file
    /// names that does not verify, whose verified copy in a pack nothing
    /// else keeps was kept (not deleted) for `repair index` to point the
    /// file at. Empty on a clean store; the command line exits 4 otherwise.
    pub damaged: Vec<String>,
    /// Whether nothing was changed.
    pub dry_run: bool,
    /// Seconds taken.
    pub seconds: f64,
}

/// A file GC deletes, with the sha256 alias to drop.
pub(crate) type DeadFile = (FileId, Option<Sha256>);

/// What a GC or repack deletes: written durably before anything is deleted
/// and finished by the next open if the process dies (spec §10.5).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Journal {
    pub(crate) files: Vec<DeadFile>,
    pub(crate) packs: Vec<PackId>,
    /// Chunks whose index entry points into a pack deleted here while a
    /// live recipe names another copy: (chunk, pack, index) of that copy.
    #[serde(default)]
    pub(crate) relink: Vec<(ChunkId, PackId, u32)>,
}

/// Which chunk positions of each pack live recipes name: one bit per chunk.
#[derive(Default)]
struct Marks(HashMap<PackId, Vec<u64>>);

impl Marks {
    fn set(&mut self, pack: PackId, first: u32, count: u32) {
        let bits = self.0.entry(pack).or_default();
        for i in first..first.saturating_add(count) {
            let (w, b) = ((i / 64) as usize, i % 64);
            if bits.len() <= w {
                bits.resize(w + 1, 0);
            }
            bits[w] |= 1 << b;
        }
    }

    fn positions(&self, pack: &PackId) -> Option<impl Iterator<Item = u32> + '_> {
        self.0.get(pack).map(|bits| {
            bits.iter().enumerate().flat_map(|(w, word)| {
                (0..64u32)
                    .filter(move |b| word & (1 << b) != 0)
                    .map(move |b| w as u32 * 64 + b)
            })
        })
    }
}

/// Where a collection takes the age of objects from.
pub(crate) enum Ages {
    /// The index's record of when this process stored or sealed them.
    Index,
    /// A listing of a shared store (`Last-Modified`, the server's clock,
    /// Unix ms; spec §10.6). An object the listing lacks is young.
    Listed {
        files: HashMap<FileId, u64>,
        packs: HashMap<PackId, u64>,
    },
}

impl Ages {
    fn file(&self, core: &Core, file: &FileId) -> Result<u64> {
        match self {
            Ages::Index => core.index.stored_at(file),
            Ages::Listed { files, .. } => Ok(files.get(file).copied().unwrap_or(u64::MAX)),
        }
    }

    fn pack(&self, core: &Core, pack: &PackId) -> Result<u64> {
        match self {
            Ages::Index => Ok(core.index.pack_gc(pack)?.0),
            Ages::Listed { packs, .. } => Ok(packs.get(pack).copied().unwrap_or(u64::MAX)),
        }
    }
}

/// What a collection may delete: everything dead, or (the second mark on a
/// shared store) only what the first mark condemned; a dead object outside
/// it is kept like a young one.
pub(crate) type Only<'a> = Option<&'a Condemned>;

/// Marks from the index: live files (named by a ref, or stored within the
/// grace period) and the chunk positions their recipes name; the rest of
/// the files are dead. A recipe that does not decode stops the GC: marking
/// without it could delete what it names. On a directory store the ref
/// files count too ([`ref_files_named`]); on a shared store the survey has
/// brought the index's refs to the bucket's.
fn mark(
    core: &Core,
    cutoff: u64,
    ages: &Ages,
    only: Only<'_>,
    rep: &mut GcReport,
) -> Result<(Marks, Vec<DeadFile>)> {
    let index = &core.index;
    let mut refs = index.refs_with_prefix("")?;
    if matches!(ages, Ages::Index) {
        let from_files = ref_files_named(core, &refs)?;
        refs.extend(from_files);
    }
    let named: HashSet<FileId> = refs.iter().map(|(_, f)| *f).collect();
    let mut marks = Marks::default();
    let mut dead = Vec::new();
    let mut indexed = HashSet::new();
    for item in index.files() {
        let (file, bytes) = item?;
        indexed.insert(file);
        rep.files += 1;
        let recipe = Recipe::decode(file, &bytes).map_err(|e| Error::RecipeUnreadable {
            object: format!("the index's recipe of file {file}"),
            detail: format!("does not decode ({})", e.into_error(file)),
        })?;
        let kept = only.is_some_and(|c| !c.files.contains(&file));
        if named.contains(&file) || kept || ages.file(core, &file)? > cutoff {
            rep.live_files += 1;
            for t in &recipe.terms {
                marks.set(t.pack, t.first_chunk, t.chunk_count);
            }
        } else {
            rep.dead_files += 1;
            rep.reclaimed_bytes += bytes.len() as u64;
            dead.push((file, Some(recipe.sha256)));
        }
    }
    // Model descriptions of files that are not stored (left by a deletion
    // cut short before descriptions went first): dead with their file. A
    // description is written after its recipe, so one without a recipe is
    // never an ingest's in flight.
    for file in orphan_descriptions(core, &indexed)? {
        if named.contains(&file) || only.is_some_and(|c| !c.files.contains(&file)) {
            continue;
        }
        rep.dead_files += 1;
        dead.push((file, None));
    }
    // A named file the index holds no recipe of: its recipe object is read
    // (a recipe another node published after the survey listed them), and
    // one missing or damaged stops the GC — deleting the chunks it names
    // would make the file unrecoverable even once its recipe is restored.
    for file in named.difference(&indexed) {
        let recipe = named_recipe(core, file, &refs)?;
        rep.files += 1;
        rep.live_files += 1;
        for t in &recipe.terms {
            marks.set(t.pack, t.first_chunk, t.chunk_count);
        }
    }
    Ok((marks, dead))
}

/// The files with a model description but neither an index entry nor a
/// recipe object.
fn orphan_descriptions(core: &Core, indexed: &HashSet<FileId>) -> Result<Vec<FileId>> {
    let objects = core.objects.as_ref();
    let keys = objects
        .list(MODELS)
        .map_err(|e| Error::io("list", objects.describe(MODELS), e))?;
    let mut out = Vec::new();
    for key in keys {
        let Some(file) = file_of_model_key(&key) else {
            continue;
        };
        if indexed.contains(&file) {
            continue;
        }
        let recipe = recipe_key(&file);
        match objects.exists(&recipe) {
            Ok(true) => {}
            Ok(false) => out.push(file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => out.push(file),
            Err(e) => return Err(Error::io("stat", objects.describe(&recipe), e)),
        }
    }
    Ok(out)
}

/// The recipe object of `file`, which a ref names and the index lacks;
/// a missing or damaged one is the error that stops the GC.
fn named_recipe(core: &Core, file: &FileId, refs: &[(String, FileId)]) -> Result<Recipe> {
    let objects = core.objects.as_ref();
    let key = recipe_key(file);
    let mut names: Vec<&str> = refs
        .iter()
        .filter(|(_, f)| f == file)
        .map(|(n, _)| n.as_str())
        .collect();
    names.sort_unstable();
    names.dedup();
    let problem = match objects.get(&key) {
        Ok(bytes) => match Recipe::decode(*file, &bytes) {
            Ok(r) => return Ok(r),
            Err(e) => format!("does not decode ({})", e.into_error(*file)),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => "is missing".to_string(),
        Err(e) => return Err(Error::io("read recipe", objects.describe(&key), e)),
    };
    Err(Error::RecipeUnreadable {
        object: objects.describe(&key),
        detail: format!(
            "{problem} and the index holds no copy, while ref {} names file {file} (restore the recipe, or give the file up with `tessera ref rm`)",
            names.join(", ")
        ),
    })
}

/// On a directory store: the files the ref files name. The index holds a
/// verified copy of every ref, but a ref file whose ref it lacks (an index
/// rebuilt without it, say) still keeps its file. A ref file that does not
/// decode, or holds another name's ref, stops the GC unless the index holds
/// the ref its key is for (then the index's verified copy names the file):
/// which file it names is unknown, so marking without it could delete a
/// named file.
fn ref_files_named(core: &Core, indexed: &[(String, FileId)]) -> Result<Vec<(String, FileId)>> {
    let objects = core.objects.as_ref();
    let keys: HashSet<String> = indexed.iter().map(|(n, _)| ref_key(n)).collect();
    let mut strays = Vec::new();
    let mut named = Vec::new();
    for key in crate::inventory::refs(objects, &mut strays)? {
        let bytes = match objects.get(&key) {
            Ok(b) => b,
            // Deleted since the listing (nothing deletes refs during a GC,
            // but a missing file names nothing).
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io("read ref", objects.describe(&key), e)),
        };
        let detail = match decode_ref(&bytes) {
            Ok((name, file)) if ref_key(&name) == key => {
                if file != DELETED_REF {
                    named.push((name, file));
                }
                continue;
            }
            Ok(_) => "holds another name's ref (stored under the wrong name)".to_string(),
            Err(d) => format!("is damaged ({d})"),
        };
        if keys.contains(&key) {
            tracing::warn!(object = %objects.describe(&key), "gc: ref file {detail}; the index's verified copy of its ref names its file");
            continue;
        }
        return Err(Error::RefUnreadable {
            object: objects.describe(&key),
            detail: format!("{detail}, and the index holds no copy of its ref"),
        });
    }
    Ok(named)
}

/// A pack GC kept, measured.
pub(crate) struct LivePack {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) sealed_at: u64,
    pub(crate) live_bytes: u64,
    /// Kept only for the verified copy of a chunk whose copy a live file
    /// names is damaged: a repack must not rewrite it (no file names the
    /// copy, so a rewrite would drop it).
    pub(crate) rescue: bool,
}

/// What marking found: the report so far, the packs kept, and the deletion
/// to make.
pub(crate) struct Collection {
    pub(crate) report: GcReport,
    pub(crate) live: Vec<LivePack>,
    pub(crate) journal: Journal,
    /// Unix milliseconds at or before which unnamed objects are garbage.
    pub(crate) cutoff: u64,
}

/// Marks and measures (nothing is changed). The caller holds the gate
/// exclusively.
pub(crate) fn collect(
    core: &Core,
    opts: &GcOptions,
    ages: &Ages,
    only: Only<'_>,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<Collection> {
    let index = &core.index;
    let mut rep = GcReport {
        dry_run: opts.dry_run,
        stored_bytes_before: index.counters()?.stored_bytes,
        ..Default::default()
    };
    opts.check()?;
    let cutoff = now_millis().saturating_sub(millis(opts.grace));
    progress("mark", 0, 1);
    let (marks, dead_files) = mark(core, cutoff, ages, only, &mut rep)?;
    // Packs: dead (nothing names them, older than the grace period), or
    // live with their live bytes measured.
    let packs: Vec<(PackId, u64)> = index
        .packs()
        .map(|r| r.map(|(id, info)| (id, info.size)))
        .collect::<Result<_>>()?;
    rep.packs = packs.len() as u64;
    // Dead packs first: those no live recipe names, older than the grace
    // period.
    let mut dead = HashSet::new();
    let mut young = HashSet::new();
    for (pack, size) in &packs {
        if marks.positions(pack).is_some() {
            continue;
        }
        let kept = only.is_some_and(|c| !c.packs.contains(pack));
        if kept || ages.pack(core, pack)? > cutoff {
            young.insert(*pack);
        } else {
            dead.insert(*pack);
            rep.reclaimed_bytes += size;
        }
    }
    rep.young_packs = young.len() as u64;
    // The chunks whose index entry is in a dead pack: if a live recipe names
    // another copy of one (two uploads raced), the entry is pointed there
    // instead, so dedup keeps finding it. (Memory: one id per dead chunk.)
    let mut doomed: HashSet<ChunkId> = HashSet::new();
    for pack in &dead {
        let Ok(reader) = core.packs.get(pack) else {
            continue; // unreadable: its entries are found by a scan later
        };
        for i in 0..reader.chunk_count() {
            doomed.insert(reader.entry(i)?.id);
        }
    }
    let mut relink: HashMap<ChunkId, (PackId, u32)> = HashMap::new();
    // Copies live files name of chunks in dead packs that do not verify:
    // the index is never pointed at one of those.
    let mut unverified: HashMap<ChunkId, (PackId, u32)> = HashMap::new();
    let shared = matches!(ages, Ages::Listed { .. });
    // Live packs: their live bytes, from the table entries of the named
    // positions.
    let mut live = Vec::new();
    for (n, (pack, size)) in packs.iter().enumerate() {
        progress("measure packs", n as u64, rep.packs);
        let Some(positions) = marks.positions(pack) else {
            continue;
        };
        let reader = core.packs.get(pack)?;
        let mut bytes = 0u64;
        for i in positions {
            let e = reader.entry(i)?;
            let len = e.record_len() + TABLE_ENTRY_LEN as u64;
            if doomed.contains(&e.id) && !relink.contains_key(&e.id) {
                // The index will point here: only at a copy that verifies.
                if reader.read_chunk(i, &e.id).is_ok() {
                    relink.insert(e.id, (*pack, i));
                    unverified.remove(&e.id);
                } else {
                    unverified.entry(e.id).or_insert((*pack, i));
                }
            }
            // On a shared store two nodes may each have stored a chunk (spec
            // §4.3): a copy the index does not point at, while the one it
            // points at is in a live pack, is garbage a repack reclaims
            // (recipes move to the indexed copy).
            if shared && is_duplicate(core, &e.id, pack, &dead)? {
                rep.duplicate_bytes += len;
                continue;
            }
            bytes += len;
        }
        rep.live_bytes += bytes;
        live.push(LivePack {
            id: *pack,
            size: *size,
            sealed_at: ages.pack(core, pack)?,
            live_bytes: bytes,
            rescue: false,
        });
    }
    rescue(
        core,
        ages,
        &unverified,
        &mut dead,
        &mut live,
        &mut relink,
        &mut rep,
    )?;
    let dead_bytes: u64 = packs
        .iter()
        .filter(|(id, _)| dead.contains(id))
        .map(|(_, s)| s)
        .sum();
    rep.dead_packs = dead.len() as u64;
    rep.stored_bytes_after = rep.stored_bytes_before.saturating_sub(dead_bytes);
    let relink = relink
        .into_iter()
        .map(|(id, (pack, i))| (id, pack, i))
        .collect();
    Ok(Collection {
        report: rep,
        live,
        journal: Journal {
            files: dead_files,
            packs: dead.into_iter().collect(),
            relink,
        },
        cutoff,
    })
}

/// For each chunk a live file names only by a copy that does not verify
/// (`unverified`): unless another copy stays anyway (the index's, in a
/// pack that is not dead), a dead pack holding a copy that verifies is kept
/// instead of deleted, and the index pointed at that copy — deleting it
/// would leave the damaged copy the only one. The damage is reported
/// either way (`repair index` then points the file at the good copy).
fn rescue(
    core: &Core,
    ages: &Ages,
    unverified: &HashMap<ChunkId, (PackId, u32)>,
    dead: &mut HashSet<PackId>,
    live: &mut Vec<LivePack>,
    relink: &mut HashMap<ChunkId, (PackId, u32)>,
    rep: &mut GcReport,
) -> Result<()> {
    if unverified.is_empty() {
        return Ok(());
    }
    // The copies of those chunks in dead packs: one pass over their tables.
    let mut copies: HashMap<ChunkId, Vec<(PackId, u32)>> = HashMap::new();
    for pack in dead.iter() {
        let Ok(reader) = core.packs.get(pack) else {
            continue;
        };
        for i in 0..reader.chunk_count() {
            let e = reader.entry(i)?;
            if unverified.contains_key(&e.id) {
                copies.entry(e.id).or_default().push((*pack, i));
            }
        }
    }
    let mut kept: HashMap<PackId, u64> = HashMap::new();
    for (id, (bad_pack, bad_i)) in unverified {
        let what = format!(
            "chunk {id} in pack {bad_pack} (position {bad_i}), which a live file names, does not verify"
        );
        if let Some(l) = core.index.chunk(id)? {
            if !dead.contains(&l.pack) && (l.pack, l.index) != (*bad_pack, *bad_i) {
                rep.damaged.push(format!(
                    "{what}; another copy is in pack {}: run `tessera repair index` to point the file at it",
                    l.pack
                ));
                continue;
            }
        }
        let good = copies.get(id).into_iter().flatten().find_map(|&(pack, i)| {
            let r = core.packs.get(&pack).ok()?;
            let e = r.entry(i).ok()?;
            r.read_chunk(i, id)
                .ok()
                .map(|_| (pack, i, e.record_len() + TABLE_ENTRY_LEN as u64))
        });
        match good {
            Some((pack, i, len)) => {
                *kept.entry(pack).or_default() += len;
                relink.insert(*id, (pack, i));
                rep.damaged.push(format!(
                    "{what}; pack {pack}, holding a verified copy, is kept: run `tessera repair index` to point the file at it"
                ));
            }
            None => rep
                .damaged
                .push(format!("{what}, and no verified copy is stored")),
        }
    }
    for (pack, bytes) in kept {
        if dead.remove(&pack) {
            let size = core.index.pack(&pack)?.map_or(0, |i| i.size);
            rep.reclaimed_bytes = rep.reclaimed_bytes.saturating_sub(size);
            rep.live_bytes += bytes;
            live.push(LivePack {
                id: pack,
                size,
                sealed_at: ages.pack(core, &pack)?,
                live_bytes: bytes,
                rescue: true,
            });
        }
    }
    rep.damaged.sort();
    Ok(())
}

/// Whether the index points chunk `id` at a copy in a live pack other than
/// `pack`.
fn is_duplicate(core: &Core, id: &ChunkId, pack: &PackId, dead: &HashSet<PackId>) -> Result<bool> {
    Ok(core
        .index
        .chunk(id)?
        .is_some_and(|l| l.pack != *pack && !dead.contains(&l.pack)))
}

/// Collects garbage (spec §10.5). `progress` gets (phase, done, total).
pub(crate) fn gc(
    core: &Core,
    opts: &GcOptions,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<GcReport> {
    let started = Instant::now();
    core.check_poison()?;
    let _one = lock(&core.maintenance);
    let gate = core.gate.exclusive(opts.wait)?;
    let Collection {
        mut report,
        live,
        journal,
        ..
    } = collect(core, opts, &Ages::Index, None, progress)?;
    if !opts.dry_run {
        let live: Vec<(PackId, u64)> = live.iter().map(|p| (p.id, p.live_bytes)).collect();
        core.poison_on(core.index.set_live_bytes(&live))?;
        remove_from_index(core, &journal)?;
        drop(gate);
        progress("delete", 0, 1);
        delete_objects(core, &journal, &mut || Ok(None))?;
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Steps 1–2 of a deletion (spec §10.5): the journal, durably, then the
/// index entries, flushed. The caller holds the gate exclusively.
pub(crate) fn remove_from_index(core: &Core, journal: &Journal) -> Result<()> {
    if journal.files.is_empty() && journal.packs.is_empty() {
        return Ok(());
    }
    let objects = core.objects.as_ref();
    let bytes = serde_json::to_vec(journal).map_err(|e| Error::Bug(format!("gc journal: {e}")))?;
    let r = objects
        .put(GC_JOURNAL, &bytes, PutMode::Replace)
        .map_err(|e| Error::io("write", objects.describe(GC_JOURNAL), e));
    core.poison_on(r)?;
    apply_to_index(core, journal)
}

/// The index side of a journal (idempotent).
pub(crate) fn apply_to_index(core: &Core, journal: &Journal) -> Result<()> {
    let index = &core.index;
    core.poison_on(index.remove_files(&journal.files))?;
    for (file, _) in &journal.files {
        lock(&core.recipes).remove(file);
    }
    // The chunk entries that may point into the packs: from their own
    // tables, or (for one that cannot be read) from a scan of the index.
    let mut ids: Vec<ChunkId> = Vec::new();
    let mut unreadable = Vec::new();
    for pack in &journal.packs {
        match core.packs.get(pack) {
            Ok(r) => ids.extend((0..r.chunk_count()).filter_map(|i| r.entry(i).ok().map(|e| e.id))),
            Err(_) => unreadable.push(*pack),
        }
    }
    for pack in &unreadable {
        ids.extend(index.chunks_in_pack(pack)?);
    }
    core.poison_on(index.remove_packs(&journal.packs, &mut ids))?;
    drop(ids);
    for pack in &journal.packs {
        core.packs.forget(pack);
    }
    for (id, pack, i) in &journal.relink {
        if index.chunk(id)?.is_some() {
            continue;
        }
        let (Some(info), Ok(reader)) = (index.pack(pack)?, core.packs.get(pack)) else {
            continue;
        };
        let entry = reader.entry(*i)?;
        if entry.id == *id {
            core.poison_on(index.add_pack(*pack, info, &[(*i, entry)]))?;
        }
    }
    core.poison_on(index.flush())
}

/// Steps 3–4: the objects, then the journal (idempotent). `deadline` runs
/// before every deletion: an error stops them; a time (a collector's lease
/// on a shared store ends then) is when that deletion must be done by
/// ([`crate::storage::ObjectStore::delete_by`]); `None`, no limit.
pub(crate) fn delete_objects(
    core: &Core,
    journal: &Journal,
    deadline: &mut dyn FnMut() -> Result<Option<Instant>>,
) -> Result<()> {
    let objects = core.objects.as_ref();
    let mut keys: Vec<String> = Vec::new();
    // Descriptions before recipes: a deletion cut short leaves a dead
    // file's recipe, which the next GC collects again (a description is
    // derived data, recomputed when missing), never a description whose
    // recipe is gone.
    keys.extend(journal.files.iter().map(|(f, _)| model_key(f)));
    keys.extend(journal.files.iter().map(|(f, _)| recipe_key(f)));
    keys.extend(journal.packs.iter().map(pack_key));
    keys.push(GC_JOURNAL.to_string());
    for key in keys {
        let deleted = match deadline()? {
            Some(by) => match objects.delete_by(&key, by) {
                // Its lease ran out first: the run stops, as at a check.
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut && Instant::now() >= by => {
                    return Err(Error::LeaseLost {
                        object: objects.describe(&key),
                        detail: format!(
                            "the lease ran out before this deletion was done ({e}); nothing more is deleted"
                        ),
                    })
                }
                r => r,
            },
            None => objects.delete(&key),
        };
        let r = match deleted {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("delete", objects.describe(&key), e)),
        };
        core.poison_on(r)?;
    }
    Ok(())
}

/// A journal less the files a ref names and the packs their recipes use. A
/// GC journals only files no ref names and packs no live recipe uses, under
/// the gate, and the store stays locked until the journal is finished, so a
/// journal that lists either was not written by that GC (a stale copy, or
/// forged): deleting on its word would lose a named file.
fn spare_named_files(core: &Core, mut journal: Journal) -> Result<Journal> {
    let objects = core.objects.as_ref();
    let mut named: HashSet<FileId> = core
        .index
        .refs_with_prefix("")?
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let mut ignored = Vec::new();
    for key in crate::inventory::refs(objects, &mut ignored)? {
        if let Ok(Ok((_, f))) = objects.get(&key).map(|b| crate::format::decode_ref(&b)) {
            if f != DELETED_REF {
                named.insert(f);
            }
        }
    }
    let listed = (journal.files.len(), journal.packs.len());
    journal.files.retain(|(f, _)| !named.contains(f));
    // The packs every named file's recipe uses; one whose recipe cannot be
    // read may use any of them.
    let listed_packs: HashSet<PackId> = journal.packs.iter().copied().collect();
    let mut keep: HashSet<PackId> = HashSet::new();
    for file in &named {
        if keep.len() == listed_packs.len() {
            break;
        }
        let recipe = core
            .index
            .recipe_bytes(file)?
            .and_then(|b| Recipe::decode(*file, &b).ok())
            .or_else(|| {
                let b = objects.get(&recipe_key(file)).ok()?;
                Recipe::decode(*file, &b).ok()
            });
        match recipe {
            Some(r) => keep.extend(
                r.terms
                    .iter()
                    .map(|t| t.pack)
                    .filter(|p| listed_packs.contains(p)),
            ),
            None => keep.extend(listed_packs.iter().copied()),
        }
    }
    journal.packs.retain(|p| !keep.contains(p));
    let spared = (
        listed.0 - journal.files.len(),
        listed.1 - journal.packs.len(),
    );
    if spared != (0, 0) {
        tracing::error!(
            files = spared.0,
            packs = spared.1,
            journal = %objects.describe(GC_JOURNAL),
            "the GC journal lists files a ref names, or packs their recipes use; they are kept"
        );
    }
    Ok(journal)
}

/// Finishes a deletion a crash interrupted: if a journal is there, its
/// index entries are removed and its objects deleted (spec §10.3, §10.5).
/// Returns whether there was one.
pub(crate) fn finish_journal(core: &Core) -> Result<bool> {
    let objects = core.objects.as_ref();
    let bytes = match objects.get(GC_JOURNAL) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io("read", objects.describe(GC_JOURNAL), e)),
    };
    let journal: Journal = match serde_json::from_slice(&bytes) {
        Ok(j) => j,
        Err(e) => {
            // A journal is published whole (atomically): one that does not
            // parse was damaged afterwards. Deleting on its word is unsafe;
            // leave everything and say so.
            return Err(Error::JournalCorrupt {
                object: objects.describe(GC_JOURNAL),
                detail: format!("does not parse: {e}"),
            });
        }
    };
    let journal = spare_named_files(core, journal)?;
    tracing::warn!(
        files = journal.files.len(),
        packs = journal.packs.len(),
        "finishing a GC the last session did not finish"
    );
    apply_to_index(core, &journal)?;
    delete_objects(core, &journal, &mut || Ok(None))?;
    Ok(true)
}
