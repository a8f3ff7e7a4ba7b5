//! Ingest: chunk, hash, dedup, encode and store files, then commit them
//! durably and acknowledge them (spec §10.1).

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use rayon::prelude::*;
use sha2::Digest;

use crate::cache::lock;
use crate::chunking::{Batch, Chunker};
use crate::codec::encode_chunk;
use crate::core::{Core, Shared};
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Compression, Recipe, Term, CHUNK_HEADER_LEN, TABLE_ENTRY_LEN};
use crate::ids::{ChunkId, FileId, FileIdHasher, PackId, Sha256};
use crate::index::{NewFile, PackInfo};
use crate::models;
use crate::pack::{OpenPackSlot, PackBuilder};
use crate::paths::recipe_key;
use crate::refs;
use crate::storage::PutMode;
use tessera_model::{Limits, ModelInfo, Sniffer};

/// What one ingest added.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PutReport {
    /// The file id.
    pub file_id: FileId,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Chunks this ingest stored (not already in the store).
    pub new_chunks: u64,
    /// Bytes this ingest added on disk: chunk records and table entries of
    /// its new chunks, plus its recipe file if it was new.
    pub new_bytes: u64,
    /// Whether the file was not in the store before.
    pub new_file: bool,
}

/// Where a chunk of a staged file lives.
#[derive(Clone, Copy, Debug)]
enum Loc {
    Sealed { pack: PackId, index: u32 },
    Open { seq: u64 },
}

/// How a regular file changed between two `stat`s around reading `read`
/// bytes of it, if it did.
fn source_change(
    before: &std::fs::Metadata,
    after: &std::fs::Metadata,
    read: u64,
) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if before.len() != after.len() {
        return Some(format!(
            "its size went from {} to {} bytes",
            before.len(),
            after.len()
        ));
    }
    if read != before.len() {
        return Some(format!("{read} bytes read of {}", before.len()));
    }
    if (before.mtime(), before.mtime_nsec()) != (after.mtime(), after.mtime_nsec()) {
        return Some("it was modified".into());
    }
    if (before.ctime(), before.ctime_nsec()) != (after.ctime(), after.ctime_nsec()) {
        return Some("its status changed".into());
    }
    None
}

/// A file ingested but not yet committed.
struct Staged {
    file: FileId,
    sha: Sha256,
    size: u64,
    chunks: Vec<(ChunkId, u32)>,
    locs: Vec<Loc>,
    refs: Vec<String>,
    new_chunks: u64,
    new_bytes: u64,
    model: ModelInfo,
}

/// A group of ingests made durable together. Nothing is acknowledged until
/// [`Ingest::commit`] returns; dropping an uncommitted ingest leaves only
/// unreferenced chunks behind.
pub struct Ingest<'s> {
    core: &'s Core,
    staged: Vec<Staged>,
    /// Held until the ingest commits or is dropped: GC must not delete a
    /// stored chunk this ingest dedups against before its recipe names it.
    _gate: Shared<'s>,
}

impl<'s> Ingest<'s> {
    pub(crate) fn new(core: &'s Core) -> Self {
        Ingest {
            core,
            staged: Vec::new(),
            _gate: core.gate.shared(),
        }
    }

