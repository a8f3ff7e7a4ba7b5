//! Ingest: chunk, hash, dedup, encode and store files, then commit them
//! durably and acknowledge them (spec §10.1).
//!
//! One file streams through a pipeline whose stages overlap, with a fixed
//! number of batch buffers in flight:
//!
//! 1. the *reader* fills a buffer from the source, cuts it into chunks (in
//!    parallel segments, identical to serial FastCDC: `chunking`) and feeds
//!    the model sniffer, which gives the codec its dtype hints once the
//!    safetensors or GGUF header is parsed;
//! 2. the *hasher* (on the rayon pool) BLAKE3s every chunk, looks it up in
//!    the index (a miss filter answers for most new chunks), and encodes
//!    each new one (decoded and re-hashed before it may be stored);
//! 3. the *appender* (the calling thread) appends new chunks to the shared
//!    open pack under its lock, in file order, and hands full packs to
//!    sealing threads, so a seal's fsync never stalls the pipeline or other
//!    writers (`packwriter`);
//! 4. SHA-256 runs beside them over the same batches — for a file on disk
//!    only from the first chunk the index lacks on (reading the file again
//!    up to there), or, when every chunk was stored, only if the chunk list
//!    is not a stored file: re-ingesting a stored file takes its SHA-256
//!    from the stored recipe.
//!
//! Commit then waits for (or performs) the seals of the packs its chunks
//! are in, publishes recipes and refs, and indexes and flushes.

use std::collections::HashSet;
use std::io::Read;
use std::path::Path;

use bytes::Bytes;

use crate::cache::lock;
use crate::chunking::Chunker;
use crate::condemned::{DedupFilter, WriterCheck};
use crate::core::{Core, Shared};
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Recipe, Term};
use crate::ids::{ChunkId, FileId, PackId, Sha256};
use crate::index::NewFile;
use crate::models;
use crate::packwriter::{Append, Placed};
use crate::paths::recipe_key;
use crate::refs;
use crate::storage::PutMode;
use tessera_model::ModelInfo;

mod stages;

use stages::{Appender, StageError};

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

