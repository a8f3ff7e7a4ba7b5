//! Packs: building one (chunk records appended to a staged object, published
//! under its content-addressed name when sealed), reading sealed ones, and
//! the cache of open packs readers share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::cache::Lru;
use crate::codec::decode_chunk;
use crate::error::{Error, Result};
use crate::format::{
    check_pack_header, pack_header, ChunkEntry, Compression, PackHeaderError, Trailer,
    CHUNK_HEADER_LEN, FORMAT_VERSION, MAX_CHUNK_LEN, PACK_HEADER_LEN, TABLE_ENTRY_LEN, TRAILER_LEN,
};
use crate::ids::{ChunkId, PackId, PackIdHasher};
use crate::paths::pack_key;
use crate::storage::{ObjectStore, PutMode, ReadHandle, StagedObject};

/// A pack being built: records are appended to a staged object, which is
/// published under the pack's id when the pack is sealed.
pub(crate) struct PackBuilder {
    staged: Box<dyn StagedObject>,
    hasher: PackIdHasher,
    len: u64,
    entries: Vec<ChunkEntry>,
    raw_bytes: u64,
}

impl PackBuilder {
    /// Starts a pack and writes its header.
    pub(crate) fn create(objects: &dyn ObjectStore) -> Result<Self> {
        let staged = objects
            .stage()
            .map_err(|e| Error::io("create pack", objects.location(), e))?;
        let mut p = PackBuilder {
            staged,
            hasher: PackIdHasher::new(),
            len: 0,
            entries: Vec::new(),
            raw_bytes: 0,
        };
        p.write(objects, &pack_header())?;
        Ok(p)
    }

    fn write(&mut self, objects: &dyn ObjectStore, b: &[u8]) -> Result<()> {
        self.staged
            .write_all(b)
            .map_err(|e| Error::io("write pack", objects.location(), e))?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
    }

    /// Whether the pack holds no chunk yet.
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size the pack would have if sealed after adding a record of `stored` bytes.
    pub(crate) fn sealed_len_with(&self, stored: usize) -> u64 {
        self.len
            + (CHUNK_HEADER_LEN + stored) as u64
            + ((self.entries.len() + 1) * TABLE_ENTRY_LEN + TRAILER_LEN) as u64
    }

    /// Appends one chunk record; returns its index in the pack.
    pub(crate) fn append(
        &mut self,
        objects: &dyn ObjectStore,
        id: ChunkId,
        raw_len: u32,
        compression: Compression,
        stored: &[u8],
    ) -> Result<u32> {
        let index = u32::try_from(self.entries.len())
            .map_err(|_| Error::Bug("more than 2^32 chunks in one pack".into()))?;
        let stored_len = u32::try_from(stored.len())
            .map_err(|_| Error::Bug(format!("chunk {id} larger than 4 GiB")))?;
        let entry = ChunkEntry {
            id,
            offset: self.len,
            stored_len,
            raw_len,
            compression,
        };
        self.write(objects, &entry.encode_header())?;
        self.write(objects, stored)?;
        self.entries.push(entry);
        self.raw_bytes += u64::from(raw_len);
        Ok(index)
    }

    /// The ids of the chunks appended so far, in order.
    pub(crate) fn chunk_ids(&self) -> Vec<ChunkId> {
        self.entries.iter().map(|e| e.id).collect()
    }

    /// Writes the footer and publishes the pack under its content-addressed
    /// name, durably (spec §6.5).
    pub(crate) fn seal(self, objects: &dyn ObjectStore) -> Result<SealedPack> {
        self.seal_over(objects, None)
    }

    /// [`PackBuilder::seal`], replacing the object of pack `damaged` if this
    /// pack turns out to be the same pack (salvage rebuilt it exactly).
    pub(crate) fn seal_over(
        mut self,
        objects: &dyn ObjectStore,
        damaged: Option<PackId>,
    ) -> Result<SealedPack> {
        let footer = footer(&self.entries, self.len)?;
        self.write(objects, &footer)?;
        let id = self.hasher.finish();
        let key = pack_key(&id);
        let mode = if damaged == Some(id) {
            PutMode::Replace
        } else {
            PutMode::Create
        };
        match self.staged.publish(&key, mode) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => the_same_pack(objects, &id)?,
            Err(e) => return Err(Error::io("publish pack", objects.describe(&key), e)),
        }
        Ok(SealedPack {
            id,
            size: self.len,
            raw_bytes: self.raw_bytes,
            entries: self.entries,
        })
    }
}