    /// Chunks, hashes, dedups and stores the new chunks of one file, streaming
    /// from `reader` in bounded batches. `source` names the input in errors
    /// (a path, "stdin", an upload). `progress` is called with the bytes
    /// consumed so far. Returns the file id (not yet durable).
    pub fn add(
        &mut self,
        source: &str,
        reader: impl Read + Send,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileId> {
        let staged = self.stage(reader, source, refs, progress)?;
        let file = staged.file;
        self.staged.push(staged);
        Ok(file)
    }

    /// Like [`Ingest::add`] for a file on disk, refusing one that changes
    /// while it is read: for a regular file, its size, modification and
    /// change times must be the same before and after, and the bytes read
    /// must equal its size ([`Error::SourceChanged`], nothing staged).
    pub fn add_file(
        &mut self,
        path: &Path,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<FileId> {
        let name = path.display().to_string();
        let file =
            std::fs::File::open(path).map_err(|e| Error::io("open input", name.clone(), e))?;
        let stat = |f: &std::fs::File| {
            f.metadata()
                .map_err(|e| Error::io("stat input", name.clone(), e))
        };
        let before = stat(&file)?;
        if before.is_dir() {
            return Err(Error::io(
                "open input",
                name,
                std::io::Error::new(std::io::ErrorKind::IsADirectory, "is a directory"),
            ));
        }
        let staged = self.stage(
            std::io::BufReader::with_capacity(1 << 20, &file),
            &name,
            refs,
            progress,
        )?;
        if before.is_file() {
            let after = stat(&file)?;
            if let Some(detail) = source_change(&before, &after, staged.size) {
                return Err(Error::SourceChanged {
                    path: path.to_path_buf(),
                    detail,
                });
            }
        }
        let id = staged.file;
        self.staged.push(staged);
        Ok(id)
    }

    fn stage(
        &mut self,
        reader: impl Read + Send,
        source: &str,
        refs: &[&str],
        progress: &mut dyn FnMut(u64),
    ) -> Result<Staged> {
        let core = self.core;
        core.check_poison()?;
        for r in refs {
            refs::validate(r)?;
        }
        let opts = &core.opts;
        let chunker = Chunker::new(reader, core.config.chunking, opts.ingest_batch_bytes)?;
        let mut fid = FileIdHasher::new();
        let mut size = 0u64;
        let mut chunks = Vec::new();
        let mut locs = Vec::new();
        let (mut new_chunks, mut new_bytes) = (0u64, 0u64);
        let input_err = |e| Error::io("read input", source, e);
        // Two-stage pipeline: a producer thread reads, cuts and SHA-256s the
        // next batch while this thread hashes, dedups and stores the current
        // one. The channel holds one batch, so at most three batches are in
        // memory at once.
        let (sha, sniffer) = std::thread::scope(|scope| -> Result<(Sha256, Sniffer)> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<std::io::Result<Batch>>(1);
            let producer = scope.spawn(move || {
                let mut chunker = chunker;
                let mut sha = sha2::Sha256::new();
                // Sees every byte once, in order: the model format, its
                // tensors, and every import of every pickle (spec §7.2).
                let mut sniffer = Sniffer::new(Limits::default());
                loop {
                    match chunker.next_batch() {
                        Ok(Some(b)) => {
                            sha.update(&b.data);
                            sniffer.feed(&b.data);
                            if tx.send(Ok(b)).is_err() {
                                return None;
                            }
                        }
                        Ok(None) => return Some((Sha256(sha.finalize().into()), sniffer)),
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return None;
                        }
                    }
                }
            });
            for batch in rx {
                let batch = batch.map_err(input_err)?;
                let pieces: Vec<Bytes> = batch.chunk_bytes().collect();
                let ids: Vec<ChunkId> = pieces.par_iter().map(|c| ChunkId::of(c)).collect();
                let (l, n, b) = store_chunks(core, &ids, &pieces)?;
                for (id, p) in ids.iter().zip(&pieces) {
                    fid.push(id, p.len() as u64);
                    chunks.push((*id, p.len() as u32));
                }
                locs.extend(l);
                new_chunks += n;
                new_bytes += b;
                size += batch.data.len() as u64;
                progress(size);
            }
            producer
                .join()
                .ok()
                .flatten()
                .ok_or_else(|| input_err(std::io::Error::other("input reader thread failed")))
        })?;
        let model = sniffer.finish(size);
        let policy = core.opts.pickle_policy;
        if let Err(v) = policy.check(&model) {
            return Err(Error::Refused {
                source_name: source.to_string(),
                policy: policy.as_str().to_string(),
                reason: v.to_string(),
            });
        }
        Ok(Staged {
            file: fid.finish(),
            sha,
            size,
            chunks,
            locs,
            refs: refs.iter().map(|s| s.to_string()).collect(),
            new_chunks,
            new_bytes,
            model,
        })
    }

