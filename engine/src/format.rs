//! The on-disk formats: store config, pack file and recipe file.
//!
//! These types *are* the format described in `format-spec/SPEC.md`. Every
//! integer is fixed-width little-endian. Decoders never trust a length field
//! before checking it against the bytes actually present, and never panic.

use crate::chunking::ChunkParams;
use crate::hash::{check32, checksum, ChunkId, FileId, FileIdHasher, PackId, Sha256};

/// Version of the store layout and of every format below.
pub const FORMAT_VERSION: u32 = 1;

/// A little-endian cursor over untrusted bytes; every read is bounds-checked.
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Cursor { buf, pos: 0 }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }
    pub(crate) fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N).and_then(|s| <[u8; N]>::try_from(s).ok())
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.array::<1>().map(|a| a[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.array().map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.array().map(u64::from_le_bytes)
    }
}

// ---------------------------------------------------------------- config

/// Magic of the store config file `tessera.store`.
pub const CONFIG_MAGIC: [u8; 8] = *b"TSRSTORE";
/// Size of the config file.
pub const CONFIG_LEN: usize = 64;
/// Chunker algorithm code for FastCDC v2020.
pub const CHUNKER_FASTCDC_2020: u32 = 1;

/// The decoded store config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// The format version the store was written with.
    pub version: u32,
    /// The chunking parameters, fixed for the store's life.
    pub chunking: ChunkParams,
}

/// Why a config could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// Structurally damaged.
    Corrupt(String),
    /// Intact, but from a version this build does not read.
    Version(u32),
}

impl StoreConfig {
    /// Encodes the 64-byte config file.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(CONFIG_LEN);
        b.extend_from_slice(&CONFIG_MAGIC);
        b.extend_from_slice(&self.version.to_le_bytes());
        b.extend_from_slice(&CHUNKER_FASTCDC_2020.to_le_bytes());
        b.extend_from_slice(&self.chunking.min.to_le_bytes());
        b.extend_from_slice(&self.chunking.avg.to_le_bytes());
        b.extend_from_slice(&self.chunking.max.to_le_bytes());
        b.extend_from_slice(&self.chunking.normalization.to_le_bytes());
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Decodes and checks a config file.
    pub fn decode(b: &[u8]) -> Result<Self, ConfigError> {
        let bad = |s: &str| ConfigError::Corrupt(s.to_string());
        if b.len() != CONFIG_LEN {
            return Err(ConfigError::Corrupt(format!(
                "length {} (expected {CONFIG_LEN})",
                b.len()
            )));
        }
        let mut c = Cursor::new(b);
        if c.array::<8>() != Some(CONFIG_MAGIC) {
            return Err(bad("bad magic (not a tessera store config)"));
        }
        let body = b.get(..32).ok_or_else(|| bad("short"))?;
        let sum = b.get(32..).ok_or_else(|| bad("short"))?;
        if checksum(body) != sum {
            return Err(bad("checksum mismatch"));
        }
        let version = c.u32().ok_or_else(|| bad("short"))?;
        if version != FORMAT_VERSION {
            return Err(ConfigError::Version(version));
        }
        let algo = c.u32().ok_or_else(|| bad("short"))?;
        if algo != CHUNKER_FASTCDC_2020 {
            return Err(ConfigError::Corrupt(format!("unknown chunker code {algo}")));
        }
        let chunking = ChunkParams {
            min: c.u32().ok_or_else(|| bad("short"))?,
            avg: c.u32().ok_or_else(|| bad("short"))?,
            max: c.u32().ok_or_else(|| bad("short"))?,
            normalization: c.u32().ok_or_else(|| bad("short"))?,
        };
        chunking
            .validate()
            .map_err(|e| ConfigError::Corrupt(e.to_string()))?;
        Ok(StoreConfig { version, chunking })
    }
}

// ---------------------------------------------------------------- pack

