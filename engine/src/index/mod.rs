//! The index: a local cache of what the packs, recipe files and ref files
//! hold, for fast lookups — chunk id → where the chunk is, file id →
//! recipe, sha256 → file id, ref name → file id, pack id → sizes, and
//! counters. Nothing here is the only copy of anything: the whole index can
//! be rebuilt from the objects (`repair index`).
//!
//! This module is the interface the rest of the engine uses; the database
//! behind it (sled 0.34) is confined to [`db`]. Its trees and value
//! encodings are described, informatively, in `format-spec/SPEC.md` §9.

mod db;
mod filter;
mod run;
#[cfg(test)]
mod tests;

#[cfg(feature = "testing")]
pub(crate) use db::SEGMENT_BYTES;
pub(crate) use db::{now_millis, Index, WriteGuard};

use crate::format::{ChunkEntry, Compression, Cursor};
use crate::ids::{ChunkId, FileId, PackId, Sha256};

/// Where a chunk lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The sealed pack.
    pub pack: PackId,
    /// Index in the pack's chunk table.
    pub index: u32,
    /// Record offset, lengths and compression.
    pub entry: ChunkEntry,
}

const CHUNK_VALUE_LEN: usize = 32 + 4 + 8 + 4 + 4 + 1;

impl ChunkLocation {
    pub(crate) fn encode(&self) -> [u8; CHUNK_VALUE_LEN] {
        let mut v = [0u8; CHUNK_VALUE_LEN];
        v[0..32].copy_from_slice(&self.pack.0);
        v[32..36].copy_from_slice(&self.index.to_le_bytes());
        v[36..44].copy_from_slice(&self.entry.offset.to_le_bytes());
        v[44..48].copy_from_slice(&self.entry.stored_len.to_le_bytes());
        v[48..52].copy_from_slice(&self.entry.raw_len.to_le_bytes());
        v[52] = self.entry.compression as u8;
        v
    }

    pub(crate) fn decode(id: ChunkId, v: &[u8]) -> Option<Self> {
        if v.len() != CHUNK_VALUE_LEN {
            return None;
        }
        let mut c = Cursor::new(v);
        let pack = PackId(c.array()?);
        let index = c.u32()?;
        let offset = c.u64()?;
        let stored_len = c.u32()?;
        let raw_len = c.u32()?;
        let compression = Compression::from_code(c.u8()?)?;
        Some(ChunkLocation {
            pack,
            index,
            entry: ChunkEntry {
                id,
                offset,
                stored_len,
                raw_len,
                compression,
            },
        })
    }
}

/// What the index records about a sealed pack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PackInfo {
    /// Pack file length.
    pub size: u64,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Sum of the raw lengths of its chunks.
    pub raw_bytes: u64,
}

impl PackInfo {
    pub(crate) fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[0..8].copy_from_slice(&self.size.to_le_bytes());
        v[8..12].copy_from_slice(&self.chunk_count.to_le_bytes());
        v[12..20].copy_from_slice(&self.raw_bytes.to_le_bytes());
        v
    }
    pub(crate) fn decode(v: &[u8]) -> Option<Self> {
        let mut c = Cursor::new(v);
        let info = PackInfo {
            size: c.u64()?,
            chunk_count: c.u32()?,
            raw_bytes: c.u64()?,
        };
        (v.len() == 20).then_some(info)
    }
}

/// Counters kept in the `meta` tree, updated in the same transactions as the
/// entries they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Distinct files.
    pub files: u64,
    /// Refs.
    pub refs: u64,
    /// Distinct chunks.
    pub chunks: u64,
    /// Sealed packs.
    pub packs: u64,
    /// Sum of distinct files' sizes.
    pub logical_bytes: u64,
    /// Sum of pack file sizes.
    pub stored_bytes: u64,
    /// Sum of distinct chunks' raw sizes.
    pub chunk_bytes: u64,
}

pub(crate) const COUNTER_NAMES: [&str; 7] = [
    "files",
    "refs",
    "chunks",
    "packs",
    "logical_bytes",
    "stored_bytes",
    "chunk_bytes",
];

impl Counters {
    /// The counters in the order of the clean-close record (spec §8.1).
    pub fn to_array(self) -> [u64; 7] {
        [
            self.files,
            self.refs,
            self.chunks,
            self.packs,
            self.logical_bytes,
            self.stored_bytes,
            self.chunk_bytes,
        ]
    }
}

/// A file to record with `Index::add_files`.
#[derive(Clone, Copy, Debug)]
pub struct NewFile<'a> {
    /// The file id.
    pub file: FileId,
    /// sha256 of its content.
    pub sha: Sha256,
    /// Its size.
    pub size: u64,
    /// Its encoded recipe.
    pub recipe: &'a [u8],
    /// Refs to point at it.
    pub refs: &'a [String],
}
