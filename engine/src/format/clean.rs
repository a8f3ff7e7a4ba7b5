//! The clean-close record (spec §8.1).

use super::{Cursor, FORMAT_VERSION};
use crate::ids::checksum;

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