/// Magic at the start of every pack.
pub const PACK_MAGIC: [u8; 8] = *b"TSRPACK\0";
/// Magic at the very end of every sealed pack.
pub const PACK_END_MAGIC: [u8; 8] = *b"TSRPEND\0";
/// Pack header: magic, version, reserved.
pub const PACK_HEADER_LEN: usize = 16;
/// Magic of a chunk record header.
pub const CHUNK_MAGIC: [u8; 4] = *b"TCHK";
/// Chunk record header length.
pub const CHUNK_HEADER_LEN: usize = 52;
/// One chunk-table entry in the footer.
pub const TABLE_ENTRY_LEN: usize = 56;
/// Pack trailer (the last bytes of a pack).
pub const TRAILER_LEN: usize = 56;
/// Largest raw chunk length any valid store can hold (FastCDC's maximum
/// `max`); larger lengths in a pack are corruption, and readers never
/// allocate by them.
pub const MAX_CHUNK_LEN: u32 = 16 * 1024 * 1024;

/// How a chunk's bytes are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Compression {
    /// Stored as is.
    None = 0,
    /// One zstd frame.
    Zstd = 1,
}

impl Compression {
    /// Decodes the one-byte code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            _ => None,
        }
    }
    /// A short name for output.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
        }
    }
}

/// The pack header bytes for the current version.
pub fn pack_header() -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..8].copy_from_slice(&PACK_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h
}

/// Checks a pack header; returns the version found on mismatch.
pub fn check_pack_header(h: &[u8]) -> Result<(), PackHeaderError> {
    let mut c = Cursor::new(h);
    if c.array::<8>() != Some(PACK_MAGIC) {
        return Err(PackHeaderError::Magic);
    }
    match c.u32() {
        Some(FORMAT_VERSION) => Ok(()),
        Some(v) => Err(PackHeaderError::Version(v)),
        None => Err(PackHeaderError::Magic),
    }
}

/// Why a pack header was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum PackHeaderError {
    /// Not a pack.
    Magic,
    /// A pack of another format version.
    Version(u32),
}

/// The description of one stored chunk: in its record header and, with its
/// offset, in the footer's chunk table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkEntry {
    /// The chunk id (BLAKE3 of the raw bytes).
    pub id: ChunkId,
    /// Offset of the chunk record (its header) from the start of the pack.
    pub offset: u64,
    /// Length of the stored (possibly compressed) bytes.
    pub stored_len: u32,
    /// Length of the raw chunk.
    pub raw_len: u32,
    /// How the bytes are stored.
    pub compression: Compression,
}

impl ChunkEntry {
    /// Offset of the stored bytes (just past the record header).
    pub fn data_offset(&self) -> u64 {
        self.offset + CHUNK_HEADER_LEN as u64
    }
    /// Total record length (header + stored bytes).
    pub fn record_len(&self) -> u64 {
        CHUNK_HEADER_LEN as u64 + u64::from(self.stored_len)
    }

    /// Encodes the 52-byte record header.
    pub fn encode_header(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut h = [0u8; CHUNK_HEADER_LEN];
        h[0..4].copy_from_slice(&CHUNK_MAGIC);
        h[4] = self.compression as u8;
        h[8..12].copy_from_slice(&self.raw_len.to_le_bytes());
        h[12..16].copy_from_slice(&self.stored_len.to_le_bytes());
        h[16..48].copy_from_slice(&self.id.0);
        let check = check32(&h[..48]);
        h[48..52].copy_from_slice(&check.to_le_bytes());
        h
    }

    /// Decodes a record header found at `offset`.
    pub fn decode_header(h: &[u8], offset: u64) -> Result<ChunkEntry, String> {
        let body = h.get(..48).ok_or("chunk header truncated")?;
        let mut c = Cursor::new(h);
        if c.array::<4>() != Some(CHUNK_MAGIC) {
            return Err("bad chunk header magic".into());
        }
        let code = c.u8().ok_or("chunk header truncated")?;
        let _reserved = c.array::<3>();
        let raw_len = c.u32().ok_or("chunk header truncated")?;
        let stored_len = c.u32().ok_or("chunk header truncated")?;
        let id = ChunkId(c.array::<32>().ok_or("chunk header truncated")?);
        let check = c.u32().ok_or("chunk header truncated")?;
        if check != check32(body) {
            return Err("chunk header check value mismatch".into());
        }
        let compression =
            Compression::from_code(code).ok_or_else(|| format!("unknown compression {code}"))?;
        Ok(ChunkEntry {
            id,
            offset,
            stored_len,
            raw_len,
            compression,
        })
    }

