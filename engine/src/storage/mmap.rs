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
//! 2. They are opened read-only and mapped read-only (`PROT_READ`).
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
//!
//! # Releasing pages
//!
//! A sequential reader tells the mapping which byte ranges it is done with
//! ([`MappedFile::release`]); those pages leave the process's resident set
//! (`madvise(MADV_DONTNEED)`), so reading a file far larger than memory
//! keeps RSS small. On a read-only file mapping that is sound: the pages
//! were never written, so a later access — by a slice still held elsewhere
//! — faults them in again from the file with the same bytes (the page cache
//! usually still holds them). It is never applied to anything but a
//! mapping made here.
#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::sync::Arc;

use bytes::Bytes;
use memmap2::{Mmap, UncheckedAdvice};

use super::ReadHandle;

/// Pages released are whole 4 KiB pages inside the range (a larger page
/// size rounds outward in the kernel, which only costs a re-fault).
const PAGE: u64 = 4096;

/// A sealed file mapped read-only.
pub(crate) struct MappedFile {
    bytes: Bytes,
    map: Option<Arc<Mmap>>,
}

struct Owner(Arc<Mmap>);

impl AsRef<[u8]> for Owner {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Maps a sealed, immutable file of length `len` read-only.
pub(crate) fn map_sealed(file: &File, len: u64) -> io::Result<MappedFile> {
    if len == 0 {
        // mmap of an empty file is an error on Linux; nothing to map.
        return Ok(MappedFile {
            bytes: Bytes::new(),
            map: None,
        });
    }
    // SAFETY: see the module documentation: `file` is a sealed pack (or
    // recipe) that no code path of the engine modifies after sealing, and it
    // is mapped read-only.
    let map = Arc::new(unsafe { Mmap::map(file)? });
    Ok(MappedFile {
        bytes: Bytes::from_owner(Owner(map.clone())),
        map: Some(map),
    })
}

impl MappedFile {
    /// The mapped bytes (the mapping lives as long as they do).
    pub(crate) fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

impl ReadHandle for MappedFile {
    fn len(&self) -> u64 {
        self.bytes.len() as u64
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        super::BytesFile(self.bytes.clone()).read_at(offset, len)
    }

    fn release(&self, offset: u64, len: u64) {
        let Some(map) = &self.map else { return };
        // Whole pages only: from the page holding `offset` (the bytes before
        // it in that page were released with the range before) to the last
        // page boundary inside the range.
        let start = offset / PAGE * PAGE;
        let end = offset.saturating_add(len).min(map.len() as u64) / PAGE * PAGE;
        if end <= start {
            return;
        }
        // SAFETY: MADV_DONTNEED on a read-only file mapping drops pages from
        // this process's page tables only; their content is the file's and
        // comes back unchanged on the next access (module docs). The range
        // is inside the mapping.
        let r = unsafe {
            map.unchecked_advise_range(
                UncheckedAdvice::DontNeed,
                start as usize,
                (end - start) as usize,
            )
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "madvise(DONTNEED) failed; pages stay resident");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn released_pages_read_back_the_same_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sealed");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &data).expect("write");
        let file = File::open(&path).expect("open");
        let m = map_sealed(&file, data.len() as u64).expect("map");
        let held = m.read_at(10_000, 100_000).expect("read");
        // Release everything, then odd ranges (unaligned, past the end).
        m.release(0, data.len() as u64);
        m.release(12_345, 77_777);
        m.release(290_000, 1 << 40);
        assert_eq!(
            &held[..],
            &data[10_000..110_000],
            "a slice held across a release"
        );
        assert_eq!(
            &m.read_at(0, data.len()).expect("read")[..],
            &data[..],
            "the whole file after a release"
        );
        // An empty file maps to nothing and releases nothing.
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").expect("write");
        let e = map_sealed(&File::open(&empty).expect("open"), 0).expect("map");
        e.release(0, 10);
        assert_eq!(e.len(), 0);
    }
}