/// The footer of a pack whose data region ends at `table_offset`: the chunk
/// table and the trailer (spec §6.3, §6.4).
fn footer(entries: &[ChunkEntry], table_offset: u64) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(entries.len() * TABLE_ENTRY_LEN + TRAILER_LEN);
    for e in entries {
        e.encode_table_entry(&mut out);
    }
    let count = u32::try_from(entries.len())
        .map_err(|_| Error::Bug("more than 2^32 chunks in one pack".into()))?;
    let trailer = Trailer::encode(table_offset, count, &out);
    out.extend_from_slice(&trailer);
    Ok(out)
}

/// A whole pack in memory, from already encoded chunks (id, raw length,
/// compression, stored bytes): what a client uploads. Returns its id.
pub(crate) fn encode_pack(
    chunks: &[(ChunkId, u32, Compression, Bytes)],
) -> Result<(PackId, Vec<u8>)> {
    let mut out = pack_header().to_vec();
    let mut entries = Vec::with_capacity(chunks.len());
    for (id, raw_len, compression, stored) in chunks {
        let e = ChunkEntry {
            id: *id,
            offset: out.len() as u64,
            stored_len: u32::try_from(stored.len())
                .map_err(|_| Error::Bug(format!("chunk {id} larger than 4 GiB")))?,
            raw_len: *raw_len,
            compression: *compression,
        };
        out.extend_from_slice(&e.encode_header());
        out.extend_from_slice(stored);
        entries.push(e);
    }
    let table_offset = out.len() as u64;
    out.extend_from_slice(&footer(&entries, table_offset)?);
    let mut h = PackIdHasher::new();
    h.update(&out);
    Ok((h.finish(), out))
}

/// The result of sealing a pack.
pub(crate) struct SealedPack {
    pub(crate) id: PackId,
    pub(crate) size: u64,
    pub(crate) raw_bytes: u64,
    pub(crate) entries: Vec<ChunkEntry>,
}

/// A sealed pack opened for reading, its footer checked.
pub struct PackReader {
    id: PackId,
    handle: Arc<dyn ReadHandle>,
    table: Bytes,
    count: u32,
    table_offset: u64,
}

impl std::fmt::Debug for PackReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackReader")
            .field("id", &self.id)
            .field("count", &self.count)
            .finish()
    }
}