    /// Encodes the 56-byte chunk-table entry.
    pub fn encode_table_entry(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.id.0);
        out.extend_from_slice(&self.offset.to_le_bytes());
        out.extend_from_slice(&self.stored_len.to_le_bytes());
        out.extend_from_slice(&self.raw_len.to_le_bytes());
        out.push(self.compression as u8);
        out.extend_from_slice(&[0u8; 7]);
    }

    /// Decodes one chunk-table entry (exactly 56 bytes).
    pub fn decode_table_entry(b: &[u8]) -> Result<ChunkEntry, String> {
        let mut c = Cursor::new(b);
        let short = || "table entry truncated".to_string();
        let id = ChunkId(c.array::<32>().ok_or_else(short)?);
        let offset = c.u64().ok_or_else(short)?;
        let stored_len = c.u32().ok_or_else(short)?;
        let raw_len = c.u32().ok_or_else(short)?;
        let code = c.u8().ok_or_else(short)?;
        let compression =
            Compression::from_code(code).ok_or_else(|| format!("unknown compression {code}"))?;
        Ok(ChunkEntry {
            id,
            offset,
            stored_len,
            raw_len,
            compression,
        })
    }
}

/// The fixed trailer at the end of a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trailer {
    /// Offset of the chunk table.
    pub table_offset: u64,
    /// Number of chunk-table entries.
    pub chunk_count: u32,
    /// BLAKE3 of (table bytes ‖ first 16 trailer bytes).
    pub checksum: [u8; 32],
}

impl Trailer {
    /// Encodes the trailer for `table`, computing its checksum.
    pub fn encode(table_offset: u64, chunk_count: u32, table: &[u8]) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(&table_offset.to_le_bytes());
        t[8..12].copy_from_slice(&chunk_count.to_le_bytes());
        let sum = Self::compute_checksum(table, &t[..16]);
        t[16..48].copy_from_slice(&sum);
        t[48..56].copy_from_slice(&PACK_END_MAGIC);
        t
    }

    fn compute_checksum(table: &[u8], head: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new();
        h.update(table);
        h.update(head);
        *h.finalize().as_bytes()
    }

    /// Decodes a trailer (without checking its checksum against the table).
    pub fn decode(t: &[u8]) -> Result<Trailer, String> {
        let mut c = Cursor::new(t);
        let short = || "trailer truncated".to_string();
        let table_offset = c.u64().ok_or_else(short)?;
        let chunk_count = c.u32().ok_or_else(short)?;
        let _reserved = c.u32().ok_or_else(short)?;
        let checksum = c.array::<32>().ok_or_else(short)?;
        if c.array::<8>() != Some(PACK_END_MAGIC) {
            return Err("bad trailer magic (pack not sealed or truncated)".into());
        }
        Ok(Trailer {
            table_offset,
            chunk_count,
            checksum,
        })
    }

    /// Checks the checksum over `table` and this trailer's encoded head.
    pub fn verify(&self, table: &[u8], trailer_bytes: &[u8]) -> bool {
        match trailer_bytes.get(..16) {
            Some(head) => Self::compute_checksum(table, head) == self.checksum,
            None => false,
        }
    }
}

// ---------------------------------------------------------------- recipe

/// Magic of a recipe.
pub const RECIPE_MAGIC: [u8; 8] = *b"TSRRECIP";
/// Recipe header length.
pub const RECIPE_HEADER_LEN: usize = 72;
/// One recipe term.
pub const TERM_LEN: usize = 48;
/// One recipe chunk-list entry.
pub const RECIPE_CHUNK_LEN: usize = 36;

/// A run of consecutive chunks of one pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// The pack holding the chunks.
    pub pack: PackId,
    /// Index of the first chunk in the pack's chunk table.
    pub first_chunk: u32,
    /// Number of consecutive chunks.
    pub chunk_count: u32,
    /// Sum of the raw lengths of those chunks.
    pub unpacked_len: u64,
}

