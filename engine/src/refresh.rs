//! Refresh of a shared store (spec §4.3): a listing of the bucket brings a
//! node's index up to date with what other nodes wrote — packs and recipes
//! it lacks are indexed (as on a miss, `remote`), refs that changed since
//! the last listing are read and applied, refs deleted in the bucket leave
//! the index — and the catch-up of a node's index at open.

use std::collections::{HashMap, HashSet};
use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::lock;
use crate::condemned;
use crate::core::Core;
use crate::error::{clip, Error, Result};
use crate::format::{decode_ref, Recipe, DELETED_REF};
use crate::ids::{FileId, PackId};
use crate::paths::{
    file_of_key, is_ref_key, pack_key, pack_of_key, recipe_key, ref_key, PACKS, RECIPES, REFS,
};
use crate::remote::{
    discover_file, discover_packs, exists, has_file, io_err, parallel, reload_file,
};
use crate::report::{CatchUpReason, Problem, RepairReport};
use crate::storage::{Listed, ObjectStore, PutMode, Version};

/// What the last listing of refs saw: `<key> <version> <file id>` per
/// line (node-local: the `node/` prefix). A ref is read again unless both
/// its listed version and this node's index entry are what was seen: a
/// version alone (an S3 ETag, the MD5 of the bytes) comes back when a ref
/// is set back to a file it named before, while this node's index may have
/// changed meanwhile (its own delete).
const REFS_SEEN: &str = "node/refs-seen";
/// When the last [`refresh`] finished: milliseconds since the epoch.
const REFRESHED: &str = "node/refreshed";

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
    /// Files this node's index held whose recipes the store no longer
    /// holds and no ref names (another node collected them): dropped.
    pub files_forgotten: u64,
    /// Packs this node's index held that the store no longer holds and no
    /// file left in the index needs: dropped.
    pub packs_forgotten: u64,
    /// Objects that could not be indexed (damaged), by name.
    pub problems: Vec<Problem>,
    /// Ref objects that do not decode, or hold another name's ref (each
    /// also a problem): GC stops on them, since which file they name is
    /// unknown.
    #[serde(skip)]
    pub unreadable_refs: Vec<Problem>,
}

/// What a listing of the bucket found ([`refresh_files`], or a
/// collector's survey).
#[derive(Default)]
pub(crate) struct Listing {
    pub(crate) packs: HashSet<PackId>,
    pub(crate) files: HashSet<FileId>,
}

