//! Internals for the project's own tests, fuzz targets and benchmarks
//! (feature `testing`): not part of the supported API.

pub mod fuzz;

pub use crate::chunking::{Batch, Chunker};
pub use crate::format::*;
pub use crate::ids::{check32, checksum, FILE_ID_CONTEXT, PACK_ID_CONTEXT};
pub use crate::layout::{ChunkRef, Layout};
pub use crate::pack::PackReader;
pub use crate::paths::{
    file_of_key, pack_key, pack_of_key, recipe_key, ref_key, CLEAN, CONFIG, DIRTY, GC_JOURNAL,
};
pub use crate::storage::fault::{CrashMode, Fault, FaultStorage, OpKind, OpRecord};

use std::path::Path;
use std::sync::Arc;

use crate::storage::DirStore;
use crate::{Result, Store, StoreOptions};

/// Opens a store whose objects live on a simulated filesystem (see
/// [`FaultStorage`]); its index and lock are in the real directory `root`.
pub fn open_on(fs: &FaultStorage, root: &Path, opts: StoreOptions) -> Result<Store> {
    Store::open_with(Arc::new(DirStore::over(Arc::new(fs.clone()))), root, opts)
}

/// [`Store::repair_index`] on a simulated filesystem.
pub fn repair_on(
    fs: &FaultStorage,
    root: &Path,
    opts: StoreOptions,
) -> Result<crate::RepairReport> {
    Store::repair_index_with(Arc::new(DirStore::over(Arc::new(fs.clone()))), root, opts)
}

/// The index database's log segment size (fixed per index).
pub const INDEX_SEGMENT_BYTES: usize = crate::index::SEGMENT_BYTES;

/// The pack id of a pack's bytes (spec §2).
pub fn pack_id_of(bytes: &[u8]) -> crate::PackId {
    let mut h = crate::ids::PackIdHasher::new();
    h.update(bytes);
    h.finish()
}