/// A file reconstruction: its terms plus its ordered chunk list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recipe {
    /// The file id (derived from `chunks`).
    pub file: FileId,
    /// SHA-256 of the whole content.
    pub sha256: Sha256,
    /// Total length in bytes.
    pub size: u64,
    /// Where the chunks are.
    pub terms: Vec<Term>,
    /// Every chunk, in order: id and raw length.
    pub chunks: Vec<(ChunkId, u32)>,
}

impl Recipe {
    /// Encodes the recipe (the exact bytes of a recipe file and of the
    /// `files` index value).
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(
            RECIPE_HEADER_LEN
                + self.terms.len() * TERM_LEN
                + self.chunks.len() * RECIPE_CHUNK_LEN
                + 32,
        );
        b.extend_from_slice(&RECIPE_MAGIC);
        b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&(self.terms.len() as u64).to_le_bytes());
        b.extend_from_slice(&(self.chunks.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.sha256.0);
        for t in &self.terms {
            b.extend_from_slice(&t.pack.0);
            b.extend_from_slice(&t.first_chunk.to_le_bytes());
            b.extend_from_slice(&t.chunk_count.to_le_bytes());
            b.extend_from_slice(&t.unpacked_len.to_le_bytes());
        }
        for (id, len) in &self.chunks {
            b.extend_from_slice(&id.0);
            b.extend_from_slice(&len.to_le_bytes());
        }
        let sum = checksum(&b);
        b.extend_from_slice(&sum);
        b
    }

    /// Decodes and fully checks a recipe claimed to be that of `file`: the
    /// checksum, the counts against the length, term/chunk consistency, the
    /// total size, and that the chunk list hashes to `file`.
    pub fn decode(file: FileId, b: &[u8]) -> Result<Recipe, RecipeError> {
        let corrupt = |s: String| RecipeError::Corrupt(s);
        if b.len() < RECIPE_HEADER_LEN + 32 {
            return Err(corrupt(format!(
                "{} bytes is shorter than a recipe",
                b.len()
            )));
        }
        let mut c = Cursor::new(b);
        if c.array::<8>() != Some(RECIPE_MAGIC) {
            return Err(corrupt("bad magic (not a recipe)".into()));
        }
        let version = c.u32().unwrap_or(0);
        let (body, sum) = b.split_at(b.len() - 32);
        if checksum(body) != sum {
            return Err(corrupt("checksum mismatch".into()));
        }
        if version != FORMAT_VERSION {
            return Err(RecipeError::Version(version));
        }
        let short = || corrupt("header truncated".into());
        let _reserved = c.u32().ok_or_else(short)?;
        let size = c.u64().ok_or_else(short)?;
        let term_count = c.u64().ok_or_else(short)?;
        let chunk_count = c.u64().ok_or_else(short)?;
        let sha256 = Sha256(c.array::<32>().ok_or_else(short)?);
        // Check the counts against the bytes present before allocating.
        let expect = (term_count as u128) * TERM_LEN as u128
            + (chunk_count as u128) * RECIPE_CHUNK_LEN as u128
            + (RECIPE_HEADER_LEN + 32) as u128;
        if expect != b.len() as u128 {
            return Err(corrupt(format!(
                "{term_count} terms and {chunk_count} chunks need {expect} bytes, found {}",
                b.len()
            )));
        }
        let mut terms = Vec::with_capacity(term_count as usize);
        for _ in 0..term_count {
            let pack = PackId(c.array::<32>().ok_or_else(short)?);
            let first_chunk = c.u32().ok_or_else(short)?;
            let n = c.u32().ok_or_else(short)?;
            let unpacked_len = c.u64().ok_or_else(short)?;
            terms.push(Term {
                pack,
                first_chunk,
                chunk_count: n,
                unpacked_len,
            });
        }
        let mut chunks = Vec::with_capacity(chunk_count as usize);
        let mut fid = FileIdHasher::new();
        for _ in 0..chunk_count {
            let id = ChunkId(c.array::<32>().ok_or_else(short)?);
            let len = c.u32().ok_or_else(short)?;
            fid.push(&id, u64::from(len));
            chunks.push((id, len));
        }
        if fid.finish() != file {
            return Err(corrupt(format!(
                "chunk list hashes to {}, not to the file id",
                fid.finish()
            )));
        }
        // Terms must cover the chunk list exactly, with matching lengths.
        let mut next = 0usize;
        for (i, t) in terms.iter().enumerate() {
            if t.chunk_count == 0 {
                return Err(corrupt(format!("term {i} is empty")));
            }
            let end = next + t.chunk_count as usize;
            let lens = chunks
                .get(next..end)
                .ok_or_else(|| corrupt(format!("term {i} runs past the chunk list")))?;
            let sum: u64 = lens.iter().map(|(_, l)| u64::from(*l)).sum();
            if sum != t.unpacked_len {
                return Err(corrupt(format!(
                    "term {i} claims {} bytes, its chunks hold {sum}",
                    t.unpacked_len
                )));
            }
            next = end;
        }
        if next != chunks.len() {
            return Err(corrupt(format!(
                "terms cover {next} of {} chunks",
                chunks.len()
            )));
        }
        let total: u64 = chunks.iter().map(|(_, l)| u64::from(*l)).sum();
        if total != size {
            return Err(corrupt(format!(
                "chunks hold {total} bytes, header says {size}"
            )));
        }
        Ok(Recipe {
            file,
            sha256,
            size,
            terms,
            chunks,
        })
    }
}

