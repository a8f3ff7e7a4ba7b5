//! Salvage (part of `repair index`): the verified chunks of a pack whose
//! footer is damaged or missing, and recipes whose packs are gone.
//!
//! A pack is a sequence of self-describing records (spec §6.2): each record
//! header carries the chunk id, lengths and a check value, so the records
//! can be found by scanning forward from the pack header without the chunk
//! table. Every record found is decoded and re-hashed; the chunks that
//! verify are written into a new pack, and the damaged pack is moved out of
//! `packs/` to `damaged/packs/` (nothing is deleted). Recipes whose terms name
//! a pack the index does not hold are then rebuilt from the chunk index when
//! every chunk of the file is stored somewhere: same chunk list, same file
//! id, new terms.

use std::collections::HashSet;

use crate::codec::decode_chunk;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{
    ChunkEntry, Compression, Recipe, Term, CHUNK_HEADER_LEN, CHUNK_MAGIC, PACK_HEADER_LEN,
};
use crate::ids::{ChunkId, FileId, PackId, PackIdHasher};
use crate::index::PackInfo;
use crate::inventory;
use crate::layout::Layout;
use crate::lease::{Lease, LeaseOptions, GC_LEASE};
use crate::pack::{PackBuilder, SealedPack};
use crate::paths::{damaged_key, pack_key, recipe_key};
use crate::report::RepairReport;
use crate::storage::{ObjectStore, PutMode, ReadHandle};

/// Salvages every pack on storage the index does not hold (those a catch-up
/// could not open), then rebuilds the recipes that name missing packs. On
/// a shared store it holds the GC lease meanwhile (spec §10.6): it rewrites
/// recipes, which must not race a collector's deletions.
pub(crate) fn salvage(core: &Core, rep: &mut RepairReport) -> Result<()> {
    if !core.objects.shared() {
        return salvage_with(core, rep, &mut || Ok(()));
    }
    let mut lease = Lease::acquire(
        core.objects.clone(),
        GC_LEASE,
        &Lease::default_holder(),
        LeaseOptions::default(),
    )?;
    let r = salvage_with(core, rep, &mut || lease.renew());
    if let Err(e) = lease.release() {
        tracing::warn!(error = %e, "releasing the GC lease after repair failed");
    }
    r
}

/// [`salvage`], calling `keep` (which renews a held lease) before each
/// step that writes.
fn salvage_with(
    core: &Core,
    rep: &mut RepairReport,
    keep: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let objects = core.objects.as_ref();
    let indexed: HashSet<PackId> = core
        .index
        .packs()
        .filter_map(|p| p.ok().map(|(id, _)| id))
        .collect();
    let mut strays = Vec::new();
    for id in inventory::packs(objects, &mut strays)? {
        if !indexed.contains(&id) {
            // On a shared store another node may have uploaded it since the
            // listing that filled the index: salvage only what does not open.
            if objects.shared() && crate::remote::discover_pack(core, &id).is_ok() {
                continue;
            }
            keep()?;
            salvage_pack(core, id, rep)?;
        }
    }
    keep()?;
    relocate_recipes(core, rep)
}