/// Batch buffers one ingest may hold at once: one being filled, one
/// waiting for the hasher, one being hashed, one waiting for the
/// appender, one being appended, and three for a stream's SHA-256.
const BATCH_BUFFERS: usize = 8;

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
    locs: Vec<Placed>,
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
        let staged = self.stage(reader, None, source, refs, progress)?;
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
        // A regular file can be read again: its SHA-256 is only computed
        // when needed, reading again what went by before that was known.
        let rereadable = before.is_file().then_some(&file);
        let staged = match self.stage(&file, rereadable, &name, refs, progress) {
            Ok(s) => s,
            // Reading a regular file failed because it changed (the second
            // read for its SHA-256 finds it shorter, say): say so.
            Err(
                e @ Error::Io {
                    op: "read input", ..
                },
            ) if before.is_file() => {
                let changed = stat(&file)
                    .ok()
                    .and_then(|after| source_change(&before, &after, before.len()));
                return Err(match changed {
                    Some(detail) => Error::SourceChanged {
                        path: path.to_path_buf(),
                        detail,
                    },
                    None => e,
                });
            }
            Err(e) => return Err(e),
        };
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

    /// Runs the pipeline of the module docs over one input. `rereadable` is
    /// the input itself when it is a regular file (SHA-256 by a second read,
    /// or from the stored recipe).
    fn stage(
        &mut self,
        reader: impl Read + Send,
        rereadable: Option<&std::fs::File>,
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
        let chunker = Chunker::with_buffers(
            reader,
            core.config.chunking,
            opts.ingest_batch_bytes,
            BATCH_BUFFERS,
        )?;
        let input_err = |e| Error::io("read input", source, e);
        let mut out = Appender::default();
        let small = rereadable
            .and_then(|f| f.metadata().ok())
            .is_some_and(|m| m.len() <= opts.ingest_batch_bytes as u64);
        let (sniffer, sha) = if small {
            // One batch: no pipeline to overlap, so no threads for it.
            stages::inline(core, chunker, &mut out, progress).map_err(|e| match e {
                StageError::Input(e) => input_err(e),
                StageError::Engine(e) => e,
            })?
        } else {
            stages::pipelined(core, chunker, rereadable, &mut out, progress).map_err(
                |e| match e {
                    StageError::Input(e) => input_err(e),
                    StageError::Engine(e) => e,
                },
            )?
        };
        let size = out.size;
        let model = sniffer.finish(size);
        models::check_policy(core, source, &model)?;
        Ok(Staged {
            file: out.fid.finish(),
            sha,
            size,
            chunks: out.chunks,
            locs: out.locs,
            refs: refs.iter().map(|s| s.to_string()).collect(),
            new_chunks: out.new_chunks,
            new_bytes: out.new_bytes,
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
    /// fsynced (by this call, or waited for when another writer is sealing
    /// them) → recipe and ref files written → index updated and flushed.
    pub fn commit(self) -> Result<Vec<PutReport>> {
        let core = self.core;
        let mut files = Vec::with_capacity(self.staged.len());
        for s in self.staged {
            let locs = core.writer.resolve(core, &s.locs)?;
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
        let mut check_done: Option<WriterCheck> = None;
        let (written, bytes) = if core.objects.shared() {
            // Nothing it names may be condemned or gone (spec §10.6) — its
            // own new packs included: a pack this ingest built can be
            // byte for byte one already in the bucket (same chunks, same
            // order), whose create-only write then found it there.
            let check = WriterCheck::new(core)?;
            let packs: HashSet<PackId> = recipe.terms.iter().map(|t| t.pack).collect();
            check.packs(core, &packs)?;
            // Another node may hold the same file: see `remote`. A recipe
            // object the GC condemned is replaced, not adopted.
            let known = core.index.has_file(&recipe.file)?;
            let r = crate::remote::publish_recipe(
                core,
                &recipe.file,
                bytes,
                known,
                &|file, packs| Ok(!check.file_condemned(file) && check.packs(core, packs).is_ok()),
                f.refs.is_empty(),
            );
            let r = core.poison_on(r)?;
            let check = check.confirm_published(
                core,
                &format!("recipe {}", recipe.file),
                &[],
                &packs,
                None,
            )?;
            check_done = Some(check);
            r
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
        // Each publication within the writer check's time (spec §10.6).
        let in_time = || check_done.as_ref().map_or(Ok(()), |c| c.still_valid(core));
        if let (true, Some(m)) = (written, &f.model) {
            in_time()?;
            core.poison_on(models::write(core, &recipe.file, m))?;
        }
        let mut written = Vec::new();
        let mut failed = None;
        for r in &f.refs {
            match in_time().and_then(|()| core.poison_on(refs::write_file(core, r, &recipe.file))) {
                Ok(w) => written.extend(w),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let confirmed = match (check_done, written.is_empty()) {
            (Some(check), false) => refs::confirm(core, check, &recipe.file, &written),
            _ => Ok(()),
        };
        if let Some(e) = failed {
            // The refs before the failure are published (and were confirmed
            // like any): the error must not read as if nothing was.
            if !written.is_empty() {
                let names: Vec<&str> = written.iter().map(|w| w.name()).collect();
                tracing::warn!(
                    refs = %crate::error::clip(&names.join(", ")),
                    confirmed = confirmed.is_ok(),
                    "published before a later ref of the same put failed"
                );
            }
            return Err(e);
        }
        confirmed?;
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
    // A file held before may have a new recipe now (its old packs were
    // gone): readers must not keep using the old one.
    for f in &batch {
        lock(&core.recipes).remove(&f.file);
    }
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
/// those already stored, then seals the packs holding them and flushes the
/// index: when this returns, every chunk is durable and indexed. Returns
/// (new chunks, bytes they added on disk).
pub(crate) fn admit_encoded(core: &Core, chunks: &[(ChunkEntry, Bytes)]) -> Result<(u64, u64)> {
    core.check_poison()?;
    let looked_up_at = core.writer.generation();
    // Skipped only where an ingest would deduplicate (not a chunk of a
    // pack that is gone or condemned: that one is stored again).
    let skip = DedupFilter::new(core)?;
    let mut seen = HashSet::new();
    let mut appends = Vec::new();
    for (e, stored) in chunks {
        if !seen.insert(e.id) {
            continue;
        }
        if let Some(l) = core.index.chunk(&e.id)? {
            if skip.usable(core, &l.pack)? {
                continue;
            }
        }
        appends.push(Append {
            id: e.id,
            raw_len: e.raw_len,
            compression: e.compression,
            stored: Some(stored),
        });
    }
    let mut full = Vec::new();
    let r = core.writer.append(core, &appends, looked_up_at, &mut full);
    let mut sealed = Ok(());
    for f in full {
        if let Err(e) = core.writer.seal(core, f) {
            sealed = sealed.and(Err(e));
        }
    }
    let a = r?;
    sealed?;
    core.writer.resolve(core, &a.placed)?;
    core.poison_on(core.index.flush())?;
    Ok((a.new_chunks, a.new_bytes))
}