/// What [`forget_collected`] keeps of what the bucket no longer holds.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keep {
    /// What a ref or a file left in the index needs (a refresh: `verify`
    /// then reports it as damage).
    Needed,
    /// Nothing (a collector's survey: it marks from what the bucket holds).
    Nothing,
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
    let listing = refresh_files(core, &mut rep)?;
    refresh_refs(core, &mut rep)?;
    forget_collected(core, &listing, Keep::Needed, &mut rep)?;
    core.index.flush()?;
    *crate::cache::lock(&core.unreadable_refs) = rep.unreadable_refs.clone();
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
pub(crate) fn refresh_files(core: &Core, rep: &mut RefreshReport) -> Result<Listing> {
    let objects = core.objects.as_ref();
    let mut listing = Listing::default();
    let mut packs = Vec::new();
    for l in list(objects, PACKS)? {
        rep.listed += 1;
        match pack_of_key(&l.key) {
            Some(id) => {
                listing.packs.insert(id);
                packs.push(id);
            }
            None => rep.problems.push(stray(&l.key)),
        }
    }
    let (n, chunks) = discover_packs(core, &packs, &mut rep.problems)?;
    rep.packs += n;
    rep.chunks += chunks;
    let mut files = Vec::new();
    for l in list(objects, RECIPES)? {
        rep.listed += 1;
        let file = file_of_key(&l.key);
        if let Some(f) = file {
            listing.files.insert(f);
        }
        match file {
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
    Ok(listing)
}

/// Drops from this node's index what other nodes collected (spec §4.3):
/// files whose recipe objects are gone, and packs that are gone. Each
/// absence is confirmed by a request (a listing misses objects written
/// while it runs). With [`Keep::Needed`], files a ref names and packs a
/// file left in the index needs stay (so `verify` reports them as damage),
/// and a file whose cached recipe names a gone pack first takes the recipe
/// the bucket holds now (another node's repack rewrote it).
pub(crate) fn forget_collected(
    core: &Core,
    listing: &Listing,
    keep: Keep,
    rep: &mut RefreshReport,
) -> Result<()> {
    let index = &core.index;
    let named: HashSet<FileId> = match keep {
        Keep::Needed => index
            .refs_with_prefix("")?
            .into_iter()
            .map(|(_, f)| f)
            .collect(),
        Keep::Nothing => HashSet::new(),
    };
    let mut gone_files = Vec::new();
    for item in index.files() {
        let (file, bytes) = item?;
        if listing.files.contains(&file)
            || named.contains(&file)
            || exists(core, &recipe_key(&file))?
        {
            continue;
        }
        let sha = Recipe::decode(file, &bytes).ok().map(|r| r.sha256);
        gone_files.push((file, sha));
    }
    if !gone_files.is_empty() {
        core.poison_on(index.remove_files(&gone_files))?;
        for (f, _) in &gone_files {
            lock(&core.recipes).remove(f);
        }
        rep.files_forgotten += gone_files.len() as u64;
    }
    let mut gone_packs = HashSet::new();
    for item in index.packs() {
        let (pack, _) = item?;
        if !listing.packs.contains(&pack) && !exists(core, &pack_key(&pack))? {
            gone_packs.insert(pack);
        }
    }
    if gone_packs.is_empty() {
        return Ok(());
    }
    if keep == Keep::Needed {
        keep_needed_packs(core, &mut gone_packs)?;
    }
    if !gone_packs.is_empty() {
        let packs: Vec<PackId> = gone_packs.into_iter().collect();
        core.poison_on(condemned::forget_packs(core, &packs))?;
        rep.packs_forgotten += packs.len() as u64;
    }
    Ok(())
}

/// Takes out of `gone_packs` those a file in the index still needs, after
/// reloading the recipes that name them (a repack may have moved them).
fn keep_needed_packs(core: &Core, gone_packs: &mut HashSet<PackId>) -> Result<()> {
    let index = &core.index;
    let mut stale = Vec::new();
    for item in index.files() {
        let (file, bytes) = item?;
        if let Ok(r) = Recipe::decode(file, &bytes) {
            if r.terms.iter().any(|t| gone_packs.contains(&t.pack)) {
                stale.push(file);
            }
        }
    }
    for file in &stale {
        reload_file(core, file)?;
    }
    for item in index.files() {
        let (file, bytes) = item?;
        if let Ok(r) = Recipe::decode(file, &bytes) {
            for t in &r.terms {
                gone_packs.remove(&t.pack);
            }
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
    let indexed: HashMap<String, FileId> = core
        .index
        .refs_with_prefix("")?
        .into_iter()
        .map(|(name, file)| (ref_key(&name), file))
        .collect();
    let listed = list(objects, REFS)?;
    rep.listed += listed.len() as u64;
    let mut now_seen: HashMap<String, (Version, FileId)> = HashMap::new();
    let mut todo: Vec<String> = Vec::new();
    let mut present: HashSet<String> = HashSet::new();
    for l in listed {
        if !is_ref_key(&l.key) {
            rep.problems.push(stray(&l.key));
            continue;
        }
        present.insert(l.key.clone());
        match (&l.version, seen.get(&l.key), indexed.get(&l.key)) {
            (Some(v), Some((sv, sf)), Some(f)) if v == sv && sf == f => {
                now_seen.insert(l.key, (v.clone(), *f));
            }
            // A tombstone seen before (never indexed): still no ref.
            (Some(v), Some((sv, sf)), None) if v == sv && *sf == DELETED_REF => {
                now_seen.insert(l.key, (v.clone(), DELETED_REF));
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
            // A tombstone (a rolled-back ref write, spec §8.3): no ref.
            Ok((n, f)) if ref_key(&n) == *key && f == DELETED_REF => {
                if core.index.delete_ref(&n)? {
                    rep.refs_removed += 1;
                }
                now_seen.insert(key.clone(), (version, DELETED_REF));
                continue;
            }
            Ok((n, f)) if ref_key(&n) == *key => (n, f),
            Ok(_) => {
                let p = Problem {
                    object: key.clone(),
                    detail: "ref file stored under the wrong name".into(),
                };
                rep.unreadable_refs.push(p.clone());
                rep.problems.push(p);
                continue;
            }
            Err(d) => {
                let p = Problem {
                    object: key.clone(),
                    detail: format!("damaged ref file: {d}"),
                };
                rep.unreadable_refs.push(p.clone());
                rep.problems.push(p);
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
        now_seen.insert(key.clone(), (version, file));
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

fn load_seen(core: &Core) -> HashMap<String, (Version, FileId)> {
    let Ok(b) = core.objects.get(REFS_SEEN) else {
        return HashMap::new();
    };
    // Lines of another shape (older engines wrote no file id) are dropped:
    // those refs are read again.
    String::from_utf8_lossy(&b)
        .lines()
        .filter_map(|l| {
            let mut it = l.split(' ');
            let (k, v, f) = (it.next()?, it.next()?, it.next()?);
            Some((
                k.to_string(),
                (Version(v.to_string()), FileId::from_hex(f)?),
            ))
        })
        .collect()
}

fn save_seen(core: &Core, seen: &HashMap<String, (Version, FileId)>) -> Result<()> {
    let mut text = String::new();
    for (k, (v, f)) in seen {
        text.push_str(k);
        text.push(' ');
        text.push_str(&v.0);
        text.push(' ');
        text.push_str(&f.to_hex());
        text.push('\n');
    }
    let objects = core.objects.as_ref();
    objects
        .put(REFS_SEEN, text.as_bytes(), PutMode::Replace)
        .map_err(|e| io_err(objects, "write", REFS_SEEN, e))
}

/// Makes the next refresh read every ref (after the index may have lost
/// writes).
pub(crate) fn forget_seen_refs(core: &Core) -> Result<()> {
    let objects = core.objects.as_ref();
    match objects.delete(REFS_SEEN) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(objects, "remove", REFS_SEEN, e)),
    }
}
