//! Ref files (spec §8).

use super::{Cursor, FORMAT_VERSION};
use crate::ids::{checksum, FileId};

/// Magic of a ref file.
pub const REF_MAGIC: [u8; 8] = *b"TSRREF\0\0";
/// Longest accepted ref name, in bytes.
pub const MAX_REF_LEN: usize = 4096;
/// The file id a *tombstone* names: the ref file of a deleted ref on a
/// directory store (spec §8), which says the ref was deleted — so a ref file
/// that is missing is damage, never a deletion. No file has this id.
pub const DELETED_REF: FileId = FileId([0; 32]);

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

/// The file-id field of ref file bytes, read without checking anything
/// else (the bytes may be damaged): what `repair index` on a shared store
/// compares with a node's copy before it rewrites a damaged ref file.
pub fn ref_file_field(b: &[u8]) -> Option<FileId> {
    let mut c = Cursor::new(b);
    c.take(16)?;
    c.array::<32>().map(FileId)
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

/// The file ref object `bytes` names for ref `name`: `None` for a
/// tombstone. Errors as [`decode_ref`] when the bytes do not decode, and
/// for another name's ref object (a misplaced copy: damage).
pub fn ref_target(name: &str, bytes: &[u8]) -> Result<Option<FileId>, String> {
    let (n, f) = decode_ref(bytes)?;
    if n != name {
        // Another ref's file under this name: damage (a misplaced copy),
        // not this ref's absence.
        let shown: String = n.chars().take(120).collect();
        return Err(format!("it holds ref {shown:?}, not this one"));
    }
    Ok((f != DELETED_REF).then_some(f))
}

/// Whether `bytes` is the tombstone of ref `name`.
pub fn is_tombstone(name: &str, bytes: &[u8]) -> bool {
    matches!(decode_ref(bytes), Ok((n, f)) if n == name && f == DELETED_REF)
}