/// Scans one unreadable pack's records, re-packs the verified chunks and
/// moves the pack to `damaged/`.
fn salvage_pack(core: &Core, id: PackId, rep: &mut RepairReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let key = pack_key(&id);
    let handle = objects
        .open(&key)
        .map_err(|e| Error::io("open pack", objects.describe(&key), e))?;
    let found = scan_records(handle.as_ref());
    // Keep the damaged bytes first (copied, durably): nothing is lost
    // whatever happens next.
    let len = handle.len();
    let bytes = handle
        .read_at(0, len as usize)
        .map_err(|e| Error::io("read pack", objects.describe(&key), e))?;
    drop(handle);
    let kept = damaged_key(&key);
    put_replace(objects, &kept, &bytes)?;
    let content = {
        let mut h = PackIdHasher::new();
        h.update(&bytes);
        h.finish()
    };
    drop(bytes);
    let mut new_pack = None;
    let mut recoded = false;
    if !found.is_empty() {
        let sealed = match repack(objects, &found, id, false) {
            // The pack these records rebuild has its name taken by other
            // bytes (two packs stored under each other's names): one record
            // in another encoding makes a pack of another name, holding the
            // same chunks, so neither object is lost.
            Err(Error::PackNameTaken { .. }) => {
                recoded = true;
                repack(objects, &found, id, true)?
            }
            r => r?,
        };
        let chunks: Vec<(u32, ChunkEntry)> = (0u32..).zip(sealed.entries.iter().copied()).collect();
        let info = PackInfo {
            size: sealed.size,
            chunk_count: sealed.entries.len() as u32,
            raw_bytes: sealed.raw_bytes,
        };
        // (A pack stored under another name may be one the index holds.)
        let new = core.index.pack(&sealed.id)?.is_none();
        core.index.add_pack(sealed.id, info, &chunks)?;
        core.index.flush()?;
        // The report's figures are of the index as rebuilt: with this pack.
        if new {
            rep.packs += 1;
            rep.chunks += chunks.len() as u64;
        }
        new_pack = Some(sealed.id);
    }
    if new_pack != Some(id) {
        objects
            .delete(&key)
            .map_err(|e| Error::io("remove pack", objects.describe(&key), e))?;
    }
    let what = match new_pack {
        Some(p) if p == content && content != id => format!(
            "its bytes ({len}) are pack {content}, not the pack of its name, and all {} of its chunks verify: stored under its own name",
            found.len()
        ),
        Some(p) if recoded => format!(
            "its bytes ({len}) are pack {content}, not the pack of its name, and that name holds other bytes: its {} verified chunks were stored as pack {p}",
            found.len()
        ),
        Some(p) if p == id => format!(
            "unreadable ({len} bytes), but all {} of its records verify: rewritten whole, with a good footer",
            found.len()
        ),
        Some(p) => format!(
            "unreadable ({len} bytes); {} verified chunks found by scanning its records were re-packed into pack {p}",
            found.len()
        ),
        None => format!("unreadable ({len} bytes) and no record in it verifies"),
    };
    // The catch-up's report of this pack is answered by this one.
    let object = format!("pack {id}");
    rep.problems.retain(|p| p.object != object);
    rep.healed(
        object,
        format!(
            "{what}; the damaged bytes were kept at {}",
            objects.describe(&kept)
        ),
    );
    Ok(())
}

/// Writes `records` (verified) into a new pack, replacing the object of
/// pack `damaged` if they rebuild exactly that pack. With `recode_first`,
/// the first record is stored in another encoding (raw if it was encoded,
/// else zstd), which makes other bytes, so a pack of another name.
fn repack(
    objects: &dyn ObjectStore,
    records: &[(ChunkEntry, bytes::Bytes)],
    damaged: PackId,
    recode_first: bool,
) -> Result<SealedPack> {
    let mut b = PackBuilder::create(objects)?;
    for (n, (e, stored)) in records.iter().enumerate() {
        if n == 0 && recode_first {
            let (compression, other) = recode(e, stored)?;
            b.append(objects, e.id, e.raw_len, compression, &other)?;
        } else {
            b.append(objects, e.id, e.raw_len, e.compression, stored)?;
        }
    }
    b.seal_over(objects, Some(damaged))
}

/// A verified record's chunk in another encoding than its own.
fn recode(e: &ChunkEntry, stored: &bytes::Bytes) -> Result<(Compression, bytes::Bytes)> {
    let bug = |d: String| Error::Bug(format!("re-encoding verified chunk {}: {d}", e.id));
    let raw = decode_chunk(stored, e.compression, e.raw_len).map_err(bug)?;
    if e.compression != Compression::None {
        return Ok((Compression::None, raw));
    }
    let z = bytes::Bytes::from(zstd::bulk::compress(&raw, 1).map_err(|x| bug(x.to_string()))?);
    match decode_chunk(&z, Compression::Zstd, e.raw_len) {
        Ok(back) if back == raw => Ok((Compression::Zstd, z)),
        _ => Err(bug("the zstd frame does not decode to the chunk".into())),
    }
}

