//! `verify`: is the store intact? (`repair index` is in `recover`.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::error::clip;
use crate::error::{Error, Result};
use crate::format::{decode_ref, Recipe};
use crate::hash::{FileId, PackId, PackIdHasher};
use crate::pack::{pack_path, PackReader};
use crate::storage::Storage;
use crate::store::{recipe_error, recipe_path, ref_path, Store};

/// What `verify` checks.
#[derive(Clone, Copy, Debug)]
pub struct VerifyOptions {
    /// Share of packs (0–100) whose data is read: the whole pack is hashed
    /// and compared to its name, and every chunk in it is decompressed and
    /// re-hashed. Packs are sampled deterministically by id.
    pub sample_percent: f64,
    /// Read data at all (false: structure only).
    pub read_data: bool,
}

impl Default for VerifyOptions {
    /// Everything: structure plus every byte of every pack.
    fn default() -> Self {
        VerifyOptions {
            sample_percent: 100.0,
            read_data: true,
        }
    }
}

/// One damaged or inconsistent object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// The object: `pack <id>`, `chunk <id>`, `file <id>`, `ref <name>`, `index`, a path.
    pub object: String,
    /// What is wrong.
    pub detail: String,
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
    /// Refs checked.
    pub refs: u64,
    /// Damage and inconsistencies; the store is clean when this is empty.
    pub problems: Vec<Problem>,
    /// Reads that failed once and succeeded on retry (not damage, but worth a look).
    pub transient: Vec<Problem>,
    /// Sealed packs no index entry names: reclaimable. (The open after a
    /// crash indexes every readable pack; one listed here could not be read
    /// then, or was placed in `packs/` while the store was closed.)
    pub orphan_packs: Vec<PackId>,
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

/// The outcome of `repair index`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct RepairReport {
    /// Packs whose chunks were indexed.
    pub packs: u64,
    /// Chunks indexed.
    pub chunks: u64,
    /// Files restored from recipe files.
    pub files: u64,
    /// Refs restored from ref files.
    pub refs: u64,
    /// Recipe and ref files that were missing or damaged and were rewritten
    /// from the index's verified copies.
    pub healed: Vec<Problem>,
    /// What could not be recovered, by name.
    pub problems: Vec<Problem>,
}

/// Pack files found on disk: (pack id, relative path).
type PackFiles = Vec<(PackId, String)>;

/// All sealed pack files on disk: (pack id, relative path), plus problems
/// for files in `packs/` that are not named like packs.
pub(crate) fn list_packs(storage: &dyn Storage) -> Result<(PackFiles, Vec<Problem>)> {
    let mut out = Vec::new();
    let mut odd = Vec::new();
    for (rel, name) in fanout_files(storage, "packs", &mut odd)? {
        let id = name
            .strip_suffix(".pack")
            .and_then(PackId::from_hex)
            .filter(|id| pack_path(id) == rel);
        match id {
            Some(id) => out.push((id, rel)),
            None => odd.push(Problem {
                object: rel,
                detail: "unexpected file in packs/ (not named <pack id>.pack)".into(),
            }),
        }
    }
    Ok((out, odd))
}

/// The files of a fan-out directory (`packs`, `recipes`, `refs`): (relative
/// path, file name) for every `top/xx/name`. A file where a fan-out
/// directory should be is reported, not an error.
pub(crate) fn fanout_files(
    storage: &dyn Storage,
    top: &str,
    problems: &mut Vec<Problem>,
) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let dirs = storage
        .list_dir(top)
        .map_err(|e| Error::io("list directory", storage.root().join(top), e))?;
    for dir in dirs {
        let d = format!("{top}/{dir}");
        let names = match storage.list_dir(&d) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
                problems.push(Problem {
                    object: d,
                    detail: format!("unexpected file in {top}/ (a directory was expected)"),
                });
                continue;
            }
            Err(e) => return Err(Error::io("list directory", storage.root().join(&d), e)),
        };
        out.extend(names.into_iter().map(|name| (format!("{d}/{name}"), name)));
    }
    Ok(out)
}

