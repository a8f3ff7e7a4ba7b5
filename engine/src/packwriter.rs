//! The shared open pack of a store's writers, and sealing (spec §10.1).
//!
//! Every writer (ingest, admitted uploads and pulls) appends new chunks to
//! one open pack. The dedup check (the index and every pack not yet
//! indexed) and the append happen under one lock, the slot's, so two
//! threads never store one chunk twice (rule 6). Sealing happens *outside*
//! that lock: a full pack (or the one a commit needs durable) is taken out
//! of the slot, and whoever took it writes its footer, fsyncs and publishes
//! it, then indexes it (rules 1, 2), while other writers go on appending
//! to a fresh pack. Until a pack is indexed its chunks stay in the slot's
//! `pending` map, so dedup still sees them; a writer that placed chunks in
//! a pack (or found them there) waits for that pack's seal before it
//! commits.
//!
//! Lookups outside the lock: a writer reads [`PackWriter::generation`],
//! looks chunks up in the index, and later appends under the lock. Chunks
//! leave `pending` only after their pack is indexed, and every removal
//! bumps the generation under the lock; so if the generation is unchanged
//! at append time, a chunk that is neither pending nor found by the earlier
//! lookup is in no pack at all, and the index is not asked again (one
//! index lookup per new chunk; none with the index's miss filter).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use crate::cache::lock;
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, Compression};
use crate::ids::{ChunkId, PackId};
use crate::index::{Index, PackInfo};
use crate::pack::PackBuilder;
use crate::storage::ObjectStore;

/// What the pack writer needs of the store it writes for. The store's core,
/// which holds the writer, implements it, so this module does not name it.
pub(crate) trait Host {
    /// Where packs are written.
    fn objects(&self) -> &dyn ObjectStore;
    /// Where sealed packs are indexed, and chunks looked up.
    fn index(&self) -> &Index;
    /// The size at which an open pack is full.
    fn pack_target_bytes(&self) -> u64;
    /// `Err(Poisoned)` once an earlier write failed.
    fn check_poison(&self) -> Result<()>;
    /// Poisons the store if `r` is a failed write.
    fn poison_on<T>(&self, r: Result<T>) -> Result<T>;
}

/// The seal of one pack, shared by every writer with chunks in it.
pub(crate) struct Sealing {
    seq: u64,
    /// `None` while open or sealing; then the pack id, or `None` inside when
    /// the seal failed (the store is poisoned then).
    result: Mutex<Option<Option<PackId>>>,
    done: Condvar,
}

impl std::fmt::Debug for Sealing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealing({})", self.seq)
    }
}

impl Sealing {
    fn new(seq: u64) -> Arc<Self> {
        Arc::new(Sealing {
            seq,
            result: Mutex::new(None),
            done: Condvar::new(),
        })
    }

    fn finish(&self, id: Option<PackId>) {
        *lock(&self.result) = Some(id);
        self.done.notify_all();
    }
}

/// Where an appended (or already stored) chunk is.
#[derive(Clone, Debug)]
pub(crate) enum Placed {
    /// In an indexed pack.
    Indexed { pack: PackId, index: u32 },
    /// In a pack not yet indexed (open or being sealed), at `index`.
    InPack { pack: Arc<Sealing>, index: u32 },
}

/// A chunk to append: its id, raw length and encoding. `stored` is `None`
/// for a chunk the caller knows was placed earlier in the same sequence of
/// appends (a repeat within one file): it is only looked up.
pub(crate) struct Append<'a> {
    pub(crate) id: ChunkId,
    pub(crate) raw_len: u32,
    pub(crate) compression: Compression,
    pub(crate) stored: Option<&'a [u8]>,
}

/// A pack taken out of the slot, to be sealed by whoever took it. Dropped
/// unsealed (an error path), it fails its waiters instead of leaving them
/// waiting.
pub(crate) struct FullPack {
    builder: Option<PackBuilder>,
    sealing: Arc<Sealing>,
}