fn put_replace(objects: &dyn ObjectStore, key: &str, data: &[u8]) -> Result<()> {
    objects
        .put(key, data, PutMode::Replace)
        .map_err(|e| Error::io("write", objects.describe(key), e))
}

/// The records of a pack found by scanning forward from its header, each
/// decoded and re-hashed: (entry, stored bytes) of every chunk that
/// verifies. A damaged record header is skipped by searching forward for
/// the next header that decodes (magic and check value).
pub(crate) fn scan_records(pack: &dyn ReadHandle) -> Vec<(ChunkEntry, bytes::Bytes)> {
    let len = pack.len();
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut pos = PACK_HEADER_LEN as u64;
    while pos + CHUNK_HEADER_LEN as u64 <= len {
        let header = pack
            .read_at(pos, CHUNK_HEADER_LEN)
            .ok()
            .and_then(|h| ChunkEntry::decode_header(&h, pos).ok());
        let Some(e) = header else {
            pos = next_magic(pack, pos + 1);
            continue;
        };
        let end = pos + e.record_len();
        let stored = (end <= len)
            .then(|| pack.read_at(e.data_offset(), e.stored_len as usize).ok())
            .flatten();
        let verified = stored.filter(|s| {
            decode_chunk(s, e.compression, e.raw_len).is_ok_and(|raw| ChunkId::of(&raw) == e.id)
        });
        match verified {
            Some(s) => {
                if seen.insert(e.id) {
                    out.push((e, s));
                }
                pos = end;
            }
            // A header that decodes but whose data does not verify: its
            // lengths may still be right, but do not trust them.
            None => pos = next_magic(pack, pos + 1),
        }
    }
    out
}

/// The offset of the next record magic at or after `from` (or the end).
fn next_magic(pack: &dyn ReadHandle, from: u64) -> u64 {
    const WINDOW: u64 = 1 << 20;
    let len = pack.len();
    let mut at = from;
    while at + CHUNK_MAGIC.len() as u64 <= len {
        let n = (len - at).min(WINDOW);
        let Ok(buf) = pack.read_at(at, n as usize) else {
            return len;
        };
        if let Some(i) = buf
            .windows(CHUNK_MAGIC.len())
            .position(|w| w == CHUNK_MAGIC)
        {
            return at + i as u64;
        }
        if n < WINDOW {
            break;
        }
        // Overlap by the magic's length less one, so a split magic is found.
        at += n - (CHUNK_MAGIC.len() as u64 - 1);
    }
    len
}

/// Why a recipe is rebuilt.
enum Stale {
    /// It names a pack the index does not hold.
    PackGone,
    /// A copy it names does not verify, and the index holds another.
    DamagedCopy,
}

