//! `verify`: is every object on storage intact and indexed (spec §10.4)?

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::core::Core;
use crate::error::{clip, Result};
use crate::format::{decode_ref, Recipe, DELETED_REF};
use crate::ids::{FileId, PackId, Sha256};
use crate::inventory;
use crate::pack::{check_pack_name, PackReader};
use crate::paths::{file_of_model_key, recipe_key, ref_key, DAMAGED, MODELS};
use crate::read::{unwrap_io, FileReader};
use crate::report::Problem;
use crate::{refresh, refs, remote, shared_refs};

/// What `verify` checks.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions {
    /// Share of packs (0–100) whose data is read: the whole pack is hashed
    /// and compared to its name, and every chunk in it is decompressed and
    /// re-hashed. Packs are sampled deterministically by id.
    pub sample_percent: f64,
    /// Read data at all (false: structure only).
    pub read_data: bool,
    /// Also read every stored file back through the read path and check
    /// that its bytes hash to the SHA-256 its recipe records (what
    /// `sha256:` names resolve by). Reads every file's logical bytes, so
    /// it takes as long as restoring them all.
    pub read_files: bool,
}

impl Default for VerifyOptions {
    /// Everything: structure plus every byte of every pack.
    fn default() -> Self {
        VerifyOptions {
            sample_percent: 100.0,
            read_data: true,
            read_files: false,
        }
    }
}

/// The outcome of `verify`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct VerifyReport {
    /// Pack files found.
    pub packs: u64,
    /// Packs whose data was read and hashed.
    pub packs_read: u64,
    /// Chunk index entries checked.
    pub chunks: u64,
    /// Chunks decompressed and re-hashed.
    pub chunks_read: u64,
    /// Bytes of pack data read.
    pub bytes_read: u64,
    /// Files (recipes) checked.
    pub files: u64,
    /// Files read back whole and SHA-256-checked (`read_files`).
    pub files_read: u64,
    /// Their bytes.
    pub file_bytes_read: u64,
    /// Refs checked.
    pub refs: u64,
    /// Damage and inconsistencies; the store is clean when this is empty.
    pub problems: Vec<Problem>,
    /// Reads that failed once and succeeded on retry (not damage, but worth a look).
    pub transient: Vec<Problem>,
    /// Packs on storage the index does not hold and no recipe names (each
    /// is also a problem: the open after a crash indexes every readable
    /// pack, so one listed here could not be read then, or was placed in
    /// `packs/` while the store was closed; `repair index` indexes or
    /// salvages it). A pack a recipe names is never listed here, however
    /// damaged: a file needs it.
    pub orphan_packs: Vec<PackId>,
    /// Damaged objects `repair` took out of service and kept under
    /// `damaged/` (not problems: what they held was salvaged or reported).
    pub damaged_kept: u64,
}

impl VerifyReport {
    /// True when no problem was found.
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }

    fn problem(&mut self, object: impl Into<String>, detail: impl Into<String>) {
        self.problems.push(Problem {
            object: object.into(),
            detail: detail.into(),
        });
    }

    /// One problem per damaged object: details about the same object are
    /// joined (the first three in full, then a count), in first-seen order.
    fn group_problems(&mut self) {
        let mut order: Vec<String> = Vec::new();
        let mut details: HashMap<String, Vec<String>> = HashMap::new();
        for p in self.problems.drain(..) {
            let d = details.entry(p.object.clone()).or_default();
            if d.is_empty() {
                order.push(p.object);
            }
            if !d.contains(&p.detail) {
                d.push(p.detail);
            }
        }
        for object in order {
            let mut d = details.remove(&object).unwrap_or_default();
            let more = d.len().saturating_sub(3);
            d.truncate(3);
            let mut detail = d.join("; ");
            if more > 0 {
                detail.push_str(&format!("; and {more} more"));
            }
            self.problems.push(Problem { object, detail });
        }
    }
}

/// Deterministic sampling: a pack is read when the first 8 bytes of its id,
/// as a fraction of 2^64, fall below the sample share.
fn sampled(id: &PackId, percent: f64) -> bool {
    if percent >= 100.0 {
        return true;
    }
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    (u64::from_le_bytes(b) as f64 / u64::MAX as f64) * 100.0 < percent
}