/// Why a recipe was rejected.
#[derive(Debug, PartialEq, Eq)]
pub enum RecipeError {
    /// Damaged or inconsistent.
    Corrupt(String),
    /// Intact, but of another format version.
    Version(u32),
}

// ---------------------------------------------------------------- ref file

/// Magic of a ref file.
pub const REF_MAGIC: [u8; 8] = *b"TSRREF\0\0";
/// Longest accepted ref name, in bytes.
pub const MAX_REF_LEN: usize = 4096;

/// Encodes a ref file: name → file id.
pub fn encode_ref(name: &str, file: &FileId) -> Vec<u8> {
    let mut b = Vec::with_capacity(48 + 32 + name.len());
    b.extend_from_slice(&REF_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&(name.len() as u32).to_le_bytes());
    b.extend_from_slice(&file.0);
    b.extend_from_slice(name.as_bytes());
    let sum = checksum(&b);
    b.extend_from_slice(&sum);
    b
}

/// Decodes a ref file.
pub fn decode_ref(b: &[u8]) -> Result<(String, FileId), String> {
    if b.len() < 48 + 32 {
        return Err(format!("{} bytes is shorter than a ref file", b.len()));
    }
    let (body, sum) = b.split_at(b.len() - 32);
    let mut c = Cursor::new(body);
    if c.array::<8>() != Some(REF_MAGIC) {
        return Err("bad magic (not a ref file)".into());
    }
    if checksum(body) != sum {
        return Err("checksum mismatch".into());
    }
    let version = c.u32().ok_or("truncated")?;
    if version != FORMAT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let len = c.u32().ok_or("truncated")? as usize;
    let file = FileId(c.array::<32>().ok_or("truncated")?);
    if len > MAX_REF_LEN || body.len() != 48 + len {
        return Err(format!("name length {len} does not match the file"));
    }
    let name = std::str::from_utf8(c.take(len).ok_or("truncated")?)
        .map_err(|_| "name is not UTF-8".to_string())?;
    Ok((name.to_string(), file))
}

// ---------------------------------------------------------------- clean record

/// Magic of the clean-close record.
pub const CLEAN_MAGIC: [u8; 8] = *b"TSRCLEAN";
/// Length of the clean-close record.
pub const CLEAN_LEN: usize = 16 + 8 * 8 + 32;

