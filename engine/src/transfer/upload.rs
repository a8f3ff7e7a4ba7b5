//! The upload side of a transfer: which chunks a store lacks, admitting a
//! client's pack or verified chunks only after every chunk in them
//! re-hashes, and registering a file from its chunk list only when every
//! chunk is stored.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;
use sha2::Digest;
use tessera_model::{Limits, ModelInfo, Sniffer};

use super::VerifiedChunks;
use crate::codec::decode_chunk;
use crate::condemned::DedupFilter;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{Recipe, PACK_HEADER_LEN};
use crate::ids::{ChunkId, FileId, FileIdHasher, PackId, PackIdHasher, Sha256};
use crate::index::PackInfo;
use crate::ingest::{admit_encoded, publish_files, terms_for, NewRecipe, PutReport};
use crate::pack::{encode_pack, the_same_pack, PackReader};
use crate::paths::pack_key;
use crate::read::layout;
use crate::refs;
use crate::storage::{BytesFile, PutMode};

/// Which of `ids` the store does not hold, by the rule an ingest
/// deduplicates by ([`DedupFilter`]): a chunk held only in a pack that is
/// gone (on a shared store, deleted by another node's GC since this node
/// indexed it) or condemned is missing, so the client uploads it and the
/// registration that follows names only packs that are there. (Answering
/// from the index alone sent a client to register chunks of deleted packs,
/// refused on every retry.)
pub(crate) fn missing_chunks(core: &Core, ids: &[ChunkId]) -> Result<Vec<ChunkId>> {
    let filter = DedupFilter::new(core)?;
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        let held = match core.index.chunk(id)? {
            Some(l) => filter.usable(core, &l.pack)?,
            None => false,
        };
        if !held {
            out.push(*id);
        }
    }
    Ok(out)
}

/// What admitting an uploaded pack did.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct AdmitReport {
    /// The pack.
    pub pack: PackId,
    /// Chunks in it.
    pub chunks: u64,
    /// Chunks the store did not hold before.
    pub new_chunks: u64,
}

/// Admits a pack uploaded by a client, only after checking all of it: its
/// bytes hash to the pack id claimed, its footer is intact, its records
/// tile the data region exactly (no hidden bytes), every chunk is at most
/// the store's chunk size and decodes and re-hashes to its id, and the
/// chunks' declared sizes add up to at most `max_raw` bytes (checked from
/// the chunk table before anything is decoded, so a small pack of highly
/// compressed records cannot make the store decode gigabytes). Then the
/// pack is published as it is (create-only) and indexed. A refused pack
/// leaves nothing behind.
pub(crate) fn admit_pack(
    core: &Core,
    claimed: PackId,
    bytes: Bytes,
    max_raw: u64,
) -> Result<AdmitReport> {
    core.check_poison()?;
    let what = format!("pack {claimed}");
    let reject = |reason: String| Error::Rejected {
        what: what.clone(),
        reason,
    };
    let mut h = PackIdHasher::new();
    h.update(&bytes);
    if h.finish() != claimed {
        return Err(reject(format!("its bytes hash to {}", h.finish())));
    }
    let len = bytes.len() as u64;
    let reader = PackReader::from_handle(claimed, Arc::new(BytesFile(bytes.clone())), "upload")
        .map_err(|e| reject(e.to_string()))?;
    if reader.chunk_count() == 0 {
        return Err(reject("it holds no chunk".into()));
    }
    let max = core.config.chunking.max;
    let mut table = Vec::with_capacity(reader.chunk_count() as usize);
    let mut declared = 0u64;
    for i in 0..reader.chunk_count() {
        let e = reader.entry(i).map_err(|e| reject(e.to_string()))?;
        declared += u64::from(e.raw_len);
        if declared > max_raw {
            return Err(reject(format!(
                "its chunks decode to more than {max_raw} bytes (the most one pack may carry)"
            )));
        }
        table.push(e);
    }
    let mut entries = Vec::with_capacity(table.len());
    let mut expect_offset = PACK_HEADER_LEN as u64;
    for (i, e) in (0..).zip(table) {
        if e.offset != expect_offset {
            return Err(reject(format!(
                "record {i} is at {}, not right after the one before it ({expect_offset})",
                e.offset
            )));
        }
        if e.raw_len > max {
            return Err(reject(format!(
                "chunk {} is {} bytes, more than this store's maximum {max}",
                e.id, e.raw_len
            )));
        }
        // Chunking never makes an empty chunk; a file listing them would
        // reconstruct to a chunk list that no longer hashes to its id.
        if e.raw_len == 0 {
            return Err(reject(format!("chunk {} is empty (0 bytes)", e.id)));
        }
        reader
            .read_chunk(i, &e.id)
            .map_err(|e| reject(e.to_string()))?;
        expect_offset = e.offset + e.record_len();
        entries.push((i, e));
    }
    if expect_offset != reader.table_offset() {
        return Err(reject(
            "bytes between the last record and the chunk table".into(),
        ));
    }
    let raw_bytes = entries.iter().map(|(_, e)| u64::from(e.raw_len)).sum();
    // Distinct ids: a pack may hold a chunk twice.
    let mut new_chunks = 0u64;
    let mut seen = HashSet::new();
    for (_, e) in &entries {
        if seen.insert(e.id) && core.index.chunk(&e.id)?.is_none() {
            new_chunks += 1;
        }
    }
    let key = pack_key(&claimed);
    let published = match core.objects.put(&key, &bytes, PutMode::Create) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            the_same_pack(core.objects.as_ref(), &claimed)
        }
        Err(e) => Err(Error::io("publish pack", core.objects.describe(&key), e)),
    };
    core.poison_on(published)?;
    let info = PackInfo {
        size: len,
        chunk_count: reader.chunk_count(),
        raw_bytes,
    };
    core.poison_on(core.index.add_pack(claimed, info, &entries))?;
    core.poison_on(core.index.flush())?;
    Ok(AdmitReport {
        pack: claimed,
        chunks: entries.len() as u64,
        new_chunks,
    })
}

