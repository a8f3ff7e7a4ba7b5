//! Assembling a file pulled from another store as its verified chunks
//! arrive, in any order: each chunk is admitted into the local store and
//! written to the output at every offset where the file holds it, while a
//! thread of the assembly feeds the file's bytes, in file order, to SHA-256
//! and the model sniffer (chunks the store held before the pull are read
//! from it, verified, by that thread, which writes them out too). When the
//! last chunk is in, the file is registered from its chunk list without a
//! chunk being read back.
//!
//! Nothing here takes the caller's word for the content: chunks arrive
//! only as [`VerifiedChunks`], which only [`super::verify_fetched`] makes,
//! so every byte hashed was checked against its chunk id; the chunk list is
//! checked against the file id ([`Reconstruction::check`]); the SHA-256 is
//! computed here and must be the one the reconstruction names, or nothing
//! is registered. An upload (`register_file`) still reads its chunks back:
//! there the client's chunk list is all there is.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use bytes::Bytes;
use sha2::Digest;
use tessera_model::{Limits, Sniffer};

use super::upload::{chunk_locations, publish_one, register_hashed, Hashed};
use super::{DownloadPlan, Reconstruction, VerifiedChunks};
use crate::cache::lock;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::ids::{ChunkId, FileId, Sha256};
use crate::ingest::{admit_encoded, PutReport};
use crate::read::layout;
use crate::refs;

/// Raw bytes of arrived chunks held in memory for the hashing thread
/// ahead of the chunk it is at. Past this, an arriving chunk is not held
/// (unless the thread is waiting for it): the thread reads it back from the
/// store, verified, when it gets there. Requests planned in file order and
/// a few in flight stay well under it.
const HOLD_BYTES: u64 = 64 << 20;

/// The output is fsync'd in the background each time this much more of it
/// has been written, so that its writeback overlaps the download and the
/// fsync at the end has little left to do.
const SYNC_EVERY: u64 = 64 << 20;

/// A file being assembled from a download (see the module docs): made by
/// [`crate::Store::assemble`], fed with [`Assembly::add`] (from any number
/// of threads), completed by [`Assembly::finish`]. Dropped unfinished, it
/// stops its thread and registers nothing.
pub struct Assembly {
    shared: Arc<Shared>,
    hasher: Option<JoinHandle<Result<Hashed>>>,
    syncer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Assembly {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembly")
            .field("file", &self.shared.file)
            .finish()
    }
}

struct Shared {
    core: Arc<Core>,
    file: FileId,
    size: u64,
    /// The SHA-256 the reconstruction names.
    claimed: Sha256,
    out: File,
    /// The file's chunks in order, and where each starts.
    chunks: Vec<(ChunkId, u32)>,
    offsets: Vec<u64>,
    /// The chunks to arrive through `add`: how many times the file holds
    /// each, and where.
    to_come: HashMap<ChunkId, Vec<usize>>,
    /// At most this many bytes held ([`HOLD_BYTES`]; tests set less).
    hold: AtomicU64,
    state: Mutex<State>,
    /// Signals the hashing thread (a chunk arrived, or the end).
    changed: Condvar,
    /// Signals the fsync thread (more written, or the end).
    to_sync: Condvar,
}

#[derive(Default)]
struct State {
    /// Raw bytes of arrived chunks held for the hashing thread, with the
    /// number of the file's positions still to hash them.
    held: HashMap<ChunkId, (Bytes, usize)>,
    held_bytes: u64,
    /// Chunks that arrived: written out and in the store.
    arrived: HashSet<ChunkId>,
    /// Arrived chunks that were not held (read back when hashed).
    not_held: u64,
    /// The chunk the hashing thread waits for.
    waiting: Option<ChunkId>,
    /// No more chunks will be added.
    closed: bool,
    /// Dropped unfinished: the hashing thread stops.
    abandoned: bool,
    /// Bytes written to the output, and as many when the last background
    /// fsync was asked for.
    written: u64,
    sync_asked: u64,
    /// A background fsync's error (reported by `finish`: Linux reports a
    /// writeback error to one fsync only).
    sync_error: Option<std::io::Error>,
}

