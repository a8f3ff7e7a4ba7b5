//! File reconstruction: locating byte ranges in a recipe.

use crate::format::{Recipe, Term};
use crate::ids::{ChunkId, PackId};

/// A recipe with prefix sums for binary search.
#[derive(Debug)]
pub struct Layout {
    /// The recipe.
    pub recipe: Recipe,
    /// `term_offsets[t]` = byte offset where term `t` starts; one extra at the end.
    term_offsets: Vec<u64>,
    /// `term_first[t]` = index in the chunk list of term `t`'s first chunk.
    term_first: Vec<usize>,
    /// `chunk_offsets[i]` = byte offset where chunk `i` starts; one extra at the end.
    chunk_offsets: Vec<u64>,
}

/// One chunk to read: where it is and which part of it is wanted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkRef {
    /// Position in the file's chunk list.
    pub index: usize,
    /// Expected id.
    pub id: ChunkId,
    /// The pack holding it.
    pub pack: PackId,
    /// Its index in the pack's chunk table.
    pub pack_index: u32,
    /// Offset of the chunk in the file.
    pub file_offset: u64,
    /// Raw length.
    pub len: u32,
}

impl Layout {
    /// Builds the prefix sums (the recipe must have passed `Recipe::decode`).
    pub fn new(recipe: Recipe) -> Self {
        let mut term_offsets = Vec::with_capacity(recipe.terms.len() + 1);
        let mut term_first = Vec::with_capacity(recipe.terms.len() + 1);
        let (mut off, mut first) = (0u64, 0usize);
        for t in &recipe.terms {
            term_offsets.push(off);
            term_first.push(first);
            off += t.unpacked_len;
            first += t.chunk_count as usize;
        }
        term_offsets.push(off);
        term_first.push(first);
        let mut chunk_offsets = Vec::with_capacity(recipe.chunks.len() + 1);
        let mut off = 0u64;
        for (_, len) in &recipe.chunks {
            chunk_offsets.push(off);
            off += u64::from(*len);
        }
        chunk_offsets.push(off);
        Layout {
            recipe,
            term_offsets,
            term_first,
            chunk_offsets,
        }
    }

    /// File size.
    pub fn size(&self) -> u64 {
        self.recipe.size
    }

    /// About what this layout holds in memory (what a cache of layouts
    /// counts).
    pub fn heap_bytes(&self) -> u64 {
        let chunks = self.recipe.chunks.len() * (std::mem::size_of::<(ChunkId, u32)>() + 8);
        let terms = self.recipe.terms.len() * (std::mem::size_of::<Term>() + 16);
        (chunks + terms + 256) as u64
    }

    /// Number of chunks.
    pub fn chunk_count(&self) -> usize {
        self.recipe.chunks.len()
    }

    /// The term containing byte `offset` (< size), by binary search on the
    /// terms' prefix sums.
    pub fn term_at(&self, offset: u64) -> usize {
        self.term_offsets
            .partition_point(|&o| o <= offset)
            .saturating_sub(1)
    }

    /// The chunk containing byte `offset` (< size): binary search over the
    /// terms, then over the chunks of that term only.
    pub fn chunk_at(&self, offset: u64) -> usize {
        let t = self.term_at(offset);
        let lo = self.term_first.get(t).copied().unwrap_or(0);
        let hi = self.term_first.get(t + 1).copied().unwrap_or(lo);
        let within = self
            .chunk_offsets
            .get(lo..hi)
            .map_or(0, |s| s.partition_point(|&o| o <= offset));
        lo + within.saturating_sub(1)
    }

    /// Describes chunk `i` (< chunk_count).
    pub fn chunk(&self, i: usize) -> Option<ChunkRef> {
        let (id, len) = *self.recipe.chunks.get(i)?;
        let t = self
            .term_first
            .partition_point(|&f| f <= i)
            .checked_sub(1)?;
        let term: &Term = self.recipe.terms.get(t)?;
        let first = *self.term_first.get(t)?;
        Some(ChunkRef {
            index: i,
            id,
            pack: term.pack,
            pack_index: term
                .first_chunk
                .checked_add(u32::try_from(i - first).ok()?)?,
            file_offset: *self.chunk_offsets.get(i)?,
            len,
        })
    }

    /// Distinct packs the file touches.
    pub fn packs(&self) -> Vec<PackId> {
        let mut v: Vec<PackId> = self.recipe.terms.iter().map(|t| t.pack).collect();
        v.sort();
        v.dedup();
        v
    }
}
