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

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;
use sha2::Digest;

use crate::cache::lock;
use crate::chunking::{Batch, Chunker};
use crate::codec::{encode_chunk, HintMap};
use crate::core::{Core, Shared};
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Compression, Recipe, Term};
use crate::ids::{ChunkId, FileId, FileIdHasher, PackId, Sha256};
use crate::index::NewFile;
use crate::models;
use crate::packwriter::{Append, FullPack, Placed};
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
        let staged = self.stage(&file, rereadable, &name, refs, progress)?;
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
            stage_inline(core, chunker, &mut out, progress).map_err(|e| match e {
                StageError::Input(e) => input_err(e),
                StageError::Engine(e) => e,
            })?
        } else {
            self.stage_pipelined(chunker, rereadable, &mut out, progress)
                .map_err(|e| match e {
                    StageError::Input(e) => input_err(e),
                    StageError::Engine(e) => e,
                })?
        };
        let size = out.size;
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

    /// The pipeline of the module docs, one thread per stage.
    fn stage_pipelined<R: Read + Send>(
        &self,
        chunker: Chunker<R>,
        rereadable: Option<&std::fs::File>,
        out: &mut Appender,
        progress: &mut dyn FnMut(u64),
    ) -> std::result::Result<(Sniffer, Sha256), StageError> {
        let core = self.core;
        // SHA-256 is needed unless the input is a regular file whose chunk
        // list turns out to be a stored file: set at once for a stream, and
        // by the hasher at the first chunk the index lacks.
        let need_sha = AtomicBool::new(rereadable.is_none());
        std::thread::scope(
            |scope| -> std::result::Result<(Sniffer, Sha256), StageError> {
                let (fed_tx, fed_rx) = sync_channel::<Fed>(1);
                let (done_tx, done_rx) = sync_channel::<Result<Hashed>>(1);
                let (sha_tx, sha_rx) = sync_channel::<Bytes>(2);
                let need = &need_sha;
                let sha_thread = scope.spawn(move || sha_stage(sha_rx, need, rereadable));
                let reader = scope.spawn(move || read_stage(chunker, fed_tx, sha_tx));
                scope.spawn(move || hash_stage(core, fed_rx, done_tx, need));
                let mut seals = Vec::new();
                let appended = (|| -> Result<()> {
                    for hashed in done_rx.iter() {
                        let r = out.append(core, hashed?, &mut |full| {
                            seals.push(scope.spawn(move || core.writer.seal(core, full)));
                        });
                        r?;
                        progress(out.size);
                    }
                    Ok(())
                })();
                // Stops the stages on an error (their channels close).
                drop(done_rx);
                let mut sealed = Ok(());
                for h in seals {
                    let r = h.join().unwrap_or_else(|_| {
                        Err(Error::Bug("a pack sealing thread panicked".into()))
                    });
                    sealed = sealed.and(r.map(|_| ()));
                }
                let sniffer = reader.join().ok().flatten();
                let sha = sha_thread.join();
                appended?;
                sealed?;
                let sniffer = sniffer
                    .ok_or_else(|| Error::Bug("the ingest reader stopped early".into()))?
                    .map_err(StageError::Input)?;
                let mut sha = sha
                    .map_err(|_| Error::Bug("the SHA-256 thread panicked".into()))?
                    .map_err(StageError::Input)?;
                // A regular file whose chunk list is a stored file: its SHA-256
                // is in the stored recipe.
                if !need_sha.load(Ordering::SeqCst) {
                    if let Some(known) = stored_sha256(core, &out.fid.finish())? {
                        return Ok((sniffer, known));
                    }
                }
                // Whatever the SHA-256 stage skipped, from the file again.
                sha.catch_up(rereadable, out.size)
                    .map_err(StageError::Input)?;
                Ok((sniffer, sha.finish()))
            },
        )
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

/// Why staging failed: reading the input (named by the caller), or the
/// engine.
enum StageError {
    Input(std::io::Error),
    Engine(Error),
}

impl From<Error> for StageError {
    fn from(e: Error) -> Self {
        StageError::Engine(e)
    }
}

/// Stages a small regular file (one batch) on the calling thread: the same
/// stages as the pipeline, one after the other, and SHA-256 as it goes.
fn stage_inline<R: Read>(
    core: &Core,
    mut chunker: Chunker<R>,
    out: &mut Appender,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(Sniffer, Sha256), StageError> {
    let mut sniffer = Sniffer::new(Limits::default());
    let mut sha = sha2::Sha256::new();
    let seen = Mutex::new(HashSet::new());
    // A file that grew since its size was read takes more batches.
    while let Some(batch) = chunker.next_batch().map_err(StageError::Input)? {
        sniffer.feed(&batch.data);
        sha.update(&batch.data);
        let hints = sniffer
            .tensor_regions()
            .map(|(format, regions)| Arc::new(HintMap::new(format, &regions)));
        let fed = Fed {
            offset: out.size,
            batch,
            hints,
        };
        let hashed = hash_batch(core, fed, &seen)?;
        let mut full = Vec::new();
        let r = out.append(core, hashed, &mut |f| full.push(f));
        for f in full {
            core.writer.seal(core, f)?;
        }
        r?;
        progress(out.size);
    }
    Ok((sniffer, Sha256(sha.finalize().into())))
}

/// A batch as the reader hands it on: where it starts in the input, and
/// the codec hints known when it was read.
struct Fed {
    batch: Batch,
    offset: u64,
    hints: Option<Arc<HintMap>>,
}

/// What the hasher found about one chunk.
enum Found {
    /// Indexed: in this pack, at this index.
    Stored(PackId, u32),
    /// New: encoded (and verified) as this.
    New(Compression, Bytes),
    /// New, but an earlier chunk of this file has the same id (the
    /// appender places that one first).
    Repeat,
}

/// A batch with every chunk's id and what was found about it.
struct Hashed {
    batch: Batch,
    found: Vec<(ChunkId, Found)>,
    /// The pack writer's generation read before the lookups.
    looked_up_at: u64,
}

/// The reader stage: fills batches, cuts them, feeds the sniffer (whose
/// header gives the codec hints) and the SHA-256 stage. Returns the
/// sniffer at the end of input, the read error, or `None` when a later
/// stage stopped first.
fn read_stage<R: Read>(
    mut chunker: Chunker<R>,
    tx: SyncSender<Fed>,
    sha: SyncSender<Bytes>,
) -> Option<std::io::Result<Sniffer>> {
    // Sees every byte once, in order: the model format, its tensors, and
    // every import of every pickle (spec §7.2).
    let mut sniffer = Sniffer::new(Limits::default());
    let mut hints: Option<Arc<HintMap>> = None;
    let mut offset = 0u64;
    loop {
        let batch = match chunker.next_batch() {
            Ok(Some(b)) => b,
            Ok(None) => return Some(Ok(sniffer)),
            Err(e) => return Some(Err(e)),
        };
        sniffer.feed(&batch.data);
        if hints.is_none() {
            if let Some((format, regions)) = sniffer.tensor_regions() {
                hints = Some(Arc::new(HintMap::new(format, &regions)));
            }
        }
        if sha.send(batch.data.clone()).is_err() {
            return None;
        }
        let len = batch.data.len() as u64;
        let fed = Fed {
            batch,
            offset,
            hints: hints.clone(),
        };
        if tx.send(fed).is_err() {
            return None;
        }
        offset += len;
    }
}

/// The hasher stage: ids, lookups and encodings of each batch, on the
/// rayon pool; stops at the first error (sent on).
fn hash_stage(
    core: &Core,
    rx: Receiver<Fed>,
    tx: SyncSender<Result<Hashed>>,
    need_sha: &AtomicBool,
) {
    // Ids of this file's new chunks so far: a repeat is encoded once.
    let seen = Mutex::new(HashSet::new());
    for fed in rx {
        let r = hash_batch(core, fed, &seen);
        if let Ok(h) = &r {
            if !need_sha.load(Ordering::Relaxed)
                && h.found.iter().any(|(_, f)| !matches!(f, Found::Stored(..)))
            {
                // Not a stored file: its SHA-256 is needed.
                need_sha.store(true, Ordering::SeqCst);
            }
        }
        let failed = r.is_err();
        if tx.send(r).is_err() || failed {
            return;
        }
    }
}

fn hash_batch(core: &Core, fed: Fed, seen: &Mutex<HashSet<ChunkId>>) -> Result<Hashed> {
    let looked_up_at = core.writer.generation();
    let (level, savings) = (core.opts.zstd_level, core.opts.min_compression_savings);
    let planes = core.config.version >= 2;
    let Fed {
        batch,
        offset,
        hints,
    } = fed;
    let mut found: Vec<(ChunkId, Found)> = batch
        .chunks
        .par_iter()
        .map(|r| {
            let raw = batch.data.slice(r.clone());
            let id = ChunkId::of(&raw);
            if let Some(l) = core.index.chunk(&id)? {
                return Ok((id, Found::Stored(l.pack, l.index)));
            }
            if !lock(seen).insert(id) {
                return Ok((id, Found::Repeat));
            }
            let hint = hints.as_ref().map_or_else(Default::default, |h| {
                h.hint(offset + r.start as u64, offset + r.end as u64)
            });
            let (compression, stored) = encode_chunk(&raw, &id, level, savings, planes, hint)?;
            Ok((id, Found::New(compression, stored)))
        })
        .collect::<Result<_>>()?;
    // Chunks were encoded in whatever order the pool ran them: within the
    // batch, the first occurrence of an id must carry its encoding.
    let mut first: HashMap<ChunkId, usize> = HashMap::new();
    for i in 0..found.len() {
        if matches!(found[i].1, Found::Stored(..)) {
            continue;
        }
        match first.get(&found[i].0) {
            None => {
                first.insert(found[i].0, i);
            }
            Some(&j) => {
                if matches!(found[i].1, Found::New(..)) {
                    let new = std::mem::replace(&mut found[i].1, Found::Repeat);
                    found[j].1 = new;
                }
            }
        }
    }
    Ok(Hashed {
        batch,
        found,
        looked_up_at,
    })
}

/// The appender stage's state: the file's chunk list and where each chunk is.
#[derive(Default)]
struct Appender {
    fid: FileIdHasher,
    size: u64,
    chunks: Vec<(ChunkId, u32)>,
    locs: Vec<Placed>,
    new_chunks: u64,
    new_bytes: u64,
}

impl Appender {
    /// Appends a batch's new chunks (in file order) to the shared open
    /// pack; every pack that fills up goes to `seal`.
    fn append(&mut self, core: &Core, h: Hashed, seal: &mut dyn FnMut(FullPack)) -> Result<()> {
        let base = self.locs.len();
        let mut appends = Vec::new();
        let mut at = Vec::new();
        for (i, ((id, f), r)) in h.found.iter().zip(&h.batch.chunks).enumerate() {
            let len = r.len() as u32;
            self.fid.push(id, u64::from(len));
            self.chunks.push((*id, len));
            match f {
                Found::Stored(pack, index) => self.locs.push(Placed::Indexed {
                    pack: *pack,
                    index: *index,
                }),
                Found::New(compression, stored) => {
                    at.push(base + i);
                    appends.push(Append {
                        id: *id,
                        raw_len: len,
                        compression: *compression,
                        stored: Some(stored),
                    });
                }
                Found::Repeat => {
                    at.push(base + i);
                    appends.push(Append {
                        id: *id,
                        raw_len: len,
                        compression: Compression::None,
                        stored: None,
                    });
                }
            }
            if !matches!(f, Found::Stored(..)) {
                // Filled in below, once placed.
                self.locs.push(Placed::Indexed {
                    pack: PackId([0; 32]),
                    index: u32::MAX,
                });
            }
        }
        if !appends.is_empty() {
            let mut full = Vec::new();
            let r = core
                .writer
                .append(core, &appends, h.looked_up_at, &mut full);
            for f in full {
                seal(f);
            }
            let a = r?;
            if a.placed.len() != at.len() {
                return Err(Error::Bug("a batch's chunks were not all placed".into()));
            }
            for (i, p) in at.into_iter().zip(a.placed) {
                self.locs[i] = p;
            }
            self.new_chunks += a.new_chunks;
            self.new_bytes += a.new_bytes;
        }
        self.size += h.batch.data.len() as u64;
        Ok(())
    }
}

/// The SHA-256 of a prefix of the input.
struct ShaPrefix {
    hasher: sha2::Sha256,
    /// Bytes hashed: `0..upto` of the input.
    upto: u64,
}

impl ShaPrefix {
    /// Hashes `upto..to` of `file` (a second read of a regular file).
    fn catch_up(&mut self, file: Option<&std::fs::File>, to: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.upto >= to {
            return Ok(());
        }
        let Some(file) = file else {
            return Err(std::io::Error::other(
                "SHA-256 skipped bytes of an input that cannot be read again",
            ));
        };
        let mut buf = vec![0u8; (to - self.upto).min(4 << 20) as usize];
        while self.upto < to {
            let n = (to - self.upto).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..n], self.upto) {
                Ok(0) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "the file got shorter while it was read",
                    ))
                }
                Ok(k) => {
                    self.hasher.update(&buf[..k]);
                    self.upto += k as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn finish(self) -> Sha256 {
        Sha256(self.hasher.finalize().into())
    }
}

/// The SHA-256 stage: hashes the batches in order once `need` is set,
/// first reading again (from `file`) what went by before; without `need`,
/// batches are only counted.
fn sha_stage(
    rx: Receiver<Bytes>,
    need: &AtomicBool,
    file: Option<&std::fs::File>,
) -> std::io::Result<ShaPrefix> {
    let mut sha = ShaPrefix {
        hasher: sha2::Sha256::new(),
        upto: 0,
    };
    let mut offset = 0u64;
    for b in rx {
        if need.load(Ordering::SeqCst) {
            sha.catch_up(file, offset)?;
            sha.hasher.update(&b);
            sha.upto += b.len() as u64;
        }
        offset += b.len() as u64;
    }
    Ok(sha)
}

/// The SHA-256 of a stored file, from its recipe in the index (`None`
/// when it is not stored or that copy does not check).
fn stored_sha256(core: &Core, file: &FileId) -> Result<Option<Sha256>> {
    Ok(core
        .index
        .recipe_bytes(file)?
        .and_then(|b| Recipe::decode(*file, &b).ok())
        .map(|r| r.sha256))
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
        // The recipe object must say exactly what the index will say. One
        // left by an ingest that crashed before its index flush may name
        // packs the index no longer knows (their chunks were then stored
        // again elsewhere): replace it.
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
/// those already stored, then seals the packs holding them and flushes the
/// index: when this returns, every chunk is durable and indexed. Returns
/// (new chunks, bytes they added on disk).
pub(crate) fn admit_encoded(core: &Core, chunks: &[(ChunkEntry, Bytes)]) -> Result<(u64, u64)> {
    core.check_poison()?;
    let looked_up_at = core.writer.generation();
    let mut seen = HashSet::new();
    let mut appends = Vec::new();
    for (e, stored) in chunks {
        if !seen.insert(e.id) || core.index.chunk(&e.id)?.is_some() {
            continue;
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
