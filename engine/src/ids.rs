//! Identifiers: chunk ids, file ids and pack ids, and their derivations.
//!
//! All three are 32-byte BLAKE3 outputs. The exact derivations are normative
//! and specified in `format-spec/SPEC.md` ("Identifiers").

use std::fmt;
use std::str::FromStr;

/// BLAKE3 key-derivation context for file ids (domain separation).
pub const FILE_ID_CONTEXT: &str = "tessera 2026-11-22 file-id v1";
/// BLAKE3 key-derivation context for pack ids (domain separation).
pub const PACK_ID_CONTEXT: &str = "tessera 2026-11-22 pack-id v1";

/// A string that is not an id: ids are 64 hex characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdParseError {
    /// What was being parsed: "chunk", "file", "pack", "sha256".
    pub kind: &'static str,
    /// The length of the string given.
    pub len: usize,
}

impl fmt::Display for IdParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a {} id: want 64 hex characters, got {} bytes",
            self.kind, self.len
        )
    }
}

impl std::error::Error for IdParseError {}

macro_rules! id_type {
    ($(#[$m:meta])* $name:ident, $label:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; 32]);

        impl $name {
            /// The raw 32 bytes.
            pub fn as_bytes(&self) -> &[u8; 32] {
                &self.0
            }
            /// Lower-case hex, 64 characters.
            pub fn to_hex(&self) -> String {
                hex::encode(self.0)
            }
            /// Parses 64 hex characters.
            pub fn from_hex(s: &str) -> Option<Self> {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).ok()?;
                Some(Self(out))
            }
            /// Builds an id from a slice that must be exactly 32 bytes long.
            pub fn from_slice(s: &[u8]) -> Option<Self> {
                <[u8; 32]>::try_from(s).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($label, "({})"), &self.to_hex()[..16])
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_hex())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::from_hex(&s).ok_or_else(|| {
                    serde::de::Error::custom(IdParseError {
                        kind: $label,
                        len: s.len(),
                    })
                })
            }
        }

        impl FromStr for $name {
            type Err = IdParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::from_hex(s).ok_or_else(|| IdParseError {
                    kind: $label,
                    len: s.len(),
                })
            }
        }
    };
}

id_type!(
    /// Id of a chunk: `BLAKE3(chunk bytes)` (plain, unkeyed hash of the raw bytes).
    ChunkId,
    "chunk"
);
id_type!(
    /// Id of a file: a domain-separated hash over its ordered chunk list,
    /// see [`FileIdHasher`].
    FileId,
    "file"
);
id_type!(
    /// Id of a sealed pack: a domain-separated hash of the pack file's bytes.
    PackId,
    "pack"
);
id_type!(
    /// SHA-256 of a file's whole content (the name git-lfs pointers use).
    Sha256,
    "sha256"
);

impl ChunkId {
    /// Hashes a chunk's raw bytes.
    pub fn of(data: &[u8]) -> Self {
        ChunkId(*blake3::hash(data).as_bytes())
    }
}

/// Incremental file-id derivation:
/// `BLAKE3-derive-key(FILE_ID_CONTEXT, ‖ for each chunk: chunk_id (32) ‖ u64le(len))`.
///
/// Because it only needs the chunk list, a reader can verify a recipe against
/// its file id without touching chunk data, and chunk by chunk.
#[derive(Clone)]
pub struct FileIdHasher(blake3::Hasher);

impl Default for FileIdHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl FileIdHasher {
    /// A hasher for an empty chunk list.
    pub fn new() -> Self {
        FileIdHasher(blake3::Hasher::new_derive_key(FILE_ID_CONTEXT))
    }
    /// Appends one chunk to the list.
    pub fn push(&mut self, id: &ChunkId, len: u64) {
        self.0.update(&id.0);
        self.0.update(&len.to_le_bytes());
    }
    /// The file id of the chunks pushed so far.
    pub fn finish(&self) -> FileId {
        FileId(*self.0.finalize().as_bytes())
    }
}

/// Incremental pack-id derivation: `BLAKE3-derive-key(PACK_ID_CONTEXT, pack file bytes)`.
#[derive(Clone)]
pub struct PackIdHasher(blake3::Hasher);

impl Default for PackIdHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl PackIdHasher {
    /// A hasher over no bytes yet.
    pub fn new() -> Self {
        PackIdHasher(blake3::Hasher::new_derive_key(PACK_ID_CONTEXT))
    }
    /// Feeds pack bytes in file order.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    /// The pack id of the bytes fed so far.
    pub fn finish(&self) -> PackId {
        PackId(*self.0.finalize().as_bytes())
    }
}

/// A 4-byte check value: the first four bytes of `BLAKE3(data)`, little-endian.
/// Used for the small fixed headers (chunk headers) where a full hash is overkill.
pub fn check32(data: &[u8]) -> u32 {
    let h = blake3::hash(data);
    let b = h.as_bytes();
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Full BLAKE3 of `data`, used as the checksum of footers, recipes and the config.
pub fn checksum(data: &[u8]) -> [u8; 32] {
    *blake3::hash(data).as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_id_depends_on_order_and_lengths() {
        let a = ChunkId::of(b"a");
        let b = ChunkId::of(b"b");
        let mut h1 = FileIdHasher::new();
        h1.push(&a, 1);
        h1.push(&b, 1);
        let mut h2 = FileIdHasher::new();
        h2.push(&b, 1);
        h2.push(&a, 1);
        let mut h3 = FileIdHasher::new();
        h3.push(&a, 1);
        h3.push(&b, 2);
        assert_ne!(h1.finish(), h2.finish());
        assert_ne!(h1.finish(), h3.finish());
        // Domain separation: a one-chunk file's id is not its chunk id.
        let mut h4 = FileIdHasher::new();
        h4.push(&a, 1);
        assert_ne!(h4.finish().0, a.0);
    }

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let id = ChunkId::of(b"xyz");
        assert_eq!(ChunkId::from_hex(&id.to_hex()), Some(id));
        assert!(ChunkId::from_hex("zz").is_none());
        assert!("abc".parse::<FileId>().is_err());
    }
}