/// Encodes the clean-close record: the index's seven counters (files, refs,
/// chunks, packs, logical bytes, stored bytes, chunk bytes) and its write
/// generation when the store was last closed cleanly.
pub fn encode_clean(counters: &[u64; 8]) -> Vec<u8> {
    let mut b = Vec::with_capacity(CLEAN_LEN);
    b.extend_from_slice(&CLEAN_MAGIC);
    b.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    for c in counters {
        b.extend_from_slice(&c.to_le_bytes());
    }
    let sum = checksum(&b);
    b.extend_from_slice(&sum);
    b
}

/// Decodes the clean-close record.
pub fn decode_clean(b: &[u8]) -> Result<[u64; 8], String> {
    if b.len() != CLEAN_LEN {
        return Err(format!("length {} (expected {CLEAN_LEN})", b.len()));
    }
    let (body, sum) = b.split_at(CLEAN_LEN - 32);
    let mut c = Cursor::new(body);
    if c.array::<8>() != Some(CLEAN_MAGIC) {
        return Err("bad magic (not a clean-close record)".into());
    }
    if checksum(body) != sum {
        return Err("checksum mismatch".into());
    }
    let version = c.u32().ok_or("truncated")?;
    if version != FORMAT_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let _reserved = c.u32().ok_or("truncated")?;
    let mut out = [0u64; 8];
    for slot in &mut out {
        *slot = c.u64().ok_or("truncated")?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trip_and_version_check() {
        let cfg = StoreConfig {
            version: FORMAT_VERSION,
            chunking: ChunkParams::default(),
        };
        let b = cfg.encode();
        assert_eq!(b.len(), CONFIG_LEN);
        assert_eq!(StoreConfig::decode(&b), Ok(cfg));
        let future = StoreConfig { version: 99, ..cfg };
        assert_eq!(
            StoreConfig::decode(&future.encode()),
            Err(ConfigError::Version(99))
        );
        let mut flipped = b.clone();
        flipped[20] ^= 1;
        assert!(matches!(
            StoreConfig::decode(&flipped),
            Err(ConfigError::Corrupt(_))
        ));
    }

    #[test]
    fn chunk_header_round_trip_and_check() {
        let e = ChunkEntry {
            id: ChunkId::of(b"x"),
            offset: 16,
            stored_len: 5,
            raw_len: 9,
            compression: Compression::Zstd,
        };
        let h = e.encode_header();
        assert_eq!(ChunkEntry::decode_header(&h, 16), Ok(e));
        for bit in 0..(CHUNK_HEADER_LEN * 8) {
            let mut bad = h;
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(
                ChunkEntry::decode_header(&bad, 16).is_err(),
                "flip of bit {bit} went unnoticed"
            );
        }
        let mut t = Vec::new();
        e.encode_table_entry(&mut t);
        assert_eq!(t.len(), TABLE_ENTRY_LEN);
        assert_eq!(ChunkEntry::decode_table_entry(&t), Ok(e));
    }

    fn sample_recipe() -> Recipe {
        let chunks = vec![(ChunkId::of(b"a"), 3u32), (ChunkId::of(b"b"), 4u32)];
        let mut h = FileIdHasher::new();
        for (id, l) in &chunks {
            h.push(id, u64::from(*l));
        }
        Recipe {
            file: h.finish(),
            sha256: Sha256([7; 32]),
            size: 7,
            terms: vec![Term {
                pack: PackId([1; 32]),
                first_chunk: 0,
                chunk_count: 2,
                unpacked_len: 7,
            }],
            chunks,
        }
    }

    #[test]
    fn recipe_round_trip_and_damage() {
        let r = sample_recipe();
        let b = r.encode();
        assert_eq!(Recipe::decode(r.file, &b), Ok(r.clone()));
        assert!(
            Recipe::decode(FileId([0; 32]), &b).is_err(),
            "wrong file id"
        );
        for i in 0..b.len() {
            let mut bad = b.clone();
            bad[i] ^= 0x10;
            assert!(Recipe::decode(r.file, &bad).is_err(), "flip at byte {i}");
        }
        for n in 0..b.len() {
            assert!(Recipe::decode(r.file, &b[..n]).is_err(), "truncated to {n}");
        }
    }
}