impl PackReader {
    /// Opens pack `id` and checks its header, trailer and chunk-table checksum.
    pub fn open(objects: &dyn ObjectStore, id: PackId) -> Result<Self> {
        let key = pack_key(&id);
        let handle = objects.open(&key).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::PackMissing {
                    pack: id,
                    object: objects.describe(&key),
                }
            } else {
                Error::io("open pack", objects.describe(&key), e)
            }
        })?;
        Self::from_handle(id, handle, &objects.describe(&key))
    }

    /// Checks and wraps an already opened pack (`object` names it in errors).
    pub fn from_handle(id: PackId, handle: Arc<dyn ReadHandle>, object: &str) -> Result<Self> {
        let len = handle.len();
        let io = |e| Error::io("read pack", object, e);
        let corrupt = |detail: String| Error::PackCorrupt { pack: id, detail };
        if len < PACK_HEADER_LEN as u64 {
            return Err(Error::PackTruncated {
                pack: id,
                len,
                detail: "shorter than the pack header".into(),
            });
        }
        match check_pack_header(&handle.read_at(0, PACK_HEADER_LEN).map_err(io)?) {
            Ok(()) => {}
            Err(PackHeaderError::Magic) => return Err(corrupt("bad header magic".into())),
            Err(PackHeaderError::Version(v)) => {
                return Err(Error::UnsupportedVersion {
                    object: format!("pack {id}"),
                    found: v,
                    supported: FORMAT_VERSION,
                })
            }
        }
        if len < (PACK_HEADER_LEN + TRAILER_LEN) as u64 {
            return Err(Error::PackTruncated {
                pack: id,
                len,
                detail: "no room for the trailer".into(),
            });
        }
        let tbytes = handle
            .read_at(len - TRAILER_LEN as u64, TRAILER_LEN)
            .map_err(io)?;
        let trailer = Trailer::decode(&tbytes).map_err(|detail| Error::PackTruncated {
            pack: id,
            len,
            detail: format!("{detail}; the pack was cut short or never sealed"),
        })?;
        let table_len = u64::from(trailer.chunk_count) * TABLE_ENTRY_LEN as u64;
        let expect_len = trailer
            .table_offset
            .checked_add(table_len)
            .and_then(|x| x.checked_add(TRAILER_LEN as u64));
        if trailer.table_offset < PACK_HEADER_LEN as u64 || expect_len != Some(len) {
            return Err(corrupt(format!(
                "trailer says table at {} with {} entries, which does not fit a {len}-byte pack",
                trailer.table_offset, trailer.chunk_count
            )));
        }
        let table = handle
            .read_at(trailer.table_offset, table_len as usize)
            .map_err(io)?;
        if !trailer.verify(&table, &tbytes) {
            return Err(corrupt("chunk table checksum mismatch".into()));
        }
        Ok(PackReader {
            id,
            handle,
            table,
            count: trailer.chunk_count,
            table_offset: trailer.table_offset,
        })
    }

    /// The pack id.
    pub fn id(&self) -> PackId {
        self.id
    }

    /// Offset of the chunk table (the end of the data region).
    pub fn table_offset(&self) -> u64 {
        self.table_offset
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.count
    }

    /// Length of the pack.
    pub fn file_len(&self) -> u64 {
        self.handle.len()
    }

    /// Drops the pack's pages this reader brought into memory (a mapped
    /// pack); they are read again if needed. For a pass over many packs
    /// that keeps their readers (`verify`), so memory stays bounded.
    pub(crate) fn release_pages(&self) {
        self.handle.release(0, self.handle.len());
    }

    /// Chunk-table entry `index`, bounds-checked against the data region.
    pub fn entry(&self, index: u32) -> Result<ChunkEntry> {
        let corrupt = |detail: String| Error::PackCorrupt {
            pack: self.id,
            detail,
        };
        if index >= self.count {
            return Err(corrupt(format!(
                "chunk index {index} out of range ({} chunks)",
                self.count
            )));
        }
        let start = index as usize * TABLE_ENTRY_LEN;
        let raw = self
            .table
            .get(start..start + TABLE_ENTRY_LEN)
            .ok_or_else(|| corrupt(format!("table entry {index} out of range")))?;
        let e = ChunkEntry::decode_table_entry(raw)
            .map_err(|d| corrupt(format!("table entry {index}: {d}")))?;
        if e.raw_len > MAX_CHUNK_LEN {
            return Err(corrupt(format!(
                "table entry {index} claims a {}-byte chunk (limit {MAX_CHUNK_LEN})",
                e.raw_len
            )));
        }
        let end = e.offset.checked_add(e.record_len());
        if e.offset < PACK_HEADER_LEN as u64 || end.is_none_or(|end| end > self.table_offset) {
            return Err(corrupt(format!(
                "table entry {index} points outside the data region"
            )));
        }
        Ok(e)
    }

    /// Reads chunk `index`, decodes it and checks it hashes to `expected`.
    /// Returns the raw bytes (zero-copy for uncompressed chunks of a mapped
    /// pack).
    pub fn read_chunk(&self, index: u32, expected: &ChunkId) -> Result<Bytes> {
        self.read_record(index, expected).map(|(_, _, raw)| raw)
    }

    /// [`PackReader::read_chunk`], also returning the table entry and the
    /// stored (encoded) bytes it verified.
    pub(crate) fn read_record(
        &self,
        index: u32,
        expected: &ChunkId,
    ) -> Result<(ChunkEntry, Bytes, Bytes)> {
        let e = self.entry(index)?;
        let bad = |detail: String| Error::ChunkCorrupt {
            pack: self.id,
            offset: e.offset,
            chunk: *expected,
            detail,
        };
        if e.id != *expected {
            return Err(bad(format!(
                "chunk table entry {index} names chunk {} instead",
                e.id
            )));
        }
        let io = |err| bad(format!("read failed: {err}"));
        let h = self
            .handle
            .read_at(e.offset, CHUNK_HEADER_LEN)
            .map_err(io)?;
        let hdr = ChunkEntry::decode_header(&h, e.offset)
            .map_err(|d| bad(format!("record header: {d}")))?;
        if hdr != e {
            return Err(bad("record header disagrees with the chunk table".into()));
        }
        let stored = self
            .handle
            .read_at(e.data_offset(), e.stored_len as usize)
            .map_err(io)?;
        let raw = decode_chunk(&stored, e.compression, e.raw_len).map_err(bad)?;
        if ChunkId::of(&raw) != *expected {
            return Err(bad("content does not hash to the chunk id".into()));
        }
        Ok((e, stored, raw))
    }
}

