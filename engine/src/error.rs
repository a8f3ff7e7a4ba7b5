//! The engine's error type: one enum, every variant names the object it is about.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::ids::{ChunkId, FileId, IdParseError, PackId};

/// Result alias for the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the engine. Each variant names the object
/// (pack, chunk, file, ref, path) so a one-line message is actionable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named object (a file, or a key in a bucket).
    #[error("I/O error during {op} on {object}: {source}")]
    Io {
        /// What the engine was doing.
        op: &'static str,
        /// The object involved: a path, or a URL for remote storage.
        object: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// No store at the given location.
    #[error("no tessera store at {location} (run `tessera put` to create one)")]
    StoreNotFound {
        /// The directory (or URL) that was opened.
        location: String,
    },

    /// Creating a store was refused: the directory is not empty and holds
    /// no store (nothing in it was touched).
    #[error("{location} is not a tessera store and not empty ({detail}); a store is only created in a new or empty directory")]
    NotAStore {
        /// The directory (or URL).
        location: String,
        /// What was found there.
        detail: String,
    },

    /// The directory holds a store's packs, recipes or refs but its config
    /// is gone: a damaged store, never silently re-created.
    #[error("{location} holds a tessera store ({detail}) but its config tessera.store is missing; restore tessera.store from a backup, or run `tessera repair config` to write it anew after checking the chunking parameters against the stored files")]
    ConfigMissing {
        /// The store directory (or URL).
        location: String,
        /// What was found there.
        detail: String,
    },

    /// A shared store's location holds nothing (no config, pack, recipe or
    /// ref) while this node's cache describes a store there: the bucket or
    /// prefix was emptied (or lost) behind the node's back.
    #[error("{location} holds no tessera store any more (no config, packs, recipes or refs), but this node's cache {cache} describes one ({detail}): the store's objects were deleted, or this is the wrong location. Restore them, or delete the cache {cache} (a cache holds nothing the store needs) and run `tessera put` to create a new store there")]
    StoreGone {
        /// The store URL.
        location: String,
        /// This node's cache directory.
        cache: String,
        /// What the cache holds.
        detail: String,
    },

    /// An input changed while it was being read (size or modification time
    /// differ before and after): what was read matches neither version.
    #[error("{}: the file changed while it was read ({detail}); nothing was stored for it", path.display())]
    SourceChanged {
        /// The input file.
        path: PathBuf,
        /// What changed.
        detail: String,
    },

    /// A store, pack or recipe written by a format version this build cannot read.
    #[error("{object}: unsupported format version {found} (this build reads version {supported})")]
    UnsupportedVersion {
        /// The object carrying the version.
        object: String,
        /// Version found on disk.
        found: u32,
        /// Version this build understands.
        supported: u32,
    },

    /// The store was created with other chunking parameters than requested.
    #[error("store at {location} uses chunking {stored}, but {requested} was requested; chunk parameters are part of the format and cannot be mixed")]
    ChunkParamsMismatch {
        /// The store directory (or URL).
        location: String,
        /// Parameters in the store's config.
        stored: String,
        /// Parameters the caller asked for.
        requested: String,
    },

    /// The store config file is damaged.
    #[error("store config {object} is corrupt: {detail}; restore it from a backup, or run `tessera repair config` to write it anew after checking the chunking parameters against the stored files")]
    ConfigCorrupt {
        /// The config object.
        object: String,
        /// What is wrong.
        detail: String,
    },

    /// The journal of an unfinished GC does not parse: nothing it lists was
    /// deleted, and nothing is until it is dealt with.
    #[error("GC journal {object} is damaged ({detail}); nothing it lists was deleted. Remove it to go on: the GC it records did not finish, and the next `tessera gc` collects what it would have")]
    JournalCorrupt {
        /// The journal object.
        object: String,
        /// What is wrong.
        detail: String,
    },

    /// A chunk's bytes do not hash to its id (or fail to decompress).
    #[error("chunk {chunk} in pack {pack} at offset {offset} is corrupt: {detail}")]
    ChunkCorrupt {
        /// The pack holding the chunk.
        pack: PackId,
        /// Byte offset of the chunk record in the pack.
        offset: u64,
        /// The chunk's expected id.
        chunk: ChunkId,
        /// What is wrong.
        detail: String,
    },

    /// A pack's structure (header, chunk table, trailer) is damaged.
    #[error("pack {pack} is corrupt: {detail}")]
    PackCorrupt {
        /// The pack.
        pack: PackId,
        /// What is wrong.
        detail: String,
    },

    /// Publishing a pack found an object under its name that is not that
    /// pack (a pack's name is the hash of its bytes, so an existing object of
    /// that name must hash to it): the object is damaged or misplaced, and is
    /// never taken for the pack.
    #[error("pack {pack} cannot be published: {object} already exists and is not that pack ({detail}); run `tessera repair index`")]
    PackNameTaken {
        /// The pack being published.
        pack: PackId,
        /// The existing object under its name.
        object: String,
        /// What hashing the existing object found.
        detail: String,
    },

    /// A pack file is shorter than its structure requires.
    #[error("pack {pack} is truncated: {len} bytes, {detail}")]
    PackTruncated {
        /// The pack.
        pack: PackId,
        /// Its length on disk.
        len: u64,
        /// What is missing.
        detail: String,
    },

    /// The index names a pack whose file does not exist.
    #[error("pack {pack} is missing: {object} does not exist")]
    PackMissing {
        /// The pack.
        pack: PackId,
        /// Where it should be.
        object: String,
    },

    /// A recipe (file reconstruction) is damaged or inconsistent.
    #[error("recipe of file {file} is corrupt: {detail}")]
    RecipeCorrupt {
        /// The file whose recipe it is.
        file: FileId,
        /// What is wrong.
        detail: String,
    },

    /// An index entry could not be decoded.
    #[error("index entry {key} in {tree} is corrupt: {detail}; `tessera repair index` rebuilds the index")]
    IndexCorrupt {
        /// The index table.
        tree: &'static str,
        /// The key, in hex or text.
        key: String,
        /// What is wrong.
        detail: String,
    },

    /// The store exists but its index directory does not.
    #[error("index {} of an existing store is missing; run `tessera repair index` to rebuild it from the packs, recipes and refs", path.display())]
    IndexMissing {
        /// The index directory.
        path: PathBuf,
    },

    /// The index found its own files damaged when it was opened (and the
    /// store was opened with `rebuild_damaged_index: false`).
    #[error("index {} is damaged ({detail}); run `tessera repair index` to rebuild it from the packs, recipes and refs", path.display())]
    IndexDamaged {
        /// The index directory.
        path: PathBuf,
        /// What sled reported.
        detail: String,
    },

    /// The index database is locked by another process although the
    /// store's lock was free: the lock file was deleted (or replaced) while
    /// a process had the store open. Not damage: nothing is rebuilt.
    #[error("index {} is in use by another process, although the store's lock file was free (was it deleted while a process had the store open?); stop that process, then try again", path.display())]
    IndexInUse {
        /// The index directory.
        path: PathBuf,
    },

    /// The index (a local database) failed.
    #[error("index {}: {detail} (the index is a cache of the packs, recipes and refs: `tessera repair index` rebuilds it)", path.display())]
    Index {
        /// The index directory.
        path: PathBuf,
        /// What failed.
        detail: String,
        /// Whether the index reported its files damaged.
        damaged: bool,
    },

    /// A ref's durable copy (its ref file or object) does not decode: which
    /// file the ref names is unknown here.
    #[error("ref {name}: its ref file {object} is damaged ({detail}); `tessera verify` says whether a node's index holds a copy `tessera repair index` can rewrite it from; otherwise set the ref again (`tessera ref set`) or delete it (`tessera ref rm`)")]
    RefCorrupt {
        /// The ref (shortened if long).
        name: String,
        /// Its ref file or object.
        object: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A ref whose ref file names a file the store cannot read: its recipe
    /// is missing or damaged (see `verify`).
    #[error(
        "ref {name} names file {file}, whose recipe is missing or damaged (run `tessera verify`)"
    )]
    RefDangling {
        /// The ref (shortened if long).
        name: String,
        /// The file it names.
        file: FileId,
    },

    /// A ref object GC cannot read as the ref its key names (it does not
    /// decode, or holds another name's ref): which file it names is
    /// unknown, so GC stops before it condemns or deletes anything (spec
    /// §10.5, §10.6).
    #[error("gc stopped, nothing was deleted: ref object {object} {detail}; which file it names is unknown, so collecting could delete a named file. Run `tessera verify`, then set that ref again (`tessera ref set`) or delete it (`tessera ref rm`)")]
    RefUnreadable {
        /// The ref object.
        object: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A recipe GC cannot read (the index's copy on a directory store, the
    /// bucket's object on a shared one): which chunks its file needs is
    /// unknown, so GC stops before it condemns or deletes anything (spec
    /// §10.5).
    #[error("gc stopped, nothing was deleted: {object} {detail}; which chunks it needs is unknown, so collecting could delete them. Run `tessera verify`, then `tessera repair index` (on a shared store, on a node whose index holds a verified copy of the recipe)")]
    RecipeUnreadable {
        /// The recipe (the index's entry or the store's object).
        object: String,
        /// What is wrong with it.
        detail: String,
    },

    /// A conditional ref update lost to another writer (spec §8.3): the
    /// ref was not what the caller expected, or kept changing while the
    /// update was retried. Nothing was written.
    #[error("ref {name} changed concurrently: {detail}")]
    RefConflict {
        /// The ref (shortened if long).
        name: String,
        /// What it was expected to be and what it is.
        detail: String,
    },

    /// A lease (spec §10.6) is held by another process.
    #[error("lease {object} is held by {holder}: {detail}")]
    LeaseHeld {
        /// The lease object.
        object: String,
        /// Who holds it.
        holder: String,
        /// Until when.
        detail: String,
    },

    /// A lease this process held is no longer certainly its own: it must
    /// stop what the lease protects.
    #[error("lease {object} lost: {detail}")]
    LeaseLost {
        /// The lease object.
        object: String,
        /// Why.
        detail: String,
    },

    /// A file id, sha256, ref or other named object does not exist.
    #[error("{kind} not found: {name}")]
    NotFound {
        /// "file", "ref", "sha256", "pack", …
        kind: &'static str,
        /// The name that was looked up.
        name: String,
    },

    /// A tensor the file's description lists but whose bytes cannot be
    /// served by name: not one run of plain bytes in the file, or a name
    /// several tensors share.
    #[error("tensor {name} of file {file} cannot be read by name: {reason}")]
    TensorUnreadable {
        /// The file.
        file: FileId,
        /// The tensor name asked for (clipped).
        name: String,
        /// Why.
        reason: String,
    },

    /// A byte range outside the file.
    #[error(
        "{} is past the end of file {file} ({size} bytes)",
        if *offset > *size { format!("offset {offset}") } else { format!("range {offset}+{len}") }
    )]
    RangeOutOfBounds {
        /// The file.
        file: FileId,
        /// Requested start.
        offset: u64,
        /// Requested length.
        len: u64,
        /// The file's size.
        size: u64,
    },

    /// A file the store's policy refuses (a pickle that imports code, or
    /// any pickle under `deny`); nothing of it is kept (its chunks are
    /// unreferenced).
    #[error("{source_name} refused by policy {policy}: {reason}")]
    Refused {
        /// The input.
        source_name: String,
        /// The policy that refused it.
        policy: String,
        /// Why, naming the imports.
        reason: String,
    },

    /// Something a client sent (a pack, a file registration) was refused;
    /// nothing of it was kept.
    #[error("{what} refused: {reason}")]
    Rejected {
        /// What was refused: `pack <id>`, `file <id>`.
        what: String,
        /// Why.
        reason: String,
    },

    /// A file registration named chunks the store does not hold (a client
    /// that asks again which chunks are missing and uploads them can
    /// register it then); nothing was kept.
    #[error("file {file} refused: {missing} of its {total} chunks are not stored")]
    ChunksMissing {
        /// The file.
        file: FileId,
        /// How many of its chunks are missing.
        missing: usize,
        /// How many chunks it lists.
        total: usize,
    },

    /// A caller-supplied argument is invalid.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Another process has the store open.
    #[error(
        "store {} is locked by {} (only one process may open a store at a time)",
        path.display(),
        if *pid == 0 { "another process (starting or stopping: its pid is not recorded)".to_string() } else { format!("pid {pid}") }
    )]
    StoreLocked {
        /// The lock file.
        path: PathBuf,
        /// The pid recorded by the lock holder (0 if unknown).
        pid: u32,
    },

    /// A previous write or sync failed; the store refuses writes until reopened.
    #[error("store is poisoned by an earlier failure ({cause}); reopen it before writing again")]
    Poisoned {
        /// The failure that poisoned the store.
        #[source]
        cause: Arc<Error>,
    },

    /// The store is too busy for the operation to start (GC waiting for
    /// writers); retrying later can help.
    #[error("store busy: {0}")]
    Busy(String),

    /// An internal invariant failed: a bug in the engine, not bad input.
    #[error("internal error (a bug in tessera; please report it): {0}")]
    Bug(String),
}

