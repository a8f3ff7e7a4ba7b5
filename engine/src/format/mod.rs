//! The on-disk formats: the types that *are* the bytes of the store config,
//! packs, recipes, ref files and the clean-close record, with their codecs.
//!
//! These types are the format described in `format-spec/SPEC.md`. Every
//! integer is fixed-width little-endian. Decoders never trust a length field
//! before checking it against the bytes actually present, and never panic.

mod clean;
mod config;
mod pack;
mod recipe;
mod refs;

// The whole format is re-exported for the `testing` feature; the engine
// itself uses only part of it.
#[allow(unused_imports)]
pub use clean::{decode_clean, encode_clean, CleanRecord, CLEAN_LEN, CLEAN_MAGIC};
#[allow(unused_imports)]
pub use config::{
    ConfigError, StoreConfig, CHUNKER_FASTCDC_2020, CONFIG_LEN, CONFIG_MAGIC, STORE_VERSION,
};
#[allow(unused_imports)]
pub use pack::{
    check_pack_header, pack_header, ChunkEntry, Compression, PackHeaderError, Trailer,
    CHUNK_HEADER_LEN, CHUNK_MAGIC, MAX_CHUNK_LEN, PACK_END_MAGIC, PACK_HEADER_LEN, PACK_MAGIC,
    TABLE_ENTRY_LEN, TRAILER_LEN,
};
#[allow(unused_imports)]
pub use recipe::{
    Recipe, RecipeError, Term, RECIPE_CHUNK_LEN, RECIPE_HEADER_LEN, RECIPE_MAGIC, TERM_LEN,
};
#[allow(unused_imports)]
pub use refs::{
    decode_ref, encode_ref, is_tombstone, ref_file_field, ref_target, DELETED_REF, MAX_REF_LEN,
    REF_MAGIC,
};

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