/// Admits chunks fetched and verified by [`verify_fetched`] into the store
/// (durably, when this returns). Returns how many were new.
pub(crate) fn admit_chunks(core: &Core, chunks: &VerifiedChunks) -> Result<u64> {
    for (e, stored) in &chunks.records {
        // Re-verify: the records may not come from verify_fetched.
        let raw = decode_chunk(stored, e.compression, e.raw_len).map_err(|d| Error::Rejected {
            what: format!("chunk {}", e.id),
            reason: d,
        })?;
        if ChunkId::of(&raw) != e.id {
            return Err(Error::Rejected {
                what: format!("chunk {}", e.id),
                reason: "content does not hash to the chunk id".into(),
            });
        }
    }
    Ok(admit_encoded(core, &chunks.records)?.0)
}

/// A pack of the given chunks as they are stored locally (their records
/// copied, not re-encoded, each re-verified first): what a push uploads.
/// Returns the pack id and its bytes.
pub(crate) fn export_pack(core: &Core, ids: &[ChunkId]) -> Result<(PackId, Vec<u8>)> {
    let mut chunks = Vec::with_capacity(ids.len());
    for id in ids {
        let loc = core
            .index
            .chunk(id)?
            .ok_or_else(|| Error::not_found("chunk", &id.to_hex()))?;
        let pack = core.packs.get(&loc.pack)?;
        // Verifies the chunk (decode + hash) before it leaves the store.
        pack.read_chunk(loc.index, id)?;
        let e = loc.entry;
        let stored = pack.read_stored(loc.index)?;
        chunks.push((e.id, e.raw_len, e.compression, stored));
    }
    encode_pack(&chunks)
}

/// The chunk list of a stored file (what a push registers).
pub(crate) fn chunk_list(core: &Core, file: &FileId) -> Result<Vec<(ChunkId, u32)>> {
    Ok(layout(core, file)?.recipe.chunks.clone())
}

