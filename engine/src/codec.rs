//! Chunk encodings: how a chunk's raw bytes are stored in a pack record.
//!
//! Today: raw, or one zstd frame when that saves enough. Every encoding is
//! checked by decoding it again before it is stored, and decoding never
//! allocates more than the record's declared raw length.

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::format::Compression;
use crate::ids::ChunkId;

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
    let compressed = zstd::bulk::compress(raw, level)
        .map_err(|e| Error::Bug(format!("zstd compression of chunk {id} failed: {e}")))?;
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
