//! The stages of one file's ingest (see the parent module's docs): the
//! pipeline, with a thread per stage, and the same stages run inline for a
//! file that fits in one batch.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rayon::prelude::*;
use sha2::Digest;

use crate::cache::lock;
use crate::chunking::{Batch, Chunker};
use crate::codec::{encode_chunk, HintMap};
use crate::condemned::DedupFilter;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{Compression, Recipe};
use crate::ids::{ChunkId, FileId, FileIdHasher, PackId, Sha256};
use crate::packwriter::{Append, FullPack, Placed};
use tessera_model::{Limits, Sniffer};

/// The pipeline of the module docs, one thread per stage.
pub(super) fn pipelined<R: Read + Send>(
    core: &Core,
    chunker: Chunker<R>,
    rereadable: Option<&std::fs::File>,
    out: &mut Appender,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(Sniffer, Sha256), StageError> {
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
                let r = h
                    .join()
                    .unwrap_or_else(|_| Err(Error::Bug("a pack sealing thread panicked".into())));
                sealed = sealed.and(r.map(|_| ()));
            }
            let sniffer = reader.join().ok().flatten();
            let sha = sha_thread.join();
            appended?;
            sealed?;
            let sha = sha.map_err(|_| Error::Bug("the SHA-256 thread panicked".into()))?;
            // The reader stops early only when a later stage did: after
            // the appender, that is the SHA-256 stage (its read error).
            let (sniffer, mut sha) = match (sniffer, sha) {
                (Some(sniffer), sha) => (
                    sniffer.map_err(StageError::Input)?,
                    sha.map_err(StageError::Input)?,
                ),
                (None, Err(e)) => return Err(StageError::Input(e)),
                (None, Ok(_)) => {
                    return Err(Error::Bug("the ingest reader stopped early".into()).into())
                }
            };
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

/// Why staging failed: reading the input (named by the caller), or the
/// engine.
pub(super) enum StageError {
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
pub(super) fn inline<R: Read>(
    core: &Core,
    mut chunker: Chunker<R>,
    out: &mut Appender,
    progress: &mut dyn FnMut(u64),
) -> std::result::Result<(Sniffer, Sha256), StageError> {
    let mut sniffer = Sniffer::new(Limits::default());
    let mut sha = sha2::Sha256::new();
    let seen = Mutex::new(HashSet::new());
    let skip = DedupFilter::new(core)?;
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
        let hashed = hash_batch(core, fed, &seen, &skip)?;
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
    // On a shared store, packs a GC condemned: their chunks are stored
    // again rather than named (spec §10.6).
    let skip = match DedupFilter::new(core) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e));
            return;
        }
    };
    for fed in rx {
        let r = hash_batch(core, fed, &seen, &skip);
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

fn hash_batch(
    core: &Core,
    fed: Fed,
    seen: &Mutex<HashSet<ChunkId>>,
    skip: &DedupFilter,
) -> Result<Hashed> {
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
                if skip.usable(core, &l.pack)? {
                    return Ok((id, Found::Stored(l.pack, l.index)));
                }
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
pub(super) struct Appender {
    pub(super) fid: FileIdHasher,
    pub(super) size: u64,
    pub(super) chunks: Vec<(ChunkId, u32)>,
    pub(super) locs: Vec<Placed>,
    pub(super) new_chunks: u64,
    pub(super) new_bytes: u64,
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
