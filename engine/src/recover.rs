//! Catching the index up with the objects (spec §10.3), healing recipe and
//! ref objects from the index's copies.
//!
//! The packs, recipes and refs are the store; the index is a cache of them.
//! When an open cannot trust the index (see the `open` module) it *catches up*:
//! it indexes every pack and recipe the index lacks (every chunk re-hashed
//! first), heals recipe and ref objects that are missing or damaged from the
//! index's verified copies, and makes the index's refs agree with the ref
//! objects. It is one mechanism for every case: `repair index` is the same
//! catch-up over an empty index, after healing from the old one.

use std::collections::{HashMap, HashSet};

use crate::core::Core;
use crate::error::{clip, Error, Result};
use crate::format::{decode_ref, encode_ref, ref_file_field, ChunkEntry, Recipe, DELETED_REF};
use crate::ids::{FileId, PackId};
use crate::index::{Index, PackInfo};
use crate::inventory;
use crate::pack::{check_pack_name, PackReader};
use crate::paths::{recipe_key, ref_key};
use crate::refs;
use crate::report::{CatchUpReason, RepairReport};
use crate::storage::{Cas, ObjectStore, PutMode};

/// Indexes every pack and recipe the index lacks, heals recipe and ref
/// objects from the index's copies, and makes the index's refs agree with
/// the ref objects. When the counters were the reason, they are recomputed
/// from the index first.
pub(crate) fn catch_up(core: &Core, reason: CatchUpReason) -> Result<RepairReport> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    let mut rep = RepairReport::default();
    if reason == CatchUpReason::CountersDiffer {
        index.recount()?;
    }
    let indexed: HashSet<PackId> = index
        .packs()
        .filter_map(|p| p.ok().map(|(id, _)| id))
        .collect();
    for id in inventory::packs(objects, &mut rep.problems)? {
        if !indexed.contains(&id) {
            index_pack(objects, index, id, &mut rep)?;
        }
    }
    heal(core, &mut rep)?;
    index.flush()?;
    Ok(rep)
}

/// Makes the recipe and ref objects and the index agree, in both
/// directions: the objects are the durable copy, but the index's copy of a
/// recipe verifies against its file id like the object does, so a recipe
/// object that is missing or damaged is rewritten from it, and so is a
/// damaged ref object (spec §10.3).
pub(crate) fn heal(core: &Core, rep: &mut RepairReport) -> Result<()> {
    sync_recipes(core, rep)?;
    reconcile_refs(core, rep)
}

/// Recipe objects against the index's copies: a valid object the index
/// lacks is indexed; a valid object that differs from the index copy
/// replaces it (the object is the durable copy); a missing or damaged object
/// whose index copy verifies is rewritten from that copy.
fn sync_recipes(core: &Core, rep: &mut RepairReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    let mut on_disk: HashMap<FileId, String> = inventory::recipes(objects, &mut rep.problems)?
        .into_iter()
        .collect();
    // What to do with each file the index holds, decided before writing.
    let mut rewrite: Vec<(FileId, String, Vec<u8>, String)> = Vec::new();
    let mut adopt: Vec<(FileId, Vec<u8>)> = Vec::new();
    let mut dropped: Vec<(FileId, Option<crate::ids::Sha256>)> = Vec::new();
    // Packs the dropped files named that are gone.
    let mut gone_packs: HashSet<PackId> = HashSet::new();
    // The files ref files name, read when first needed.
    let mut named: Option<Option<HashSet<FileId>>> = None;
    for item in index.files() {
        let (file, copy) = item?;
        let copy_ok = Recipe::decode(file, &copy).is_ok();
        let key = on_disk.remove(&file).unwrap_or_else(|| recipe_key(&file));
        let disk = match objects.get(&key) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io("read recipe", objects.describe(&key), e)),
        };
        let why = match disk {
            Some(b) if b[..] == copy[..] => continue,
            Some(b) => match Recipe::decode(file, &b) {
                Ok(_) => {
                    adopt.push((file, b));
                    continue;
                }
                Err(e) => format!("recipe file was damaged ({})", e.into_error(file)),
            },
            None => {
                if let Some((sha, gone)) = collected(core, &file, &copy, &mut named)? {
                    dropped.push((file, Some(sha)));
                    gone_packs.extend(gone);
                    continue;
                }
                "recipe file was missing".to_string()
            }
        };
        if copy_ok {
            rewrite.push((file, key, copy.to_vec(), why));
        } else {
            rep.problem(
                format!("file {file}"),
                format!("{why}, and the index's copy is damaged too: the file is lost"),
            );
        }
    }
    for (file, key, bytes, why) in rewrite {
        let r = objects
            .put(&key, &bytes, PutMode::Replace)
            .map_err(|e| Error::io("write recipe", objects.describe(&key), e));
        core.poison_on(r)?;
        rep.healed(
            format!("file {file}"),
            format!("{why}; rewritten from the index's verified copy"),
        );
    }
    for (file, bytes) in adopt {
        index.replace_recipe(file, &bytes)?;
        rep.files += 1;
    }
    if !dropped.is_empty() {
        tracing::warn!(
            files = dropped.len(),
            "the index lists files a GC deleted after it was written (their recipes and packs are gone, and no ref names them): dropped from it"
        );
        core.poison_on(index.remove_files(&dropped))?;
        // Their packs that are gone leave the index too (with their chunk
        // entries, so nothing dedups against them), unless a file the index
        // keeps names one (then it is damage, for verify to report).
        for item in index.files() {
            let (file, bytes) = item?;
            if let Ok(r) = Recipe::decode(file, &bytes) {
                for t in &r.terms {
                    gone_packs.remove(&t.pack);
                }
            }
        }
        let journal = crate::gc::Journal {
            packs: gone_packs.into_iter().collect(),
            ..Default::default()
        };
        crate::gc::apply_to_index(core, &journal)?;
    }
    for (file, key) in on_disk {
        index_recipe(objects, index, file, &key, rep)?;
    }
    Ok(())
}