/// Registers a file from its chunk list, only when every chunk is stored:
/// the list must hash to `file` and sum to `size`; the file's SHA-256 is
/// computed here by reading it (verified), and a `sha256` the client claimed
/// must match. Refs are set to it. A file already stored only gets its refs.
pub(crate) fn register_file(
    core: &Core,
    file: FileId,
    size: u64,
    chunks: &[(ChunkId, u32)],
    claimed_sha256: Option<Sha256>,
    ref_names: &[&str],
) -> Result<PutReport> {
    core.check_poison()?;
    for r in ref_names {
        refs::validate(r)?;
    }
    let reject = |reason: String| Error::Rejected {
        what: format!("file {file}"),
        reason,
    };
    let mut h = FileIdHasher::new();
    let mut total = 0u64;
    for (id, len) in chunks {
        h.push(id, u64::from(*len));
        total += u64::from(*len);
    }
    if h.finish() != file {
        return Err(reject(format!("its chunk list hashes to {}", h.finish())));
    }
    if total != size {
        return Err(reject(format!("its chunks hold {total} bytes, not {size}")));
    }
    if core.index.has_file(&file)? {
        // GC must not delete what the file names before its refs are
        // committed (spec §10.5).
        let _gate = core.gate.shared();
        // Stored already (a fork, a re-upload): its recipe, SHA-256 and
        // description are known; only the refs are new — unless the recipe
        // names packs that are gone (another node's GC collected the file
        // this node's index still lists, or a pack was lost): then the file
        // is registered anew from its chunks below, which replaces the
        // recipe. (Taking the old recipe was refused on every retry.)
        if core.objects.shared() {
            crate::remote::reload_file(core, &file)?;
        }
        let existing = layout(core, &file)?.recipe.clone();
        if claimed_sha256.is_some_and(|c| c != existing.sha256) {
            return Err(reject(format!(
                "its content hashes to sha256 {}, not the one claimed",
                existing.sha256
            )));
        }
        let filter = DedupFilter::new(core)?;
        let mut usable = true;
        let mut asked = HashSet::new();
        for t in &existing.terms {
            if asked.insert(t.pack) && !filter.usable(core, &t.pack)? {
                usable = false;
            }
        }
        // New names for it pass the store's policy as its upload would
        // have (it may have been stored under another). Without a stored
        // description that checks, it is registered anew below, which
        // computes one.
        let model = crate::models::stored(core, &file);
        if let Some(m) = &model {
            crate::models::check_policy(core, &format!("file {file}"), m)?;
        }
        if usable && model.is_some() {
            return publish_one(core, existing, ref_names, None);
        }
    }
    let locs = chunk_locations(core, &file, chunks, &reject)?;
    // The content's SHA-256 (what git-lfs pointers name files by) is
    // computed here, from verified chunks: a client cannot alias a file to
    // another's hash.
    // Its model description and pickle verdict are computed here too, and
    // the store's policy applies to uploads as to local puts.
    // This reads the whole file, which a short list of one repeated chunk
    // makes long: it runs outside the GC gate, so a GC does not wait for
    // it. A GC or repack that deletes a pack meanwhile fails the read or is
    // found below, under the gate, before anything is committed.
    let mut sha = sha2::Sha256::new();
    let mut sniffer = Sniffer::new(Limits::default());
    let read = stream_chunks(core, chunks, &locs, |raw| {
        sha.update(raw);
        sniffer.feed(raw);
        Ok(())
    });
    // GC must not delete a chunk this registration names before it is
    // committed (spec §10.5): where the chunks are now, all still stored.
    let _gate = core.gate.shared();
    let locs = chunk_locations(core, &file, chunks, &reject)?;
    read?;
    let hashed = Hashed {
        sha256: Sha256(sha.finalize().into()),
        model: sniffer.finish(size),
    };
    register_hashed(
        core,
        file,
        size,
        chunks,
        &locs,
        hashed,
        claimed_sha256,
        ref_names,
    )
}

/// What was learnt from a file's verified bytes read in order.
pub(super) struct Hashed {
    /// Its SHA-256.
    pub(super) sha256: Sha256,
    /// Its model description.
    pub(super) model: ModelInfo,
}