impl Assembly {
    pub(crate) fn new(
        core: Arc<Core>,
        rec: &Reconstruction,
        plan: &DownloadPlan,
        out: File,
    ) -> Result<Assembly> {
        rec.check()?;
        if !rec.is_whole_file() {
            return Err(Error::InvalidArgument(format!(
                "assembling file {}: the reconstruction is of a byte range, not the whole file",
                rec.file_id
            )));
        }
        // The output is as long as the file from the start: an earlier
        // run's longer file leaves nothing behind.
        out.set_len(rec.size)
            .map_err(|e| Error::io("size the assembled file", "the output", e))?;
        let fetched: HashSet<ChunkId> = plan
            .fetches
            .iter()
            .flat_map(|f| f.chunks.iter().map(|c| c.id))
            .collect();
        let mut chunks = Vec::new();
        let mut offsets = Vec::new();
        let mut to_come: HashMap<ChunkId, Vec<usize>> = HashMap::new();
        let mut at = 0u64;
        for (i, (_, c)) in rec.chunks().enumerate() {
            chunks.push((c.id, c.len));
            offsets.push(at);
            at += u64::from(c.len);
            if fetched.contains(&c.id) {
                to_come.entry(c.id).or_default().push(i);
            }
        }
        let shared = Arc::new(Shared {
            core,
            file: rec.file_id,
            size: rec.size,
            claimed: rec.sha256,
            out,
            chunks,
            offsets,
            to_come,
            hold: AtomicU64::new(HOLD_BYTES),
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            to_sync: Condvar::new(),
        });
        let sh = shared.clone();
        let hasher = std::thread::Builder::new()
            .name("tessera-assemble".into())
            .spawn(move || sh.hash_in_order())
            .map_err(|e| Error::io("start a thread", "the assembly's SHA-256", e))?;
        let mut a = Assembly {
            shared,
            hasher: Some(hasher),
            syncer: None,
        };
        let sh = a.shared.clone();
        a.syncer = Some(
            std::thread::Builder::new()
                .name("tessera-assemble-sync".into())
                .spawn(move || sh.sync_in_background())
                .map_err(|e| Error::io("start a thread", "the assembly's fsync", e))?,
        );
        Ok(a)
    }

    /// The file being assembled.
    pub fn file_id(&self) -> FileId {
        self.shared.file
    }

    /// Holds at most `bytes` of arrived chunks for the hashing thread
    /// (tests: 0 makes it read back every chunk it does not wait for).
    #[cfg(feature = "testing")]
    pub fn set_hold_bytes(&self, bytes: u64) {
        self.shared.hold.store(bytes, Ordering::Relaxed);
    }

    /// Chunks that arrived but were not held, so the hashing thread reads
    /// (or read) them back from the store.
    pub fn chunks_read_back(&self) -> u64 {
        lock(&self.shared.state).not_held
    }

    /// Admits verified chunks into the store (durably, when this returns)
    /// and writes each of the file's chunks among them to the output,
    /// wherever the file holds it. Chunks may come in any order, from any
    /// number of threads at once, and more than once. Returns how many
    /// chunks were new to the store.
    pub fn add(&self, chunks: &VerifiedChunks) -> Result<u64> {
        let sh = &self.shared;
        let (new, _) = admit_encoded(&sh.core, &chunks.records)?;
        for ((e, _), raw) in chunks.records.iter().zip(&chunks.raw) {
            // A chunk the store held before is written out by the hashing
            // thread; one the file does not hold is only admitted.
            let Some(positions) = sh.to_come.get(&e.id) else {
                continue;
            };
            if lock(&sh.state).arrived.contains(&e.id) {
                continue;
            }
            for &i in positions {
                sh.write_at(raw, i)?;
            }
            let mut st = lock(&sh.state);
            sh.wrote(&mut st, raw.len() as u64 * positions.len() as u64);
            if !st.arrived.insert(e.id) {
                continue;
            }
            let len = raw.len() as u64;
            let hold = sh.hold.load(Ordering::Relaxed);
            if st.waiting == Some(e.id) || st.held_bytes + len <= hold {
                st.held.insert(e.id, (raw.clone(), positions.len()));
                st.held_bytes += len;
            } else {
                st.not_held += 1;
            }
            drop(st);
            sh.changed.notify_all();
        }
        Ok(new)
    }