/// Hashes a whole pack file in 1 MiB pieces and compares it with its name.
pub(crate) fn check_pack_name(
    storage: &dyn Storage,
    id: &PackId,
    rel: &str,
) -> std::result::Result<u64, String> {
    let h = storage.open_read(rel).map_err(|e| format!("open: {e}"))?;
    let len = h.len();
    let mut hasher = PackIdHasher::new();
    let mut off = 0u64;
    while off < len {
        let n = (len - off).min(1 << 20) as usize;
        let b = h
            .read_at(off, n)
            .map_err(|e| format!("read at {off}: {e}"))?;
        hasher.update(&b);
        off += n as u64;
    }
    if hasher.finish() != *id {
        return Err(format!(
            "content hashes to {}, not to its name (the pack was modified)",
            hasher.finish()
        ));
    }
    Ok(len)
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

impl Store {
    /// Checks the store: every index entry points into an existing, intact
    /// sealed pack at a valid position; every recipe decodes, matches its
    /// file id and its recipe file, and names chunks that exist; every ref
    /// names a stored file and matches its ref file. With `read_data`, the
    /// sampled packs are hashed against their names and every chunk in them
    /// is decompressed and re-hashed; a failing read is retried once to tell
    /// a transient error from damage. `progress` gets (packs done, packs total).
    pub fn verify(&self, opts: VerifyOptions) -> Result<VerifyReport> {
        self.verify_with_progress(opts, &mut |_, _| {})
    }

    /// [`Store::verify`] with a progress callback.
    pub fn verify_with_progress(
        &self,
        opts: VerifyOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<VerifyReport> {
        let storage = self.inner.storage.as_ref();
        let index = &self.inner.index;
        let mut rep = VerifyReport::default();
        let (on_disk, odd) = list_packs(storage)?;
        rep.problems.extend(odd);
        rep.packs = on_disk.len() as u64;

        // Packs: open (header, trailer, table checksum) and, if sampled,
        // hash the file and re-hash every chunk.
        let mut readers: BTreeMap<PackId, Arc<PackReader>> = BTreeMap::new();
        let total = on_disk.len() as u64;
        for (n, (id, rel)) in on_disk.iter().enumerate() {
            progress(n as u64, total);
            let reader = match PackReader::open(storage, *id) {
                Ok(r) => Arc::new(r),
                Err(e) => {
                    rep.problem(format!("pack {id}"), e.to_string());
                    continue;
                }
            };
            if opts.read_data && sampled(id, opts.sample_percent) {
                rep.packs_read += 1;
                match check_pack_name(storage, id, rel)
                    .or_else(|_| check_pack_name(storage, id, rel))
                {
                    Ok(len) => rep.bytes_read += len,
                    Err(detail) => rep.problem(format!("pack {id}"), detail),
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
                            PackReader::open(storage, *id).and_then(|r| r.read_chunk(i, &entry.id));
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
            }
            readers.insert(*id, reader);
        }
        progress(total, total);

        // Index → packs.
        let mut indexed_packs = HashSet::new();
        for item in index.packs() {
            let (id, info) = item?;
            indexed_packs.insert(id);
            if !on_disk.iter().any(|(p, _)| *p == id) {
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
        for (id, _) in &on_disk {
            if !indexed_packs.contains(id) {
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
        let mut recipe_files: HashMap<FileId, String> = HashMap::new();
        for (rel, name) in fanout_files(storage, "recipes", &mut rep.problems)? {
            match name
                .strip_suffix(".recipe")
                .and_then(FileId::from_hex)
                .filter(|id| recipe_path(id) == rel)
            {
                Some(file) => {
                    recipe_files.insert(file, rel);
                }
                None => rep.problem(rel, "unexpected file in recipes/"),
            }
        }
        for item in index.files() {
            let (file, bytes) = item?;
            rep.files += 1;
            let obj = format!("file {file}");
            let recipe = match Recipe::decode(file, &bytes) {
                Ok(r) => r,
                Err(e) => {
                    rep.problem(
                        obj,
                        format!("index copy of recipe: {}", recipe_error(file, e)),
                    );
                    continue;
                }
            };
            let rel = recipe_files
                .remove(&file)
                .unwrap_or_else(|| recipe_path(&file));
            match storage.read(&rel) {
                Ok(b) if b[..] == bytes[..] => {}
                Ok(b) => match Recipe::decode(file, &b) {
                    Ok(_) => rep.problem(obj.clone(), "recipe file differs from the index copy"),
                    Err(e) => rep.problem(
                        obj.clone(),
                        format!(
                            "recipe file {rel} is damaged ({}); `tessera repair index` rewrites it from the index's verified copy",
                            recipe_error(file, e)
                        ),
                    ),
                },
                Err(e) => rep.problem(
                    obj.clone(),
                    format!("recipe file {rel} unreadable ({e}); `tessera repair index` rewrites it from the index's verified copy"),
                ),
            }
            // One problem per file and missing pack, however many terms name it.
            let mut bad_packs: BTreeMap<PackId, u64> = BTreeMap::new();
            let mut next = 0usize;
            for t in &recipe.terms {
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
            let detail = match storage.read(&rel) {
                Ok(b) => match Recipe::decode(file, &b) {
                    Ok(_) => format!(
                        "recipe file {rel} is not in the index (`tessera repair index` indexes it)"
                    ),
                    Err(e) => format!(
                        "recipe file {rel} is damaged ({}) and the index has no copy: the file is lost",
                        recipe_error(file, e)
                    ),
                },
                Err(e) => format!("recipe file {rel} unreadable: {e}"),
            };
            rep.problem(format!("file {file}"), detail);
        }

        // Refs: the index's, then every ref file on disk.
        let mut ref_files: HashSet<String> = fanout_files(storage, "refs", &mut rep.problems)?
            .into_iter()
            .map(|(rel, _)| rel)
            .collect();
        for (name, file) in self.list_refs("")? {
            rep.refs += 1;
            let obj = format!("ref {}", clip(&name));
            ref_files.remove(&ref_path(&name));
            if !index.has_file(&file)? {
                rep.problem(
                    obj.clone(),
                    format!("names file {file}, which is not stored"),
                );
            }
            match self.read_ref_file(&name) {
                Ok(Some(f)) if f == file => {}
                Ok(_) => rep.problem(obj, "ref file missing or names another file"),
                Err(e) => rep.problem(obj, e.to_string()),
            }
        }
        for rel in ref_files {
            let detail = match storage.read(&rel).map(|b| decode_ref(&b)) {
                Ok(Ok((name, file))) if ref_path(&name) == rel => {
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
        rep.group_problems();
        Ok(rep)
    }
}