    /// Number of files staged.
    pub fn len(&self) -> usize {
        self.staged.len()
    }

    /// True when nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Makes every staged file durable and acknowledges it: packs sealed and
    /// fsynced → recipe and ref files written → index updated and flushed.
    pub fn commit(self) -> Result<Vec<PutReport>> {
        let core = self.core;
        let mut seqs: Vec<u64> = self
            .staged
            .iter()
            .flat_map(|s| s.locs.iter())
            .filter_map(|l| match l {
                Loc::Open { seq } => Some(*seq),
                Loc::Sealed { .. } => None,
            })
            .collect();
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            ensure_sealed(core, seq)?;
        }
        let mut files = Vec::with_capacity(self.staged.len());
        for s in self.staged {
            // Resolve chunks that were in an open pack to their sealed pack.
            let mut locs = Vec::with_capacity(s.locs.len());
            for ((id, _), loc) in s.chunks.iter().zip(&s.locs) {
                locs.push(match *loc {
                    Loc::Sealed { pack, index } => (pack, index),
                    Loc::Open { .. } => {
                        let l = core.index.chunk(id)?.ok_or_else(|| {
                            Error::Bug(format!("chunk {id} was not sealed by its pack writer"))
                        })?;
                        (l.pack, l.index)
                    }
                });
            }
            let recipe = Recipe {
                file: s.file,
                sha256: s.sha,
                size: s.size,
                terms: terms_for(&s.chunks, &locs),
                chunks: s.chunks,
            };
            files.push(NewRecipe {
                recipe,
                refs: s.refs,
                new_chunks: s.new_chunks,
                new_bytes: s.new_bytes,
                model: Some(s.model),
            });
        }
        publish_files(core, files)
    }
}

/// Terms for a chunk list whose chunks are at `locs` (pack, index in pack):
/// runs of consecutive chunks of one pack.
pub(crate) fn terms_for(chunks: &[(ChunkId, u32)], locs: &[(PackId, u32)]) -> Vec<Term> {
    let mut terms: Vec<Term> = Vec::new();
    for ((_, len), &(pack, index)) in chunks.iter().zip(locs) {
        match terms.last_mut() {
            Some(t)
                if t.pack == pack && t.first_chunk.checked_add(t.chunk_count) == Some(index) =>
            {
                t.chunk_count += 1;
                t.unpacked_len += u64::from(*len);
            }
            _ => terms.push(Term {
                pack,
                first_chunk: index,
                chunk_count: 1,
                unpacked_len: u64::from(*len),
            }),
        }
    }
    terms
}

/// A file whose chunks are all durable and indexed, ready to be published.
pub(crate) struct NewRecipe {
    pub(crate) recipe: Recipe,
    pub(crate) refs: Vec<String>,
    pub(crate) new_chunks: u64,
    pub(crate) new_bytes: u64,
    /// Its model description, when ingest saw its bytes.
    pub(crate) model: Option<ModelInfo>,
}

