//! Pack files: writing an open pack, sealing it, and reading sealed packs.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::{
    check_pack_header, pack_header, ChunkEntry, Compression, PackHeaderError, Trailer,
    CHUNK_HEADER_LEN, FORMAT_VERSION, MAX_CHUNK_LEN, PACK_HEADER_LEN, TABLE_ENTRY_LEN, TRAILER_LEN,
};
use crate::hash::{ChunkId, PackId, PackIdHasher};
use crate::storage::{ReadHandle, Storage, WriteHandle};

/// Relative path of a sealed pack: `packs/<first two hex>/<hex>.pack`.
pub fn pack_path(id: &PackId) -> String {
    crate::store::fanout("packs", &id.to_hex(), "pack")
}

/// A pack being written to a temp file.
pub(crate) struct OpenPack {
    pub(crate) tmp: String,
    handle: Box<dyn WriteHandle>,
    hasher: PackIdHasher,
    len: u64,
    pub(crate) entries: Vec<ChunkEntry>,
    /// The ids in `entries`, for dedup against the pack being written.
    ids: HashSet<ChunkId>,
    raw_bytes: u64,
}

impl OpenPack {
    /// Starts a pack at temp path `tmp` and writes its header.
    pub(crate) fn create(storage: &dyn Storage, tmp: String) -> Result<Self> {
        let handle = storage
            .create_new(&tmp)
            .map_err(|e| Error::io("create pack", storage.root().join(&tmp), e))?;
        let mut p = OpenPack {
            tmp,
            handle,
            hasher: PackIdHasher::new(),
            len: 0,
            entries: Vec::new(),
            ids: HashSet::new(),
            raw_bytes: 0,
        };
        p.write(storage, &pack_header())?;
        Ok(p)
    }

    fn write(&mut self, storage: &dyn Storage, b: &[u8]) -> Result<()> {
        self.handle
            .write_all(b)
            .map_err(|e| Error::io("write pack", storage.root().join(&self.tmp), e))?;
        self.hasher.update(b);
        self.len += b.len() as u64;
        Ok(())
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
        storage: &dyn Storage,
        id: ChunkId,
        raw_len: u32,
        compression: Compression,
        stored: &[u8],
    ) -> Result<u32> {
        let index = u32::try_from(self.entries.len())
            .map_err(|_| Error::InvalidArgument("too many chunks in one pack".into()))?;
        let stored_len = u32::try_from(stored.len())
            .map_err(|_| Error::InvalidArgument("chunk larger than 4 GiB".into()))?;
        let entry = ChunkEntry {
            id,
            offset: self.len,
            stored_len,
            raw_len,
            compression,
        };
        self.write(storage, &entry.encode_header())?;
        self.write(storage, stored)?;
        self.entries.push(entry);
        self.ids.insert(id);
        self.raw_bytes += u64::from(raw_len);
        Ok(index)
    }

    /// Whether the pack holds chunk `id`.
    pub(crate) fn contains(&self, id: &ChunkId) -> bool {
        self.ids.contains(id)
    }