/// Checks the store (spec §10.4): every pack on storage opens, is indexed
/// and, when its data is sampled, hashes to its name with every chunk
/// re-hashing to its id; every index entry points into an intact pack at a
/// matching table entry; every recipe (index copy and object) passes its
/// checks, the two agree, and its chunks are where its terms say; every ref
/// in the index names a stored file and matches its ref file, and every ref
/// file is in the index. A failing chunk read is retried once to tell a
/// transient error from damage. `progress` gets (packs done, packs total).
pub(crate) fn verify(
    core: &Arc<Core>,
    opts: VerifyOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<VerifyReport> {
    let objects = core.objects.as_ref();
    let index = &core.index;
    let mut rep = VerifyReport::default();
    // A shared store's index is this node's cache: bring it up to date
    // first, and index (rather than report) what other nodes write while
    // this runs (spec §4.3, §10.4).
    let shared = objects.shared();
    if shared {
        refresh::refresh(core)?;
    }
    let on_disk = inventory::packs(objects, &mut rep.problems)?;
    rep.packs = on_disk.len() as u64;

    // Packs: open (header, trailer, table checksum) and, if sampled,
    // hash the file and re-hash every chunk.
    let mut readers: BTreeMap<PackId, Arc<PackReader>> = BTreeMap::new();
    let total = on_disk.len() as u64;
    for (n, id) in on_disk.iter().enumerate() {
        progress(n as u64, total);
        let reader = match PackReader::open(objects, *id) {
            Ok(r) => Arc::new(r),
            Err(e) => {
                rep.problem(format!("pack {id}"), e.to_string());
                continue;
            }
        };
        if opts.read_data && sampled(id, opts.sample_percent) {
            rep.packs_read += 1;
            match check_pack_name(objects, id).or_else(|_| check_pack_name(objects, id)) {
                Ok(len) => rep.bytes_read += len,
                Err(detail) => {
                    // Read (and hashed) all the same: the figure says what
                    // was read, not what was found clean.
                    rep.bytes_read += reader.file_len();
                    rep.problem(format!("pack {id}"), detail)
                }
            }
            for i in 0..reader.chunk_count() {
                let entry = match reader.entry(i) {
                    Ok(e) => e,
                    Err(e) => {
                        rep.problem(format!("pack {id}"), e.to_string());
                        continue;
                    }
                };
                rep.chunks_read += 1;
                if let Err(first) = reader.read_chunk(i, &entry.id) {
                    // Retry through a fresh open to rule out a transient read error.
                    let again =
                        PackReader::open(objects, *id).and_then(|r| r.read_chunk(i, &entry.id));
                    let p = Problem {
                        object: format!("chunk {}", entry.id),
                        detail: first.to_string(),
                    };
                    match again {
                        Ok(_) => rep.transient.push(p),
                        Err(_) => rep.problems.push(p),
                    }
                }
            }
            // Kept for the index and recipe checks below, which read its
            // table only: the data pages go, or a store's every byte
            // would stay resident.
            reader.release_pages();
        }
        readers.insert(*id, reader);
    }
    progress(total, total);

    // Index → packs.
    let mut indexed_packs = HashSet::new();
    for item in index.packs() {
        let (id, info) = item?;
        indexed_packs.insert(id);
        if !on_disk.contains(&id) {
            rep.problem(
                format!("pack {id}"),
                "named by the index but missing on disk",
            );
        } else if let Some(r) = readers.get(&id) {
            if r.chunk_count() != info.chunk_count {
                rep.problem(
                    format!("pack {id}"),
                    format!(
                        "index says {} chunks, pack has {}",
                        info.chunk_count,
                        r.chunk_count()
                    ),
                );
            }
        }
    }
    for id in &on_disk {
        let indexed =
            indexed_packs.contains(id) || (shared && remote::discover_pack(core, id).is_ok());
        if !indexed {
            rep.orphan_packs.push(*id);
            rep.problem(
                format!("pack {id}"),
                "on disk but not in the index (`tessera repair index` indexes its intact chunks)",
            );
        }
    }

    // Chunk entries → positions in sealed packs.
    for item in index.chunks() {
        let loc = item?;
        rep.chunks += 1;
        let obj = || format!("chunk {}", loc.entry.id);
        match readers.get(&loc.pack) {
            None if indexed_packs.contains(&loc.pack) => {} // reported with its pack
            None => rep.problem(
                obj(),
                format!("index names pack {} which is not in the index", loc.pack),
            ),
            Some(r) => match r.entry(loc.index) {
                Ok(e) if e == loc.entry => {}
                Ok(_) => rep.problem(
                    obj(),
                    format!(
                        "index entry disagrees with pack {} table entry {}",
                        loc.pack, loc.index
                    ),
                ),
                Err(e) => rep.problem(obj(), e.to_string()),
            },
        }
    }

    // Recipes: the index's copies, then every recipe file on disk.
    let mut recipe_files: HashMap<FileId, String> = inventory::recipes(objects, &mut rep.problems)?
        .into_iter()
        .collect();
    // Files to read back whole (`read_files`): id, recorded SHA-256, size.
    let mut to_read: Vec<(FileId, Sha256, u64)> = Vec::new();
    // Packs some recipe names: not orphans, whatever state they are in.
    let mut named_packs: HashSet<PackId> = HashSet::new();
    for item in index.files() {
        let (file, bytes) = item?;
        rep.files += 1;
        let obj = format!("file {file}");
        let recipe = match Recipe::decode(file, &bytes) {
            Ok(r) => r,
            Err(e) => {
                rep.problem(obj, format!("index copy of recipe: {}", e.into_error(file)));
                continue;
            }
        };
        named_packs.extend(recipe.terms.iter().map(|t| t.pack));
        if opts.read_files {
            to_read.push((file, recipe.sha256, recipe.size));
        }
        let rel = recipe_files
            .remove(&file)
            .unwrap_or_else(|| recipe_key(&file));
        match objects.get(&rel) {
                Ok(b) if b[..] == bytes[..] => {}
                Ok(b) => match Recipe::decode(file, &b) {
                    Ok(_) => rep.problem(obj.clone(), "recipe file differs from the index copy"),
                    // On either kind of store `repair index` rewrites a
                    // damaged object from the index's verified copy (on a
                    // shared store only if it is still the damaged version).
                    Err(e) => rep.problem(
                        obj.clone(),
                        format!(
                            "recipe file {rel} is damaged ({}); `tessera repair index` rewrites it from the index's verified copy",
                            e.into_error(file)
                        ),
                    ),
                },
                // A shared store's refresh above dropped the files other
                // nodes collected: one still here is named by a ref. Its
                // missing recipe is not rewritten from this node's cache
                // (another node may have deleted it on purpose).
                Err(e) if shared && e.kind() == std::io::ErrorKind::NotFound => rep.problem(
                    obj.clone(),
                    format!(
                        "recipe file {rel} is missing from the store, and a ref names this file; on a shared store `tessera repair index` does not re-create missing objects (another node may have deleted it): `tessera put` of the original file stores it again, or `tessera ref rm` the refs naming it"
                    ),
                ),
                Err(e) if shared => rep.problem(
                    obj.clone(),
                    format!("recipe file {rel} unreadable ({e})"),
                ),
                Err(e) => rep.problem(
                    obj.clone(),
                    format!("recipe file {rel} unreadable ({e}); `tessera repair index` rewrites it from the index's verified copy"),
                ),
            }
        // One problem per file and missing pack, however many terms name it.
        let mut bad_packs: BTreeMap<PackId, u64> = BTreeMap::new();
        let mut next = 0usize;
        for t in &recipe.terms {
            if shared && !readers.contains_key(&t.pack) {
                // Uploaded since the listing above.
                if let Ok(r) = PackReader::open(objects, t.pack) {
                    readers.insert(t.pack, Arc::new(r));
                }
            }
            let Some(r) = readers.get(&t.pack) else {
                *bad_packs.entry(t.pack).or_default() += 1;
                next += t.chunk_count as usize;
                continue;
            };
            for k in 0..t.chunk_count {
                let expect = recipe.chunks.get(next).map(|c| c.0);
                next += 1;
                match (r.entry(t.first_chunk.saturating_add(k)), expect) {
                    (Ok(e), Some(id)) if e.id == id => {}
                    (Ok(e), Some(id)) => rep.problem(
                        obj.clone(),
                        format!(
                            "expects chunk {id} at pack {} index {}, pack holds {}",
                            t.pack,
                            t.first_chunk + k,
                            e.id
                        ),
                    ),
                    (Err(e), _) => rep.problem(obj.clone(), e.to_string()),
                    (Ok(_), None) => rep.problem(obj.clone(), "terms run past the chunk list"),
                }
            }
        }
        for (pack, terms) in bad_packs {
            rep.problem(
                obj.clone(),
                format!("{terms} of its terms name pack {pack}, which is missing or damaged"),
            );
        }
    }
    for (file, rel) in recipe_files {
        if shared && remote::discover_file(core, &file).is_ok_and(|found| found) {
            rep.files += 1;
            if let Some(r) = index
                .recipe_bytes(&file)?
                .and_then(|b| Recipe::decode(file, &b).ok())
            {
                named_packs.extend(r.terms.iter().map(|t| t.pack));
            }
            continue;
        }
        let detail = match objects.get(&rel) {
            Ok(b) => match Recipe::decode(file, &b) {
                Ok(r) => {
                    named_packs.extend(r.terms.iter().map(|t| t.pack));
                    format!(
                        "recipe file {rel} is not in the index (`tessera repair index` indexes it)"
                    )
                }
                Err(e) => format!(
                    "recipe file {rel} is damaged ({}) and the index has no copy: the file is lost",
                    e.into_error(file)
                ),
            },
            Err(e) => format!("recipe file {rel} unreadable: {e}"),
        };
        rep.problem(format!("file {file}"), detail);
    }

    // A pack a file needs is not reclaimable, however damaged.
    rep.orphan_packs.retain(|p| !named_packs.contains(p));

    // Refs: the index's, then every ref file on disk.
    let mut ref_files: HashSet<String> = inventory::refs(objects, &mut rep.problems)?
        .into_iter()
        .collect();
    for (name, file) in index.refs_with_prefix("")? {
        rep.refs += 1;
        let obj = format!("ref {}", clip(&name));
        ref_files.remove(&ref_key(&name));
        if !index.has_file(&file)? {
            rep.problem(
                obj.clone(),
                format!("names file {file}, which is not stored"),
            );
        }
        match shared_refs::read_ref(core, &name) {
            Ok(Some(f)) if f == file => {}
            // Changed or deleted by another node since the refresh: the
            // index follows the bucket.
            Ok(_) if shared => match shared_refs::resolve_ref(core, &name) {
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => rep.problem(obj, e.to_string()),
            },
            Ok(_) => rep.problem(obj, "ref file missing, a tombstone, or names another file"),
            Err(crate::Error::RefCorrupt { object, detail, .. }) => {
                let detail = format!("ref file {object}: {detail}");
                rep.problem(obj, damaged_ref_advice(core, &name, &file, &detail))
            }
            Err(e) => rep.problem(obj, e.to_string()),
        }
    }
    for rel in ref_files {
        let detail = match objects.get(&rel).map(|b| decode_ref(&b)) {
            Ok(Ok((name, _))) if shared && shared_refs::resolve_ref(core, &name).is_ok() => {
                rep.refs += 1;
                continue;
            }
            // A tombstone: the ref was deleted.
            Ok(Ok((name, file))) if ref_key(&name) == rel && file == DELETED_REF => continue,
            Ok(Ok((name, file))) if ref_key(&name) == rel => {
                let target = if index.has_file(&file)? {
                    "a stored file".to_string()
                } else {
                    format!("file {file}, which is not stored")
                };
                rep.problem(
                    format!("ref {}", clip(&name)),
                    format!("ref file {rel} names {target}, but the index has no such ref"),
                );
                continue;
            }
            Ok(Ok(_)) => "ref file stored under the wrong name".to_string(),
            Ok(Err(detail)) => format!("damaged ref file: {detail}"),
            Err(e) => format!("unreadable ref file: {e}"),
        };
        rep.problem(rel, detail);
    }
    // Model descriptions: derived from the content, recomputed when
    // missing; one that does not check (§7.2), or describes no stored file,
    // is reported.
    for key in objects
        .list(MODELS)
        .map_err(|e| crate::Error::io("list", objects.describe(MODELS), e))?
    {
        let Some(file) = file_of_model_key(&key) else {
            rep.problem(
                key,
                "unexpected object (not named like models/xx/<file id>.json)",
            );
            continue;
        };
        if !refs::has_file(core, &file).unwrap_or(false) {
            rep.problem(
                format!("file {file}"),
                format!("model description {key} of a file that is not stored"),
            );
        } else {
            let checked = match objects.get(&key) {
                Ok(bytes) => crate::models::parse(&file, &bytes).map(|_| ()),
                Err(e) => Err(format!("cannot be read: {e}")),
            };
            if let Err(why) = checked {
                rep.problem(
                    format!("file {file}"),
                    format!("model description {key} {why} (`tessera info` or `repair index` recomputes it)"),
                );
            }
        }
    }
    if opts.read_files {
        read_files_back(core, &to_read, &mut rep, progress);
    }
    rep.damaged_kept = objects
        .list(DAMAGED)
        .map_err(|e| crate::Error::io("list", objects.describe(DAMAGED), e))?
        .len() as u64;
    rep.group_problems();
    Ok(rep)
}

/// What verify says of a damaged ref object whose ref this node's index
/// holds (naming `file`): what `repair index` does with it on this kind of
/// store (spec §10.3).
fn damaged_ref_advice(core: &Core, name: &str, file: &FileId, detail: &str) -> String {
    let objects = core.objects.as_ref();
    if !objects.shared() {
        return format!(
            "{detail}; `tessera repair index` rewrites it from the index's copy (file {file})"
        );
    }
    let field = objects
        .get(&ref_key(name))
        .ok()
        .and_then(|b| crate::format::ref_file_field(&b));
    if field == Some(*file) {
        format!("{detail}; its file-id field still names file {file}, as this node's copy does: `tessera repair index` rewrites it")
    } else {
        format!(
            "{detail}; this node last saw the ref name file {file}, but another node may have moved it since, so `tessera repair index` does not rewrite it: if that is still right, `tessera ref set {} {file}` does",
            clip(name)
        )
    }
}

/// Reads each file back through the read path (every chunk decoded and
/// verified against its id) and checks its bytes hash to the SHA-256 its
/// recipe records; progress in bytes.
fn read_files_back(
    core: &Arc<Core>,
    files: &[(FileId, Sha256, u64)],
    rep: &mut VerifyReport,
    progress: &mut dyn FnMut(u64, u64),
) {
    use sha2::Digest;
    use std::io::BufRead;
    let total: u64 = files.iter().map(|f| f.2).sum();
    let mut done = 0u64;
    progress(0, total);
    for (file, recorded, size) in files {
        let read = (|| -> Result<(Sha256, u64)> {
            let mut r = FileReader::new(core, file)?;
            let mut sha = sha2::Sha256::new();
            let mut n = 0u64;
            loop {
                let buf = r.fill_buf().map_err(unwrap_io)?;
                if buf.is_empty() {
                    break;
                }
                let k = buf.len();
                sha.update(buf);
                r.consume(k);
                n += k as u64;
                progress(done + n, total);
            }
            Ok((Sha256(sha.finalize().into()), n))
        })();
        done += size;
        progress(done, total);
        let obj = format!("file {file}");
        match read {
            Ok((sha, n)) if sha == *recorded && n == *size => {
                rep.files_read += 1;
                rep.file_bytes_read += n;
            }
            Ok((sha, n)) => rep.problem(
                obj,
                format!(
                    "reads back as {n} bytes hashing to sha256 {sha}; its recipe records {size} bytes and sha256 {recorded}"
                ),
            ),
            Err(e) => rep.problem(obj, format!("cannot be read back: {e}")),
        }
    }
}
