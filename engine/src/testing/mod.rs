//! Internals for the project's own tests, fuzz targets and benchmarks
//! (feature `testing`): not part of the supported API.

pub mod fuzz;
mod intercept;

pub use intercept::{Call, Intercepted, Interceptor};

pub use crate::chunking::{Batch, Chunker};
pub use crate::format::*;
pub use crate::ids::{check32, checksum, FILE_ID_CONTEXT, PACK_ID_CONTEXT};
pub use crate::layout::{ChunkRef, Layout};
pub use crate::pack::PackReader;
pub use crate::paths::{
    file_of_key, model_key, pack_key, pack_of_key, recipe_key, ref_key, CLEAN, CONFIG, DIRTY,
    GC_JOURNAL,
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

/// The chunk index alone (the database and its miss filter), for the
/// index-at-scale benchmark (`benches/benches/index.rs`).
pub struct ChunkIndex(crate::index::Index);

impl ChunkIndex {
    /// Opens (or creates) an index in `dir` with a page cache of
    /// `cache_bytes`.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Self> {
        crate::index::Index::open(dir, cache_bytes, None).map(ChunkIndex)
    }

    /// Records a sealed pack and its chunks, as a seal does.
    pub fn add_pack(&self, pack: crate::PackId, entries: &[ChunkEntry]) -> Result<()> {
        let info = crate::index::PackInfo {
            size: entries.iter().map(|e| e.record_len()).sum(),
            chunk_count: entries.len() as u32,
            raw_bytes: entries.iter().map(|e| u64::from(e.raw_len)).sum(),
        };
        let chunks: Vec<(u32, ChunkEntry)> = (0u32..).zip(entries.iter().copied()).collect();
        self.0.add_pack(pack, info, &chunks)
    }

    /// Whether a chunk is indexed (a lookup, as ingest makes).
    pub fn contains(&self, id: &crate::ChunkId) -> Result<bool> {
        Ok(self.0.chunk(id)?.is_some())
    }

    /// Makes the inserts durable.
    pub fn flush(&self) -> Result<()> {
        self.0.flush()
    }

    /// The database's size on disk as it reports it.
    pub fn size_on_disk(&self) -> Result<u64> {
        self.0.size_on_disk()
    }

    /// The miss filter's memory and whether it answers yet (the first call
    /// starts its scan).
    pub fn filter_state(&self) -> (u64, bool) {
        self.0.filter_state()
    }
}