/// Publishes files whose packs are durable (spec §10.1): every recipe and
/// ref object first, then the whole group is indexed in one transaction
/// (readers see all of its files or none) and the index flushed.
pub(crate) fn publish_files(core: &Core, files: Vec<NewRecipe>) -> Result<Vec<PutReport>> {
    let mut done: Vec<(Vec<String>, Vec<u8>, PutReport)> = Vec::with_capacity(files.len());
    for f in files {
        let recipe = f.recipe;
        let bytes = recipe.encode();
        let key = recipe_key(&recipe.file);
        let mut new_bytes = f.new_bytes;
        let (written, bytes) = if core.objects.shared() {
            // Another node may hold the same file: see `remote`.
            let known = core.index.has_file(&recipe.file)?;
            core.poison_on(crate::remote::publish_recipe(
                core,
                &recipe.file,
                bytes,
                known,
            ))?
        } else {
            // The recipe object must say exactly what the index will say.
            // One left by an ingest that crashed before its index flush may
            // name packs the index no longer knows (their chunks were then
            // stored again elsewhere): replace it.
            let current = match core.objects.get(&key) {
                Ok(b) => Some(b),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(Error::io("read recipe", core.objects.describe(&key), e)),
            };
            let written = current.as_deref() != Some(&bytes[..]);
            if written {
                let r = core
                    .objects
                    .put(&key, &bytes, PutMode::Replace)
                    .map_err(|e| Error::io("write recipe", core.objects.describe(&key), e));
                core.poison_on(r)?;
            }
            (written, bytes)
        };
        if written {
            new_bytes += bytes.len() as u64;
        }
        // After the recipe: a description never outlives its file (one
        // missing after a crash is recomputed when asked for). A file stored
        // already has one: re-ingesting it writes nothing.
        if let (true, Some(m)) = (written, &f.model) {
            core.poison_on(models::write(core, &recipe.file, m))?;
        }
        for r in &f.refs {
            core.poison_on(refs::write_file(core, r, &recipe.file))?;
        }
        let report = PutReport {
            file_id: recipe.file,
            sha256: recipe.sha256,
            size: recipe.size,
            chunks: recipe.chunks.len() as u64,
            new_chunks: f.new_chunks,
            new_bytes,
            new_file: false,
        };
        done.push((f.refs, bytes, report));
    }
    let batch: Vec<NewFile<'_>> = done
        .iter()
        .map(|(refs, bytes, r)| NewFile {
            file: r.file_id,
            sha: r.sha256,
            size: r.size,
            recipe: bytes,
            refs,
        })
        .collect();
    let new = core.poison_on(core.index.add_files(&batch))?;
    drop(batch);
    let reports: Vec<PutReport> = done
        .into_iter()
        .zip(new)
        .map(|((_, _, r), new_file)| PutReport { new_file, ..r })
        .collect();
    core.poison_on(core.index.flush())?;
    Ok(reports)
}

/// Appends chunks that are already encoded and verified (from a pack a
/// client uploaded, or fetched by a pull) to the shared open pack, skipping
/// those already stored, then seals it and flushes the index: when this
/// returns, every chunk is durable and indexed. Returns (new chunks, bytes
/// they added on disk).
pub(crate) fn admit_encoded(core: &Core, chunks: &[(ChunkEntry, Bytes)]) -> Result<(u64, u64)> {
    let mut w = lock(&core.writer);
    core.check_poison()?;
    let (mut new, mut bytes) = (0u64, 0u64);
    for (e, stored) in chunks {
        if w.open.as_ref().is_some_and(|o| o.contains(&e.id)) || core.index.chunk(&e.id)?.is_some()
        {
            continue;
        }
        let r = append_locked(core, &mut w, e.id, e.raw_len, e.compression, stored);
        core.poison_on(r)?;
        new += 1;
        bytes += (CHUNK_HEADER_LEN + stored.len() + TABLE_ENTRY_LEN) as u64;
    }
    if w.open.is_some() {
        let r = seal_locked(core, &mut w);
        core.poison_on(r)?;
    }
    drop(w);
    core.poison_on(core.index.flush())?;
    Ok((new, bytes))
}