/// Whether a file whose recipe object is missing was collected by a GC the
/// index does not know of (an index older than the store: restored from a
/// copy, or rolled back): some pack its recipe names is gone too, and no
/// ref file names it. Rewriting its recipe would only bring back a file
/// that cannot be read, reported as damage. Returns its sha256 (to drop the
/// alias) and its packs that are gone. `named` caches the files ref files name (`None` inside: some
/// ref file could not be read or decoded, so nothing is judged collected).
fn collected(
    core: &Core,
    file: &FileId,
    copy: &[u8],
    named: &mut Option<Option<HashSet<FileId>>>,
) -> Result<Option<(crate::ids::Sha256, Vec<PackId>)>> {
    let Ok(recipe) = Recipe::decode(*file, copy) else {
        return Ok(None);
    };
    let objects = core.objects.as_ref();
    let mut gone = Vec::new();
    for t in &recipe.terms {
        match objects.exists(&crate::paths::pack_key(&t.pack)) {
            Ok(true) => {}
            Ok(false) => gone.push(t.pack),
            Err(_) => return Ok(None),
        }
    }
    if gone.is_empty() {
        return Ok(None);
    }
    if named.is_none() {
        *named = Some(files_ref_files_name(objects));
    }
    match named {
        Some(Some(set)) if !set.contains(file) => Ok(Some((recipe.sha256, gone))),
        _ => Ok(None),
    }
}

/// The files the ref files name (tombstones and misplaced files aside), or
/// `None` when one cannot be listed, read or decoded.
fn files_ref_files_name(objects: &dyn ObjectStore) -> Option<HashSet<FileId>> {
    let mut problems = Vec::new();
    let keys = inventory::refs(objects, &mut problems).ok()?;
    if !problems.is_empty() {
        return None;
    }
    let mut out = HashSet::new();
    for key in keys {
        let bytes = objects.get(&key).ok()?;
        let (name, file) = decode_ref(&bytes).ok()?;
        if ref_key(&name) == key && file != DELETED_REF {
            out.insert(file);
        }
    }
    Some(out)
}