    /// Writes the footer, fsyncs, renames to the content-addressed name and
    /// fsyncs the directory. Returns the pack id and its size.
    pub(crate) fn seal(mut self, storage: &dyn Storage) -> Result<SealedPack> {
        let table_offset = self.len;
        let mut table = Vec::with_capacity(self.entries.len() * TABLE_ENTRY_LEN);
        for e in &self.entries {
            e.encode_table_entry(&mut table);
        }
        let count = u32::try_from(self.entries.len())
            .map_err(|_| Error::InvalidArgument("too many chunks in one pack".into()))?;
        let trailer = Trailer::encode(table_offset, count, &table);
        self.write(storage, &table)?;
        self.write(storage, &trailer)?;
        let tmp_abs = storage.root().join(&self.tmp);
        self.handle
            .sync()
            .map_err(|e| Error::io("fsync pack", tmp_abs.clone(), e))?;
        let id = self.hasher.finish();
        let dest = pack_path(&id);
        storage
            .rename(&self.tmp, &dest)
            .map_err(|e| Error::io("rename pack", tmp_abs, e))?;
        let dir = format!("packs/{}", &id.to_hex()[..2]);
        storage
            .sync_dir(&dir)
            .map_err(|e| Error::io("fsync directory", storage.root().join(&dir), e))?;
        Ok(SealedPack {
            id,
            size: self.len,
            raw_bytes: self.raw_bytes,
            entries: self.entries,
        })
    }
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
    pub fn open(storage: &dyn Storage, id: PackId) -> Result<Self> {
        let rel = pack_path(&id);
        let handle = storage.open_read(&rel).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::PackMissing {
                    pack: id,
                    path: storage.root().join(&rel),
                }
            } else {
                Error::io("open pack", storage.root().join(&rel), e)
            }
        })?;
        Self::from_handle(id, handle, &storage.root().join(&rel))
    }

    /// Checks and wraps an already opened pack file.
    pub fn from_handle(
        id: PackId,
        handle: Arc<dyn ReadHandle>,
        path: &std::path::Path,
    ) -> Result<Self> {
        let len = handle.len();
        let io = |e| Error::io("read pack", path.to_path_buf(), e);
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

    /// Number of chunks.
    pub fn chunk_count(&self) -> u32 {
        self.count
    }

    /// Length of the pack file.
    pub fn file_len(&self) -> u64 {
        self.handle.len()
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

    /// Reads chunk `index`, decompresses it and checks it hashes to
    /// `expected`. Returns the raw bytes (zero-copy for uncompressed chunks
    /// of a mapped pack).
    pub fn read_chunk(&self, index: u32, expected: &ChunkId) -> Result<Bytes> {
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
        Ok(raw)
    }
}

/// Turns stored bytes into raw bytes, never allocating more than `raw_len`.
pub(crate) fn decode_chunk(
    stored: &Bytes,
    compression: Compression,
    raw_len: u32,
) -> std::result::Result<Bytes, String> {
    match compression {
        Compression::None => {
            if stored.len() != raw_len as usize {
                return Err(format!(
                    "stored length {} differs from raw length {raw_len}",
                    stored.len()
                ));
            }
            Ok(stored.clone())
        }
        Compression::Zstd => {
            let raw = zstd::bulk::decompress(stored, raw_len as usize)
                .map_err(|e| format!("zstd: {e}"))?;
            if raw.len() != raw_len as usize {
                return Err(format!(
                    "decompressed to {} bytes, expected {raw_len}",
                    raw.len()
                ));
            }
            Ok(Bytes::from(raw))
        }
    }
}

/// Compresses a chunk with zstd when that saves at least `min_savings` of its
/// size; re-decompresses and re-hashes the result before returning it, so a
/// compressor bug cannot store undecodable bytes.
pub(crate) fn encode_chunk(
    raw: &Bytes,
    id: &ChunkId,
    level: i32,
    min_savings: f64,
) -> Result<(Compression, Bytes)> {
    if level == 0 || raw.is_empty() {
        return Ok((Compression::None, raw.clone()));
    }
    let compressed = zstd::bulk::compress(raw, level).map_err(|e| {
        Error::InvalidArgument(format!("zstd compression of chunk {id} failed: {e}"))
    })?;
    let limit = (raw.len() as f64) * (1.0 - min_savings);
    if (compressed.len() as f64) > limit {
        return Ok((Compression::None, raw.clone()));
    }
    let compressed = Bytes::from(compressed);
    match decode_chunk(&compressed, Compression::Zstd, raw.len() as u32) {
        Ok(back) if ChunkId::of(&back) == *id => Ok((Compression::Zstd, compressed)),
        // The compressor produced something that does not round-trip: store raw.
        _ => {
            tracing::error!(chunk = %id, "zstd output failed re-verification; storing raw");
            Ok((Compression::None, raw.clone()))
        }
    }
}
