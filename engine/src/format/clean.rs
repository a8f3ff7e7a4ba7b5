//! The clean-close record (spec §8.1).

use super::Cursor;
use crate::ids::checksum;

/// Magic of the clean-close record.
pub const CLEAN_MAGIC: [u8; 8] = *b"TSRCLEAN";
/// Length of the clean-close record.
pub const CLEAN_LEN: usize = 16 + 8 * 8 + 32 + 32;
/// Version of the clean-close record's layout (1 had no ref-tree stamp).
const CLEAN_VERSION: u32 = 2;

/// What the clean-close record holds: the index's seven counters (files,
/// refs, chunks, packs, logical bytes, stored bytes, chunk bytes) and its
/// write generation, and the stamp of the ref tree, when the store was last
/// closed cleanly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanRecord {
    /// Counters and generation.
    pub counters: [u64; 8],
    /// [`crate::storage::ObjectStore::tree_stamp`] of `refs/` (zeros when the
    /// backend has none).
    pub refs_stamp: [u8; 32],
}

/// Encodes the clean-close record.
pub fn encode_clean(r: &CleanRecord) -> Vec<u8> {
    let mut b = Vec::with_capacity(CLEAN_LEN);
    b.extend_from_slice(&CLEAN_MAGIC);
    b.extend_from_slice(&CLEAN_VERSION.to_le_bytes());
    b.extend_from_slice(&[0u8; 4]);
    for c in &r.counters {
        b.extend_from_slice(&c.to_le_bytes());
    }
    b.extend_from_slice(&r.refs_stamp);
    let sum = checksum(&b);
    b.extend_from_slice(&sum);
    b
}

/// Decodes the clean-close record.
pub fn decode_clean(b: &[u8]) -> Result<CleanRecord, String> {
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
    if version != CLEAN_VERSION {
        return Err(format!("unsupported version {version}"));
    }
    let _reserved = c.u32().ok_or("truncated")?;
    let mut counters = [0u64; 8];
    for slot in &mut counters {
        *slot = c.u64().ok_or("truncated")?;
    }
    let refs_stamp = c.array::<32>().ok_or("truncated")?;
    Ok(CleanRecord {
        counters,
        refs_stamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_round_trips_and_refuses_the_old_layout() {
        let r = CleanRecord {
            counters: [1, 2, 3, 4, 5, 6, 7, u64::MAX],
            refs_stamp: [9; 32],
        };
        let b = encode_clean(&r);
        assert_eq!(b.len(), CLEAN_LEN);
        assert_eq!(decode_clean(&b), Ok(r));
        // A version 1 record (no stamp) is not a record of this layout: the
        // open catches up once, as after any record it cannot read.
        let mut old = b[..16 + 64].to_vec();
        old[8..12].copy_from_slice(&1u32.to_le_bytes());
        let sum = checksum(&old);
        old.extend_from_slice(&sum);
        assert!(decode_clean(&old).is_err());
        let mut bad = b.clone();
        bad[100] ^= 1;
        assert_eq!(decode_clean(&bad), Err("checksum mismatch".into()));
    }
}
