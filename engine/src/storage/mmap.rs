//! The one place with `unsafe`: memory-mapping sealed pack files.
//!
//! # Safety argument
//!
//! `memmap2::Mmap::map` is unsafe because the mapped bytes may change (or
//! vanish, raising SIGBUS) if the file is modified or truncated while mapped;
//! Rust would then observe a `&[u8]` whose contents change under it.
//!
//! The engine only maps files that satisfy all of:
//! 1. They are *sealed*: written completely to a temp file, fsynced, and
//!    renamed to their content-addressed name. The engine never opens a
//!    sealed file for writing again, never truncates it, and never renames
//!    another file over it with different content (a pack's name is the hash
//!    of its bytes, so a replacement would have identical bytes).
//! 2. They are opened read-only and mapped read-only (`PROT_READ`, private).
//! 3. Deletion (GC) unlinks the name only; on Linux an unlinked file's pages
//!    stay valid for existing mappings until they are dropped.
//!
//! What remains outside the engine's control is another process (or a person)
//! writing into or truncating files under `packs/`. That is outside the
//! contract, as for any database's data files (see `format-spec/SPEC.md`,
//! "Assumptions"). Users who cannot guarantee it can open the store with
//! `ReadMode::Pread`, which never maps.
//!
//! Every byte read through a mapping is still verified against its hash
//! before it leaves the engine, so a concurrent external modification yields
//! a checksum error, not wrong bytes (SIGBUS on truncation is the residual
//! risk named above).
#![allow(unsafe_code)]

use std::fs::File;
use std::io;

use bytes::Bytes;
use memmap2::Mmap;

/// Maps a sealed, immutable file of length `len` read-only as `Bytes`.
pub(crate) fn map_sealed(file: &File, len: u64) -> io::Result<Bytes> {
    if len == 0 {
        // mmap of an empty file is an error on Linux; nothing to map.
        return Ok(Bytes::new());
    }
    // SAFETY: see the module documentation: `file` is a sealed pack (or
    // recipe) that no code path of the engine modifies after sealing, and it
    // is mapped read-only.
    let map = unsafe { Mmap::map(file)? };
    Ok(Bytes::from_owner(map))
}