/// The end of registering a file new to the store whose bytes were read
/// (verified, in order) into `hashed`, its chunks stored at `locs`: the
/// store's pickle policy, the claimed SHA-256, then the recipe and refs.
/// The caller holds the GC gate and checked the chunk list against `file`.
#[allow(clippy::too_many_arguments)]
pub(super) fn register_hashed(
    core: &Core,
    file: FileId,
    size: u64,
    chunks: &[(ChunkId, u32)],
    locs: &[(PackId, u32)],
    hashed: Hashed,
    claimed_sha256: Option<Sha256>,
    ref_names: &[&str],
) -> Result<PutReport> {
    let Hashed { sha256: sha, model } = hashed;
    crate::models::check_policy(core, &format!("file {file}"), &model)?;
    if claimed_sha256.is_some_and(|c| c != sha) {
        return Err(Error::Rejected {
            what: format!("file {file}"),
            reason: format!("its content hashes to sha256 {sha}, not the one claimed"),
        });
    }
    let recipe = Recipe {
        file,
        sha256: sha,
        size,
        terms: terms_for(chunks, locs),
        chunks: chunks.to_vec(),
    };
    publish_one(core, recipe, ref_names, Some(model))
}

/// Publishes one file's recipe and refs.
pub(super) fn publish_one(
    core: &Core,
    recipe: Recipe,
    ref_names: &[&str],
    model: Option<ModelInfo>,
) -> Result<PutReport> {
    let mut reports = publish_files(
        core,
        vec![NewRecipe {
            recipe,
            refs: ref_names.iter().map(|s| s.to_string()).collect(),
            new_chunks: 0,
            new_bytes: 0,
            model,
        }],
    )?;
    reports
        .pop()
        .ok_or_else(|| Error::Bug("publishing one file reported none".into()))
}

/// Where each of `chunks` (of `file`) is stored; a chunk of another length
/// refuses the registration, missing ones are [`Error::ChunksMissing`].
pub(super) fn chunk_locations(
    core: &Core,
    file: &FileId,
    chunks: &[(ChunkId, u32)],
    reject: &dyn Fn(String) -> Error,
) -> Result<Vec<(PackId, u32)>> {
    let mut locs = Vec::with_capacity(chunks.len());
    let mut missing = 0usize;
    for (id, len) in chunks {
        if *len == 0 {
            return Err(reject(format!(
                "chunk {id} is listed with 0 bytes (no chunk is empty)"
            )));
        }
        match core.index.chunk(id)? {
            Some(l) if l.entry.raw_len == *len => locs.push((l.pack, l.index)),
            Some(l) => {
                return Err(reject(format!(
                    "chunk {id} is {} bytes, not {len}",
                    l.entry.raw_len
                )))
            }
            None => missing += 1,
        }
    }
    if missing > 0 {
        return Err(Error::ChunksMissing {
            file: *file,
            missing,
            total: chunks.len(),
        });
    }
    Ok(locs)
}

/// Chunks decoded (and verified) per step of [`stream_chunks`].
const STREAM_WINDOW: usize = 16;

/// Hands the chunks' verified bytes to `consume` in file order. A window
/// of chunks is decoded in parallel while `consume` works through the one
/// before it, so at most two windows are held at once.
fn stream_chunks(
    core: &Core,
    chunks: &[(ChunkId, u32)],
    locs: &[(PackId, u32)],
    mut consume: impl FnMut(&[u8]) -> Result<()> + Send,
) -> Result<()> {
    let decode = |i: usize| -> Result<Vec<Bytes>> {
        let end = (i + STREAM_WINDOW).min(chunks.len());
        (i..end)
            .into_par_iter()
            .map(|k| core.packs.read_chunk(&locs[k].0, locs[k].1, &chunks[k].0))
            .collect()
    };
    let mut current = decode(0)?;
    let mut next_at = STREAM_WINDOW;
    while !current.is_empty() {
        let (next, done) = rayon::join(
            || {
                if next_at < chunks.len() {
                    decode(next_at)
                } else {
                    Ok(Vec::new())
                }
            },
            || current.iter().try_for_each(|raw| consume(raw)),
        );
        done?;
        current = next?;
        next_at += STREAM_WINDOW;
    }
    Ok(())
}