    /// Completes the assembly once every chunk fetched is added: waits for
    /// the file's SHA-256, refuses the file (registering nothing) unless it
    /// is the one its reconstruction names, then registers it with `refs`
    /// while the output is fsync'd. When this returns `Ok`, the output holds
    /// the whole file, durably, and the store holds the file.
    pub fn finish(mut self, ref_names: &[&str]) -> Result<PutReport> {
        let sh = self.shared.clone();
        sh.core.check_poison()?;
        for r in ref_names {
            refs::validate(r)?;
        }
        lock(&sh.state).closed = true;
        sh.changed.notify_all();
        sh.to_sync.notify_all();
        if let Some(h) = self.syncer.take() {
            h.join()
                .map_err(|_| Error::Bug("the assembly's fsync thread panicked".into()))?;
        }
        if let Some(e) = lock(&sh.state).sync_error.take() {
            return Err(Error::io("sync the assembled file", "the output", e));
        }
        let hashed = match self.hasher.take() {
            Some(h) => h.join().unwrap_or_else(|_| {
                Err(Error::Bug("the assembly's SHA-256 thread panicked".into()))
            }),
            None => Err(Error::Bug("an assembly finished twice".into())),
        }?;
        let not_held = lock(&sh.state).not_held;
        if not_held > 0 {
            tracing::debug!(
                file = %sh.file,
                not_held,
                "chunks read back from the store to hash them (they arrived far ahead)"
            );
        }
        if hashed.sha256 != sh.claimed {
            return Err(sh.reject(format!(
                "its verified content hashes to sha256 {}, not the {} its reconstruction names",
                hashed.sha256, sh.claimed
            )));
        }
        std::thread::scope(|s| {
            let synced = s.spawn(|| {
                sh.out
                    .sync_all()
                    .map_err(|e| Error::io("sync the assembled file", "the output", e))
            });
            let registered = sh.register(hashed, ref_names);
            let synced = synced
                .join()
                .unwrap_or_else(|_| Err(Error::Bug("the output's fsync thread panicked".into())));
            let report = registered?;
            synced?;
            Ok(report)
        })
    }
}

