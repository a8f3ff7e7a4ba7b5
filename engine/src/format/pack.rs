//! Pack bytes: header, chunk records, chunk table and trailer (spec §6).

use super::{Cursor, FORMAT_VERSION};
use crate::ids::{check32, ChunkId};

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
    /// Float byte planes, entropy-coded (`engine/codec/FORMAT.md`); only in
    /// stores of version 2 or later.
    FloatPlanes = 2,
}

impl Compression {
    /// Decodes the one-byte code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Zstd),
            2 => Some(Compression::FloatPlanes),
            _ => None,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