impl Error {
    pub(crate) fn io(op: &'static str, object: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op,
            object: object.into(),
            source,
        }
    }

    pub(crate) fn not_found(kind: &'static str, name: &str) -> Self {
        Error::NotFound {
            kind,
            name: clip(name),
        }
    }

    /// True for "not found" errors (unknown id, sha256 or ref).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound { .. })
    }

    /// True when the error means stored data is damaged (a chunk, pack,
    /// recipe or index entry failed its checks), as opposed to a missing
    /// object, a bad argument or an I/O failure.
    pub fn is_corruption(&self) -> bool {
        matches!(
            self,
            Error::ChunkCorrupt { .. }
                | Error::PackCorrupt { .. }
                | Error::PackTruncated { .. }
                | Error::PackNameTaken { .. }
                | Error::RecipeCorrupt { .. }
                | Error::PackMissing { .. }
                | Error::RefDangling { .. }
                | Error::RefCorrupt { .. }
                | Error::RefUnreadable { .. }
                | Error::RecipeUnreadable { .. }
                | Error::ConfigMissing { .. }
                | Error::StoreGone { .. }
                | Error::IndexCorrupt { .. }
                | Error::IndexMissing { .. }
                | Error::IndexDamaged { .. }
                | Error::ConfigCorrupt { .. }
                | Error::JournalCorrupt { .. }
                | Error::Index { damaged: true, .. }
        )
    }
}

impl From<IdParseError> for Error {
    fn from(e: IdParseError) -> Self {
        Error::InvalidArgument(e.to_string())
    }
}

/// A user-supplied name as echoed in messages: at most 96 characters, then
/// `…` and the full length, so a hostile 10 KB name does not become a 10 KB
/// error line.
pub fn clip(name: &str) -> String {
    const MAX: usize = 96;
    if name.chars().count() <= MAX {
        return name.to_string();
    }
    let head: String = name.chars().take(MAX).collect();
    format!("{head}… ({} bytes)", name.len())
}