impl Drop for FullPack {
    fn drop(&mut self) {
        if self.builder.is_some() {
            self.sealing.finish(None);
        }
    }
}

struct OpenPack {
    builder: PackBuilder,
    sealing: Arc<Sealing>,
}

#[derive(Default)]
struct Slot {
    open: Option<OpenPack>,
    next_seq: u64,
    /// Chunks in packs that are not indexed yet.
    pending: HashMap<ChunkId, (Arc<Sealing>, u32)>,
}

/// The writers' shared open pack (see the module docs).
#[derive(Default)]
pub(crate) struct PackWriter {
    slot: Mutex<Slot>,
    /// Bumped (under the slot lock) whenever chunks leave `pending`.
    generation: AtomicU64,
}

/// What one call to [`PackWriter::append`] did.
pub(crate) struct Appended {
    /// Where each chunk is, in order.
    pub(crate) placed: Vec<Placed>,
    /// Chunks this call wrote.
    pub(crate) new_chunks: u64,
    /// Bytes they add on disk (records and table entries).
    pub(crate) new_bytes: u64,
}

impl PackWriter {
    /// Read before looking chunks up in the index for a later
    /// [`PackWriter::append`].
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Appends the chunks that no pack holds yet to the open pack, in
    /// order, and says where every chunk is. Each chunk with `stored` bytes
    /// must have been missed by an index lookup made after reading
    /// generation `looked_up_at`; the check (the packs not yet indexed, and
    /// the index again only if the generation moved since) and the append
    /// happen under one lock. Packs that fill up are pushed to `full`, even
    /// when an error is returned: the caller seals them
    /// ([`PackWriter::seal`]).
    pub(crate) fn append(
        &self,
        core: &impl Host,
        chunks: &[Append<'_>],
        looked_up_at: u64,
        full: &mut Vec<FullPack>,
    ) -> Result<Appended> {
        let objects = core.objects();
        let mut out = Appended {
            placed: Vec::with_capacity(chunks.len()),
            new_chunks: 0,
            new_bytes: 0,
        };
        let mut s = lock(&self.slot);
        core.check_poison()?;
        let fresh = self.generation() == looked_up_at;
        for c in chunks {
            if let Some((pack, index)) = s.pending.get(&c.id) {
                out.placed.push(Placed::InPack {
                    pack: pack.clone(),
                    index: *index,
                });
                continue;
            }
            let stored = match c.stored {
                Some(stored) if fresh => stored,
                _ => match core.index().chunk(&c.id)? {
                    Some(l) => {
                        out.placed.push(Placed::Indexed {
                            pack: l.pack,
                            index: l.index,
                        });
                        continue;
                    }
                    None => c.stored.ok_or_else(|| {
                        Error::Bug(format!("chunk {} repeated but never placed", c.id))
                    })?,
                },
            };
            if let Some(open) = &s.open {
                if !open.builder.is_empty()
                    && open.builder.sealed_len_with(stored.len()) > core.pack_target_bytes()
                {
                    if let Some(o) = s.open.take() {
                        full.push(FullPack {
                            builder: Some(o.builder),
                            sealing: o.sealing,
                        });
                    }
                }
            }
            if s.open.is_none() {
                let builder = core.poison_on(PackBuilder::create(objects))?;
                let seq = s.next_seq;
                s.next_seq += 1;
                s.open = Some(OpenPack {
                    builder,
                    sealing: Sealing::new(seq),
                });
            }
            let Some(open) = s.open.as_mut() else {
                return Err(Error::Bug("no open pack after creating one".into()));
            };
            let r = open
                .builder
                .append(objects, c.id, c.raw_len, c.compression, stored);
            let index = core.poison_on(r)?;
            let sealing = open.sealing.clone();
            s.pending.insert(c.id, (sealing.clone(), index));
            out.placed.push(Placed::InPack {
                pack: sealing,
                index,
            });
            out.new_chunks += 1;
            out.new_bytes += (crate::format::CHUNK_HEADER_LEN
                + stored.len()
                + crate::format::TABLE_ENTRY_LEN) as u64;
        }
        Ok(out)
    }

    /// Seals a pack taken out of the slot: footer, fsync, publish, then one
    /// index transaction; then its chunks leave `pending`. Returns its id.
    pub(crate) fn seal(&self, core: &impl Host, mut full: FullPack) -> Result<PackId> {
        let Some(builder) = full.builder.take() else {
            return Err(Error::Bug("pack sealed twice".into()));
        };
        let ids = builder.chunk_ids();
        let r = (|| {
            let sealed = builder.seal(core.objects())?;
            let info = PackInfo {
                size: sealed.size,
                chunk_count: sealed.entries.len() as u32,
                raw_bytes: sealed.raw_bytes,
            };
            let chunks: Vec<(u32, ChunkEntry)> =
                (0u32..).zip(sealed.entries.iter().copied()).collect();
            core.index().add_pack(sealed.id, info, &chunks)?;
            tracing::debug!(pack = %sealed.id, chunks = sealed.entries.len(), size = sealed.size, "sealed pack");
            Ok(sealed.id)
        })();
        let r = core.poison_on(r);
        {
            let mut s = lock(&self.slot);
            for id in &ids {
                if s.pending
                    .get(id)
                    .is_some_and(|(p, _)| Arc::ptr_eq(p, &full.sealing))
                {
                    s.pending.remove(id);
                }
            }
            self.generation.fetch_add(1, Ordering::SeqCst);
        }
        full.sealing.finish(r.as_ref().ok().copied());
        r
    }

    /// The id of pack `sealing` once it is sealed and indexed: seals it now
    /// if it is still the open pack, else waits for whoever is sealing it.
    pub(crate) fn sealed(&self, core: &impl Host, sealing: &Arc<Sealing>) -> Result<PackId> {
        let taken = {
            let mut s = lock(&self.slot);
            match &s.open {
                Some(o) if Arc::ptr_eq(&o.sealing, sealing) => s.open.take().map(|o| FullPack {
                    builder: Some(o.builder),
                    sealing: o.sealing,
                }),
                _ => None,
            }
        };
        if let Some(full) = taken {
            return self.seal(core, full);
        }
        let mut r = lock(&sealing.result);
        loop {
            match *r {
                Some(Some(id)) => return Ok(id),
                Some(None) => {
                    core.check_poison()?;
                    return Err(Error::Bug(format!(
                        "pack {} was abandoned unsealed",
                        sealing.seq
                    )));
                }
                None => r = sealing.done.wait(r).unwrap_or_else(|p| p.into_inner()),
            }
        }
    }

    /// Drops the open pack and forgets every chunk not yet indexed: after a
    /// failed write, whatever was appended is suspect (a record may be half
    /// written) and was never acknowledged. Only for a caller that holds the
    /// store's gate alone (no writer is appending or waiting on a seal).
    pub(crate) fn reset(&self) {
        let mut s = lock(&self.slot);
        // Dropped unsealed: its waiters fail, its staged file goes.
        drop(s.open.take().map(|o| FullPack {
            builder: Some(o.builder),
            sealing: o.sealing,
        }));
        s.pending.clear();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Resolves placements to (pack, index in pack), sealing or waiting for
    /// every pack not yet indexed that they name.
    pub(crate) fn resolve(
        &self,
        core: &impl Host,
        placed: &[Placed],
    ) -> Result<Vec<(PackId, u32)>> {
        let mut ids: HashMap<u64, PackId> = HashMap::new();
        let mut out = Vec::with_capacity(placed.len());
        for p in placed {
            out.push(match p {
                Placed::Indexed { pack, index } => (*pack, *index),
                Placed::InPack { pack, index } => {
                    let id = match ids.get(&pack.seq) {
                        Some(id) => *id,
                        None => {
                            let id = self.sealed(core, pack)?;
                            ids.insert(pack.seq, id);
                            id
                        }
                    };
                    (id, *index)
                }
            });
        }
        Ok(out)
    }
}