/// Makes the index's refs agree with the ref objects (the durable copy). A
/// damaged ref object whose ref the index holds (naming a stored file) is
/// rewritten from the index, and so, on a directory store, is a missing one
/// (a deletion leaves a tombstone; on a shared store a missing object is
/// another node's deletion). A ref object that cannot be applied or healed
/// (damaged, or naming a file that is not stored) is reported and left
/// alone: it may be the only copy of its ref. (It cannot be the leftover of
/// an unacknowledged put: a put makes the recipe durable before the ref,
/// and recipes were indexed before this runs.)
fn reconcile_refs(core: &Core, rep: &mut RepairReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    let mut on_disk: HashMap<String, FileId> = HashMap::new();
    // Ref objects that exist but cannot be applied: key → what is wrong
    // (empty: names a file that is not stored, reported already).
    let mut damaged: HashMap<String, String> = HashMap::new();
    // Names whose ref file is a tombstone: deleted refs.
    let mut deleted: HashSet<String> = HashSet::new();
    // Valid ref files of another name (two files swapped, one copied over
    // another): (where found, name, file).
    let mut misplaced: Vec<(String, String, FileId)> = Vec::new();
    for key in inventory::refs(objects, &mut rep.problems)? {
        // A failed read is an error (not damage): never guess.
        let bytes = objects
            .get(&key)
            .map_err(|e| Error::io("read ref", objects.describe(&key), e))?;
        match decode_ref(&bytes) {
            Ok((name, file)) if ref_key(&name) == key && file == DELETED_REF => {
                deleted.insert(name);
            }
            Ok((name, file)) if ref_key(&name) == key => {
                if index.has_file(&file)? {
                    on_disk.insert(name, file);
                } else {
                    rep.problem(
                        format!("ref {}", clip(&name)),
                        format!("names file {file}, which is not stored ({key})"),
                    );
                    damaged.insert(key, String::new());
                }
            }
            Ok((name, file)) => {
                if file != DELETED_REF {
                    misplaced.push((key.clone(), name, file));
                }
                damaged.insert(key, "ref file stored under the wrong name".into());
            }
            Err(detail) => {
                damaged.insert(key, format!("ref file: {detail}"));
            }
        }
    }
    // A misplaced ref file is a copy of its ref: where that ref has no
    // valid file of its own (missing, damaged, or another ref's) and the
    // index holds no copy (which would be healed from below), it is written
    // where it belongs.
    for (found, name, file) in misplaced {
        let key = ref_key(&name);
        let own = on_disk.contains_key(&name) || deleted.contains(&name);
        if own || index.get_ref(&name)?.is_some() || !index.has_file(&file)? {
            continue;
        }
        core.poison_on(refs::write_file(core, &name, &file))?;
        damaged.remove(&key);
        on_disk.insert(name.clone(), file);
        rep.healed(
            format!("ref {}", clip(&name)),
            format!("its ref file was stored under another ref's name ({found}); rewritten where it belongs ({key})"),
        );
    }
    for (name, file) in index.refs_with_prefix("")? {
        let key = ref_key(&name);
        match on_disk.remove(&name) {
            Some(f) if f == file => {}
            Some(f) => {
                index.set_ref(&name, f)?;
                rep.refs += 1;
            }
            None => match damaged.remove(&key) {
                // Names a file that is not stored: reported above; the index
                // keeps its value.
                Some(why) if why.is_empty() => {}
                Some(why) if index.has_file(&file)? => {
                    core.poison_on(refs::write_file(core, &name, &file))?;
                    rep.healed(
                        format!("ref {}", clip(&name)),
                        format!("{why} ({key}); rewritten from the index's copy (file {file})"),
                    );
                }
                Some(why) => {
                    rep.problem(
                        key,
                        format!("{why}; the index's copy names a file that is not stored"),
                    );
                }
                // Deleted: a tombstone, or on a shared store no object
                // (another node deleted it; the bucket is what every node
                // agrees on).
                None if deleted.contains(&name) || objects.shared() => {
                    index.delete_ref(&name)?;
                }
                // A deletion leaves a tombstone here, so a missing ref
                // file is damage: rewrite it.
                None if index.has_file(&file)? => {
                    core.poison_on(refs::write_file(core, &name, &file))?;
                    rep.healed(
                        format!("ref {}", clip(&name)),
                        format!("ref file was missing ({key}); rewritten from the index's copy (file {file})"),
                    );
                }
                None => {
                    rep.problem(
                        format!("ref {}", clip(&name)),
                        format!("ref file is missing ({key}) and the index's copy names file {file}, which is not stored"),
                    );
                }
            },
        }
    }
    for (key, why) in damaged {
        if !why.is_empty() {
            rep.problem(
                key,
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

/// Indexes the intact chunks of one pack.
fn index_pack(
    objects: &dyn ObjectStore,
    index: &Index,
    id: PackId,
    rep: &mut RepairReport,
) -> Result<()> {
    let reader = match PackReader::open(objects, id) {
        Ok(r) => r,
        Err(e) => {
            rep.problem(format!("pack {id}"), e.to_string());
            return Ok(());
        }
    };
    let misnamed = check_pack_name(objects, &id).err();
    let mut good: Vec<(u32, ChunkEntry)> = Vec::new();
    let mut bad = Vec::new();
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
            Err(e) => bad.push((format!("pack {id} chunk {i}"), e.to_string())),
        }
    }
    if let Some(detail) = misnamed {
        if bad.is_empty() {
            // Every chunk verifies, yet the bytes are not the pack the name
            // says: another pack under the wrong name (files swapped or
            // copied over each other). Indexed under this name, it would
            // stay here for good and take the place of the pack it names;
            // left out of the index, `repair index` re-packs it (§10.3).
            rep.problem(
                format!("pack {id}"),
                format!("{detail}, though every chunk in it verifies: not indexed; `tessera repair index` stores it under its own name"),
            );
            return Ok(());
        }
        // A damaged pack: index its intact chunks anyway (each verified above).
        rep.problem(format!("pack {id}"), detail);
    }
    for (object, detail) in bad {
        rep.problem(object, detail);
    }
    let info = PackInfo {
        size: reader.file_len(),
        chunk_count: reader.chunk_count(),
        raw_bytes: raw,
    };
    index.add_pack(id, info, &good)?;
    rep.packs += 1;
    rep.chunks += good.len() as u64;
    Ok(())
}

/// Indexes one recipe object.
fn index_recipe(
    objects: &dyn ObjectStore,
    index: &Index,
    file: FileId,
    key: &str,
    rep: &mut RepairReport,
) -> Result<()> {
    let bytes = match objects.get(key) {
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
        Err(e) => rep.problem(format!("file {file}"), e.into_error(file).to_string()),
    }
    Ok(())
}

/// `repair index` on a shared store, before the index is rebuilt from the
/// bucket: recipe and ref objects that are *present but damaged* are
/// rewritten from this node's verified copies, each with a conditional
/// write that succeeds only while the object is still the damaged version
/// read (spec §4.3, §10.3). Missing objects are left alone: another node
/// may have deleted them. A recipe copy is self-verifying (its chunk list
/// hashes to the file id), so what it says is determined; a ref copy may be
/// stale (another node may have moved the ref since this node read it), so
/// a damaged ref object is rewritten only when its own file-id field still
/// names the file this node's copy names (the damage is elsewhere in it);
/// otherwise it is reported with the file this node last saw it name.
pub(crate) fn heal_shared(core: &Core, rep: &mut RepairReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    // One recipe at a time (the writes go to the bucket, not the index):
    // memory stays one recipe, however many files the store holds.
    for item in index.files() {
        let (file, copy) = item?;
        if Recipe::decode(file, &copy).is_err() {
            continue;
        }
        let key = recipe_key(&file);
        let Some((bytes, version)) = objects
            .get_versioned(&key)
            .map_err(|e| Error::io("read recipe", objects.describe(&key), e))?
        else {
            continue; // missing: another node may have collected it
        };
        if bytes[..] == copy[..] {
            continue;
        }
        let why = match Recipe::decode(file, &bytes) {
            // Valid (another node may have repacked it): the object wins.
            Ok(_) => continue,
            Err(e) => e.into_error(file).to_string(),
        };
        let cas = objects
            .put_if_version(&key, &copy, Some(&version))
            .map_err(|e| Error::io("write recipe", objects.describe(&key), e));
        match core.poison_on(cas)? {
            Cas::Written(_) => rep.healed(
                format!("file {file}"),
                format!(
                    "recipe file {key} was damaged ({why}); rewritten from this node's verified copy"
                ),
            ),
            Cas::Conflict => rep.problem(
                format!("file {file}"),
                format!(
                    "recipe file {key} was damaged ({why}) and changed while it was being rewritten; nothing was written (run `tessera verify` again)"
                ),
            ),
        }
    }
    for (name, file) in index.refs_with_prefix("")? {
        let key = ref_key(&name);
        let Some((bytes, version)) = objects
            .get_versioned(&key)
            .map_err(|e| Error::io("read ref", objects.describe(&key), e))?
        else {
            continue; // missing: another node deleted the ref
        };
        let detail = match decode_ref(&bytes) {
            Ok(_) => continue, // valid: the bucket wins
            Err(d) => d,
        };
        let obj = format!("ref {}", clip(&name));
        if ref_file_field(&bytes) != Some(file) || !index.has_file(&file)? {
            rep.problem(
                obj,
                format!(
                    "ref file {key} is damaged ({detail}) and not rewritten: this node last saw the ref name file {file}, but another node may have moved it since; if that is still right, `tessera ref set {} {file}` rewrites it",
                    clip(&name)
                ),
            );
            continue;
        }
        let cas = objects
            .put_if_version(&key, &encode_ref(&name, &file), Some(&version))
            .map_err(|e| Error::io("write ref", objects.describe(&key), e));
        match core.poison_on(cas)? {
            Cas::Written(_) => rep.healed(
                obj,
                format!(
                    "ref file {key} was damaged ({detail}); its file-id field still names file {file}, as this node's copy does: rewritten"
                ),
            ),
            Cas::Conflict => rep.problem(
                obj,
                format!(
                    "ref file {key} was damaged ({detail}) and changed while it was being rewritten; nothing was written"
                ),
            ),
        }
    }
    Ok(())
}