impl PackReader {
    /// The stored (encoded) bytes of chunk `index`, unverified: callers
    /// verify them (see [`PackReader::read_chunk`]).
    pub(crate) fn read_stored(&self, index: u32) -> Result<Bytes> {
        let e = self.entry(index)?;
        self.handle
            .read_at(e.data_offset(), e.stored_len as usize)
            .map_err(|err| Error::ChunkCorrupt {
                pack: self.id,
                offset: e.offset,
                chunk: e.id,
                detail: format!("read failed: {err}"),
            })
    }
}

/// For a create-only publish of pack `id` that found an object of its name
/// there: Ok when that object is the pack (the same chunks in the same order
/// build the same bytes, §6.5), [`Error::PackNameTaken`] when it hashes to
/// anything else — a damaged or misplaced object, never taken for the pack
/// (its chunks would be indexed where they are not). Reads the object whole;
/// a publish meets an existing pack rarely.
pub(crate) fn the_same_pack(objects: &dyn ObjectStore, id: &PackId) -> Result<()> {
    check_pack_name(objects, id)
        .map(|_| ())
        .map_err(|detail| Error::PackNameTaken {
            pack: *id,
            object: objects.describe(&pack_key(id)),
            detail,
        })
}

/// Hashes a whole pack in 1 MiB pieces and compares it with its name;
/// returns its length.
pub(crate) fn check_pack_name(
    objects: &dyn ObjectStore,
    id: &PackId,
) -> std::result::Result<u64, String> {
    let h = objects
        .open(&pack_key(id))
        .map_err(|e| format!("open: {e}"))?;
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

/// Open, checked packs shared by a store's readers: at most `capacity` are
/// kept (least recently used out), so a store with thousands of packs keeps
/// a bounded number mapped.
pub(crate) struct PackCache {
    objects: Arc<dyn ObjectStore>,
    open: Mutex<Lru<PackId, Arc<PackReader>>>,
    /// Packs being opened: readers that want the same pack wait for the
    /// one open instead of each reading its footer (on object storage,
    /// each open is a request).
    opening: Mutex<HashMap<PackId, Arc<Mutex<()>>>>,
}

impl PackCache {
    pub(crate) fn new(objects: Arc<dyn ObjectStore>, capacity: usize) -> Self {
        PackCache {
            objects,
            open: Mutex::new(Lru::new(capacity)),
            opening: Mutex::new(HashMap::new()),
        }
    }

    /// An open, checked pack.
    pub(crate) fn get(&self, id: &PackId) -> Result<Arc<PackReader>> {
        use crate::cache::lock;
        if let Some(p) = lock(&self.open).get(id) {
            return Ok(p);
        }
        let turn = lock(&self.opening)
            .entry(*id)
            .or_insert_with(|| Arc::new(Mutex::new(())))
            .clone();
        let _mine = lock(&turn);
        // Opened meanwhile by the reader we waited for.
        if let Some(p) = lock(&self.open).get(id) {
            return Ok(p);
        }
        let opened = PackReader::open(self.objects.as_ref(), *id).map(Arc::new);
        if let Ok(p) = &opened {
            lock(&self.open).insert(*id, p.clone());
        }
        lock(&self.opening).remove(id);
        opened
    }

    /// Forgets an open pack (deleted by GC or repack): its mapping is
    /// released once no reader holds it.
    pub(crate) fn forget(&self, id: &PackId) {
        crate::cache::lock(&self.open).remove(id);
    }

    /// Reads and verifies chunk `index` of pack `pack`, expected to be `id`.
    pub(crate) fn read_chunk(&self, pack: &PackId, index: u32, id: &ChunkId) -> Result<Bytes> {
        self.get(pack)?.read_chunk(index, id)
    }

    /// Where chunk `index`'s record is in an open pack: (offset, length).
    pub(crate) fn record_span(&self, pack: &PackId, index: u32) -> Option<(u64, u64)> {
        let reader = crate::cache::lock(&self.open).get(pack)?;
        let e = reader.entry(index).ok()?;
        Some((e.offset, e.record_len()))
    }

    /// Tells an open pack that a sequential reader is done with `len` bytes
    /// at `offset` (a mapped pack drops those pages from the resident set).
    /// Best effort: nothing happens for a pack not open.
    pub(crate) fn release(&self, pack: &PackId, offset: u64, len: u64) {
        let reader = crate::cache::lock(&self.open).get(pack);
        if let Some(r) = reader {
            r.handle.release(offset, len);
        }
    }
}
