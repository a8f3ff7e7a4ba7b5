//! Storage with object semantics: every byte of a store's objects (packs,
//! recipes, refs, the config and the markers) goes through [`ObjectStore`].
//!
//! The primitives are the ones a local directory and an S3-style bucket both
//! implement without emulation: immutable objects written once, atomically
//! (a pack is built locally, then published whole); ranged reads; listing by
//! prefix; delete; and replacing a small object whole (refs, the markers).
//! A directory imitates a bucket cheaply (temp file, fsync, rename, fsync of
//! the directory: [`DirStore`]); a bucket cannot imitate a directory, which
//! is why the engine asks for nothing more.
//!
//! What is not an object — the index (a local database) and the lock that
//! keeps a second process out — is local state, kept beside the objects for
//! a directory store (see `crate::local`).

use std::fmt;
use std::io;
use std::sync::Arc;

use bytes::Bytes;

mod dir;
#[cfg(feature = "testing")]
pub mod fault;
mod fs;
mod mmap;

pub use dir::DirStore;
pub use fs::{Fs, RealFs, WriteHandle};

/// A read-only, random-access view of an immutable object.
pub trait ReadHandle: Send + Sync {
    /// Length of the object.
    fn len(&self) -> u64;
    /// True when the object is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`; past the end is `UnexpectedEof`.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;
}

/// What to do when an object already exists under the key being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PutMode {
    /// Fail with [`io::ErrorKind::AlreadyExists`] (create-only).
    Create,
    /// Replace it, atomically: readers see the old or the new object whole.
    Replace,
}

/// An object being built locally, published whole under its key.
pub trait StagedObject: Send {
    /// Appends bytes.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes the object durable under `key`, atomically: no reader ever
    /// sees part of it. Dropping a staged object without publishing it
    /// discards it (what a crash leaves is discarded by the next
    /// [`ObjectStore::discard_staged`]).
    fn publish(self: Box<Self>, key: &str, mode: PutMode) -> io::Result<()>;
}

/// The storage backend of a store. Keys are `/`-separated, relative to the
/// store (see `crate::paths`). Every method that changes something returns
/// only once the change is durable.
pub trait ObjectStore: Send + Sync + fmt::Debug {
    /// Where the store is, for messages (a directory, or a URL).
    fn location(&self) -> String;
    /// Where one object is, for messages.
    fn describe(&self, key: &str) -> String;
    /// Starts a new object (see [`StagedObject`]).
    fn stage(&self) -> io::Result<Box<dyn StagedObject>>;
    /// Writes a whole object durably and atomically.
    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> io::Result<()> {
        let mut o = self.stage()?;
        o.write_all(data)?;
        o.publish(key, mode)
    }
    /// Reads a whole (small) object; a missing one is `NotFound`.
    fn get(&self, key: &str) -> io::Result<Vec<u8>>;
    /// Opens an immutable object for ranged reads.
    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>>;
    /// Every key starting with `prefix`, sorted.
    fn list(&self, prefix: &str) -> io::Result<Vec<String>>;
    /// Whether an object exists.
    fn exists(&self, key: &str) -> io::Result<bool>;
    /// Deletes an object durably; a missing one is `NotFound`.
    fn delete(&self, key: &str) -> io::Result<()>;
    /// Discards objects staged but never published (after a crash). Only
    /// called by the one process that holds the store.
    fn discard_staged(&self) -> io::Result<()>;
    /// When the location holds no store config: a description of anything
    /// there that is neither a store's object nor the remains of a store
    /// creation that crashed (`None`: a store may be created here).
    fn foreign(&self) -> io::Result<Option<String>>;
    /// Called before every write to the store's index: lets a test backend
    /// fail index writes at a chosen point, like any other write.
    fn check_index_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// How a [`DirStore`] reads immutable objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Memory-map sealed files (zero-copy reads).
    #[default]
    Mmap,
    /// Plain positional reads (`pread`) into buffers.
    Pread,
}

/// A read handle over an in-memory buffer (used for mapped files and tests).
pub(crate) struct BytesFile(pub(crate) Bytes);

impl ReadHandle for BytesFile {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| Some(s..s.checked_add(len)?)) {
            Some(r) if r.end <= self.0.len() => Ok(self.0.slice(r)),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past end ({})",
                    self.0.len()
                ),
            )),
        }
    }
}