impl Drop for Assembly {
    fn drop(&mut self) {
        lock(&self.shared.state).abandoned = true;
        self.shared.changed.notify_all();
        self.shared.to_sync.notify_all();
        if let Some(h) = self.hasher.take() {
            let _ = h.join();
        }
        if let Some(h) = self.syncer.take() {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn reject(&self, reason: String) -> Error {
        Error::Rejected {
            what: format!("file {}", self.file),
            reason,
        }
    }

    /// Counts `n` more bytes written, and asks for a background fsync
    /// every [`SYNC_EVERY`].
    fn wrote(&self, st: &mut State, n: u64) {
        st.written += n;
        if st.written - st.sync_asked >= SYNC_EVERY {
            st.sync_asked = st.written;
            self.to_sync.notify_one();
        }
    }

    /// The fsync thread: the output's data made durable in the background
    /// as it is written, until the end.
    fn sync_in_background(&self) {
        let mut done = 0u64;
        loop {
            let mut st = lock(&self.state);
            while st.sync_asked == done && !st.closed && !st.abandoned {
                st = self.to_sync.wait(st).unwrap_or_else(|p| p.into_inner());
            }
            if st.closed || st.abandoned {
                return;
            }
            done = st.sync_asked;
            drop(st);
            if let Err(e) = self.out.sync_data() {
                lock(&self.state).sync_error.get_or_insert(e);
                return;
            }
        }
    }

    fn write_at(&self, raw: &[u8], position: usize) -> Result<()> {
        let at = self
            .offsets
            .get(position)
            .copied()
            .ok_or_else(|| Error::Bug(format!("no chunk {position} in the assembly")))?;
        self.out
            .write_all_at(raw, at)
            .map_err(|e| Error::io("write the assembled file", "the output", e))
    }

    /// The hashing thread: the file's bytes in order into SHA-256 and the
    /// model sniffer.
    fn hash_in_order(&self) -> Result<Hashed> {
        let mut sha = sha2::Sha256::new();
        let mut sniffer = Sniffer::new(Limits::default());
        for (i, (id, len)) in self.chunks.iter().enumerate() {
            let raw = if self.to_come.contains_key(id) {
                match self.wait_for(id)? {
                    Some(raw) => raw,
                    None => self.read_stored(id, *len)?,
                }
            } else {
                if lock(&self.state).abandoned {
                    return Err(self.abandoned());
                }
                let raw = self.read_stored(id, *len)?;
                self.write_at(&raw, i)?;
                self.wrote(&mut lock(&self.state), raw.len() as u64);
                raw
            };
            sha.update(&raw);
            sniffer.feed(&raw);
        }
        Ok(Hashed {
            sha256: Sha256(sha.finalize().into()),
            model: sniffer.finish(self.size),
        })
    }

    fn abandoned(&self) -> Error {
        // The caller dropped the assembly on an error of its own, which it
        // reports; this one surfacing instead would be a bug.
        Error::Bug(format!("the assembly of file {} was dropped", self.file))
    }

    /// Waits until chunk `id` has arrived: its bytes if they were held,
    /// `None` if it is to be read back from the store.
    fn wait_for(&self, id: &ChunkId) -> Result<Option<Bytes>> {
        let mut st = lock(&self.state);
        loop {
            if st.abandoned {
                return Err(self.abandoned());
            }
            if let Some((raw, uses)) = st.held.get_mut(id) {
                let raw = raw.clone();
                *uses = uses.saturating_sub(1);
                if *uses == 0 {
                    st.held.remove(id);
                    st.held_bytes = st.held_bytes.saturating_sub(raw.len() as u64);
                }
                st.waiting = None;
                return Ok(Some(raw));
            }
            if st.arrived.contains(id) {
                st.waiting = None;
                return Ok(None);
            }
            if st.closed {
                return Err(Error::Bug(format!(
                    "chunk {id} of file {} was never added to its assembly",
                    self.file
                )));
            }
            st.waiting = Some(*id);
            st = self.changed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// A chunk from the store, verified.
    fn read_stored(&self, id: &ChunkId, len: u32) -> Result<Bytes> {
        let loc = self
            .core
            .index
            .chunk(id)?
            .ok_or_else(|| self.reject(format!("its chunk {id} is not stored")))?;
        let raw = self.core.packs.read_chunk(&loc.pack, loc.index, id)?;
        if raw.len() != len as usize {
            return Err(self.reject(format!("its chunk {id} is {} bytes, not {len}", raw.len())));
        }
        Ok(raw)
    }

    /// Registers the file (its chunk list was checked against its id when
    /// the assembly began): every chunk must be stored.
    fn register(&self, hashed: Hashed, ref_names: &[&str]) -> Result<PutReport> {
        let core = &self.core;
        // GC must not delete a chunk this registration names before it is
        // committed (spec §10.5).
        let _gate = core.gate.shared();
        if core.index.has_file(&self.file)? {
            // Stored meanwhile (another pull): only the refs are new.
            let existing = layout(core, &self.file)?.recipe.clone();
            if existing.sha256 != hashed.sha256 {
                return Err(self.reject(format!(
                    "it is stored with sha256 {}, its content hashes to {}",
                    existing.sha256, hashed.sha256
                )));
            }
            return publish_one(core, existing, ref_names, None);
        }
        let locs = chunk_locations(core, &self.file, &self.chunks, &|r| self.reject(r))?;
        register_hashed(
            core,
            self.file,
            self.size,
            &self.chunks,
            &locs,
            hashed,
            Some(self.claimed),
            ref_names,
        )
    }
}