/// Appends new chunks of a batch to the shared open pack. Returns each
/// chunk's location and the (count, bytes) this call stored.
fn store_chunks(core: &Core, ids: &[ChunkId], chunks: &[Bytes]) -> Result<(Vec<Loc>, u64, u64)> {
    let mut locs: Vec<Option<Loc>> = Vec::with_capacity(ids.len());
    let mut candidates = Vec::new();
    let mut seen = HashSet::new();
    for (i, id) in ids.iter().enumerate() {
        match core.index.chunk(id)? {
            Some(l) => locs.push(Some(Loc::Sealed {
                pack: l.pack,
                index: l.index,
            })),
            None => {
                locs.push(None);
                if seen.insert(*id) {
                    candidates.push(i);
                }
            }
        }
    }
    // Compress outside the writer lock, in parallel.
    let (level, savings) = (core.opts.zstd_level, core.opts.min_compression_savings);
    let planes = core.config.version >= 2;
    let encoded: Vec<_> = candidates
        .par_iter()
        .map(|&i| encode_chunk(&chunks[i], &ids[i], level, savings, planes).map(|e| (i, e)))
        .collect::<Result<_>>()?;

    let mut new_chunks = 0u64;
    let mut new_bytes = 0u64;
    let mut placed: HashMap<ChunkId, Loc> = HashMap::new();
    {
        let mut w = lock(&core.writer);
        core.check_poison()?;
        for (i, (compression, stored)) in encoded {
            let id = ids[i];
            // Re-check under the lock: another thread may have stored it.
            if w.open.as_ref().is_some_and(|o| o.contains(&id)) {
                placed.insert(id, Loc::Open { seq: w.seq });
                continue;
            }
            if let Some(l) = core.index.chunk(&id)? {
                placed.insert(
                    id,
                    Loc::Sealed {
                        pack: l.pack,
                        index: l.index,
                    },
                );
                continue;
            }
            let r = append_locked(
                core,
                &mut w,
                id,
                chunks[i].len() as u32,
                compression,
                &stored,
            );
            core.poison_on(r)?;
            placed.insert(id, Loc::Open { seq: w.seq });
            new_chunks += 1;
            new_bytes += (CHUNK_HEADER_LEN + stored.len() + TABLE_ENTRY_LEN) as u64;
        }
    }
    let locs = locs
        .into_iter()
        .zip(ids)
        .map(|(l, id)| {
            l.or_else(|| placed.get(id).copied())
                .ok_or_else(|| Error::Bug(format!("chunk {id} was not placed")))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((locs, new_chunks, new_bytes))
}

fn append_locked(
    core: &Core,
    w: &mut OpenPackSlot,
    id: ChunkId,
    raw_len: u32,
    compression: Compression,
    stored: &[u8],
) -> Result<()> {
    let objects = core.objects.as_ref();
    if let Some(open) = &w.open {
        if !open.is_empty() && open.sealed_len_with(stored.len()) > core.opts.pack_target_bytes {
            seal_locked(core, w)?;
        }
    }
    let open = match &mut w.open {
        Some(open) => open,
        None => w.open.insert(PackBuilder::create(objects)?),
    };
    open.append(objects, id, raw_len, compression, stored)?;
    Ok(())
}

/// Seals the open pack (durably) and records it in the index.
fn seal_locked(core: &Core, w: &mut OpenPackSlot) -> Result<()> {
    let Some(open) = w.open.take() else {
        return Ok(());
    };
    let sealed = open.seal(core.objects.as_ref())?;
    let info = PackInfo {
        size: sealed.size,
        chunk_count: sealed.entries.len() as u32,
        raw_bytes: sealed.raw_bytes,
    };
    let chunks: Vec<(u32, ChunkEntry)> = (0u32..).zip(sealed.entries.iter().copied()).collect();
    core.index.add_pack(sealed.id, info, &chunks)?;
    tracing::debug!(pack = %sealed.id, chunks = sealed.entries.len(), size = sealed.size, "sealed pack");
    w.seq += 1;
    Ok(())
}

/// Makes sure pack `seq` is sealed.
fn ensure_sealed(core: &Core, seq: u64) -> Result<()> {
    let mut w = lock(&core.writer);
    core.check_poison()?;
    if w.seq == seq && w.open.is_some() {
        let r = seal_locked(core, &mut w);
        core.poison_on(r)?;
    }
    Ok(())
}
