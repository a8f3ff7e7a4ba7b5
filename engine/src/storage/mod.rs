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
    /// A hint: this process is done with `len` bytes at `offset` for now (a
    /// sequential reader moved past them). A memory-mapped handle drops
    /// those pages from the resident set; bytes already returned stay
    /// valid. The default does nothing.
    fn release(&self, _offset: u64, _len: u64) {}
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
    /// [`ObjectStore::delete`], sending no request (and no retry) after
    /// `deadline`: a deletion that cannot be done by then fails with
    /// `TimedOut`. A collector deletes under a lease this way, so that no
    /// deletion of its reaches the store after the lease lapsed (spec
    /// §10.6). The default ignores the deadline: a store that is not
    /// [`shared`](ObjectStore::shared) has no lease to outlive.
    fn delete_by(&self, key: &str, deadline: std::time::Instant) -> io::Result<()> {
        let _ = deadline;
        self.delete(key)
    }
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
    /// A digest that changes whenever an object under `prefix` is added,
    /// removed or replaced, if the backend can tell cheaply (without reading
    /// every object); `None` when it cannot. A directory store digests the
    /// modification times of the prefix's directory and of its fan-out
    /// directories (spec §8.1).
    fn tree_stamp(&self, _prefix: &str) -> io::Result<Option<[u8; 32]>> {
        Ok(None)
    }

    // ------------------------------------------------------------ shared stores

    /// Whether several processes may use this store at once, each with its
    /// own local state (index, lock): a bucket shared by several nodes
    /// (spec §4.3). The index of such a store is a cache that may lack what
    /// other processes wrote; the engine looks in the store on a miss, and
    /// updates refs with conditional writes. A directory store is not shared.
    fn shared(&self) -> bool {
        false
    }

    /// Reads a whole object with its version (for
    /// [`ObjectStore::put_if_version`]); `None` when there is none.
    ///
    /// The default reads the object and names the version by a digest of its
    /// bytes; together with the default `put_if_version` it is atomic among
    /// the callers of one process only, which is all a store that is not
    /// [`shared`](ObjectStore::shared) has. Shared backends override both.
    fn get_versioned(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        let _one_at_a_time = local_cas_lock();
        match self.get(key) {
            Ok(b) => {
                let v = Version::of_bytes(&b);
                Ok(Some((b, v)))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `data` under `key` only if the object is still the version
    /// `expect` (`None`: only if there is no object), durably and
    /// atomically; otherwise writes nothing and returns
    /// [`Cas::Conflict`]. For a shared store this is atomic against every
    /// other writer (S3: `If-Match` / `If-None-Match: *`).
    fn put_if_version(&self, key: &str, data: &[u8], expect: Option<&Version>) -> io::Result<Cas> {
        let _one_at_a_time = local_cas_lock();
        let current = match self.get(key) {
            Ok(b) => Some(Version::of_bytes(&b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if current.as_ref() != expect {
            return Ok(Cas::Conflict);
        }
        let mode = if expect.is_none() {
            PutMode::Create
        } else {
            PutMode::Replace
        };
        match self.put(key, data, mode) {
            Ok(()) => Ok(Cas::Written(Version::of_bytes(data))),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(Cas::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Every key starting with `prefix`, sorted, with what the listing
    /// tells of each (version, modification time). The default lists keys
    /// only.
    fn list_versioned(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        Ok(self
            .list(prefix)?
            .into_iter()
            .map(|key| Listed {
                key,
                version: None,
                modified: None,
            })
            .collect())
    }
}

/// The version of an object as conditional writes name it: an S3 ETag, or
/// for a backend without one, a digest of the content.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(pub String);

impl Version {
    /// The version the default [`ObjectStore::get_versioned`] gives `data`.
    pub fn of_bytes(data: &[u8]) -> Version {
        Version(format!("b3:{}", blake3::hash(data).to_hex()))
    }
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cas {
    /// Written; the new version.
    Written(Version),
    /// The object was not at the expected version (changed, deleted, or
    /// created meanwhile): nothing was written.
    Conflict,
}

/// An object as a listing shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: String,
    /// Its version, when the listing tells (an S3 listing gives ETags).
    pub version: Option<Version>,
    /// When it was last written, by the store's clock, when known.
    pub modified: Option<std::time::SystemTime>,
}

/// Serializes the default compare-and-set of non-shared stores within the
/// process (their only writer).
fn local_cas_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
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

/// Maps a sealed local file read-only (the index's chunk run; see `mmap`
/// for the safety argument: the file is published whole by rename and
/// never modified).
pub(crate) fn map_sealed_file(path: &std::path::Path) -> io::Result<Bytes> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    Ok(mmap::map_sealed(&file, len)?.into_bytes())
}

/// A read handle over an in-memory buffer (uploads, tests; mapped files
/// read through it).
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
