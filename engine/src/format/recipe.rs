//! Recipes: a file's reconstruction (spec §7).

use super::{Cursor, FORMAT_VERSION};
use crate::ids::{checksum, ChunkId, FileId, FileIdHasher, PackId, Sha256};

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

impl RecipeError {
    /// The engine error for the recipe of `file`.
    pub fn into_error(self, file: FileId) -> crate::Error {
        match self {
            RecipeError::Corrupt(detail) => crate::Error::RecipeCorrupt { file, detail },
            RecipeError::Version(v) => crate::Error::UnsupportedVersion {
                object: format!("recipe of file {file}"),
                found: v,
                supported: FORMAT_VERSION,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