/// Rebuilds the terms of every recipe that names a pack the index does not
/// hold, or a chunk copy that does not verify while the index holds
/// another (verified when the index was rebuilt), from where the chunk
/// index says each chunk is; a chunk stored nowhere keeps its old term
/// (reading it fails, naming the missing pack), so the rest of the file
/// reads. Then drops the catch-up's problems about files whose chunks are
/// all stored now.
fn relocate_recipes(core: &Core, rep: &mut RepairReport) -> Result<()> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    let packs: HashSet<PackId> = index
        .packs()
        .filter_map(|p| p.ok().map(|(id, _)| id))
        .collect();
    let mut stale = Vec::new();
    for item in index.files() {
        let (file, bytes) = item?;
        let Ok(r) = Recipe::decode(file, &bytes) else {
            continue;
        };
        if r.terms.iter().any(|t| !packs.contains(&t.pack)) {
            stale.push((Layout::new(r), Stale::PackGone));
            continue;
        }
        let layout = Layout::new(r);
        if names_damaged_copy(core, &layout)? {
            stale.push((layout, Stale::DamagedCopy));
        }
    }
    let mut whole: HashSet<String> = HashSet::new();
    for (old, why) in stale {
        let file = old.recipe.file;
        let mut terms: Vec<Term> = Vec::new();
        let (mut missing, mut moved) = (0usize, 0usize);
        for i in 0..old.chunk_count() {
            let Some(c) = old.chunk(i) else {
                return Err(Error::Bug(format!("recipe of {file} has no chunk {i}")));
            };
            let (pack, index_in_pack) = match index.chunk(&c.id)? {
                Some(loc) => {
                    moved += usize::from(loc.pack != c.pack || loc.index != c.pack_index);
                    (loc.pack, loc.index)
                }
                None => {
                    missing += 1;
                    (c.pack, c.pack_index)
                }
            };
            match terms.last_mut() {
                Some(t)
                    if t.pack == pack
                        && t.first_chunk.checked_add(t.chunk_count) == Some(index_in_pack) =>
                {
                    t.chunk_count += 1;
                    t.unpacked_len += u64::from(c.len);
                }
                _ => terms.push(Term {
                    pack,
                    first_chunk: index_in_pack,
                    chunk_count: 1,
                    unpacked_len: u64::from(c.len),
                }),
            }
        }
        if moved > 0 {
            let recipe = Recipe {
                terms,
                ..old.recipe.clone()
            };
            let bytes = recipe.encode();
            put_replace(objects, &recipe_key(&file), &bytes)?;
            index.replace_recipe(file, &bytes)?;
        }
        if missing == 0 {
            whole.insert(format!("file {file}"));
            rep.healed(
                format!("file {file}"),
                match why {
                    Stale::PackGone => "its recipe named packs that are gone; rewritten to read every chunk from where it is stored",
                    Stale::DamagedCopy => "its recipe named a chunk copy that does not verify; rewritten to read every chunk from its verified copy",
                },
            );
        } else {
            // This answers the catch-up's report of the file (made before
            // salvage): one line per file, with what is lost now.
            let object = format!("file {file}");
            rep.problems.retain(|p| p.object != object);
            rep.problem(
                object,
                format!("{missing} of its chunks are stored nowhere: reads of those ranges fail (the rest reads)"),
            );
        }
    }
    index.flush()?;
    // The catch-up reported files with chunks it could not find; salvage
    // may have brought them back.
    let mut resolved = Vec::new();
    for p in &rep.problems {
        let Some(file) = p.object.strip_prefix("file ").and_then(FileId::from_hex) else {
            continue;
        };
        if whole.contains(&p.object) {
            resolved.push(p.object.clone());
            continue;
        }
        let Some(bytes) = index.recipe_bytes(&file)? else {
            continue;
        };
        if let Ok(r) = Recipe::decode(file, &bytes) {
            let mut all = true;
            for (id, _) in &r.chunks {
                all &= index.chunk(id)?.is_some();
            }
            if all && r.terms.iter().all(|t| packs.contains(&t.pack)) {
                resolved.push(p.object.clone());
            }
        }
    }
    rep.problems
        .retain(|p| !resolved.contains(&p.object) || p.detail.contains("stored nowhere"));
    Ok(())
}

/// Whether the file names a copy of a chunk, other than the one the index
/// holds, that does not verify (read and re-hashed; copies the index holds
/// were verified when it was rebuilt, and the others are few: duplicates).
fn names_damaged_copy(core: &Core, layout: &Layout) -> Result<bool> {
    for i in 0..layout.chunk_count() {
        let Some(c) = layout.chunk(i) else {
            continue;
        };
        let Some(loc) = core.index.chunk(&c.id)? else {
            continue;
        };
        if (loc.pack, loc.index) != (c.pack, c.pack_index)
            && core.packs.read_chunk(&c.pack, c.pack_index, &c.id).is_err()
        {
            return Ok(true);
        }
    }
    Ok(false)
}
