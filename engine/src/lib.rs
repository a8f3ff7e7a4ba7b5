//! Tessera: a content-addressed chunk storage engine for ML model files.
//!
//! Files are split into content-defined chunks (FastCDC), identified by
//! BLAKE3, deduplicated through an index, compressed with zstd when it
//! pays, and appended to immutable, content-addressed packs. A file is a
//! recipe: an ordered list of terms (runs of chunks in one pack) plus its
//! chunk list. Any file, or any byte range of one, is rebuilt from the packs,
//! and every chunk is verified against its id before its bytes leave the
//! engine.
//!
//! ```no_run
//! use tessera::{Store, StoreOptions};
//! let store = Store::open("/var/lib/tessera", StoreOptions { create: true, ..Default::default() })?;
//! let report = store.put_file("model.safetensors", &["acme/llm@v1:model.safetensors"])?;
//! let head = store.read_range(&report.file_id, 0, 8)?;
//! store.close()?;
//! # Ok::<(), tessera::Error>(())
//! ```
//!
//! Layers, top down (each uses only those below it; `format-spec/SPEC.md`
//! specifies the bytes):
//!
//! - [`Store`]: the façade, one call per operation;
//! - operations, one module each: ingest, read, refs, verify, recover and
//!   repair (and open/close);
//! - the shared state of an open store (`core`);
//! - packs (building, reading, the pack cache), the index (a local,
//!   rebuildable cache; sled confined to one module), the layout of a file;
//! - the on-disk formats and chunk codecs;
//! - [`storage`]: one trait with object semantics, through which every
//!   byte of the store's objects goes ([`storage::DirStore`] for a local
//!   directory);
//! - ids, object names, errors.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod chunking;
mod codec;
mod condemned;
mod core;
mod error;
mod format;
mod gc;
mod ids;
mod index;
mod ingest;
mod inventory;
mod layout;
pub mod lease;
mod local;
mod models;
mod open;
mod options;
mod pack;
mod packwriter;
mod paths;
mod read;
mod recover;
mod refresh;
mod refs;
mod remote;
mod repack;
mod repair;
mod report;
mod salvage;
mod shared_gc;
mod shared_refs;
pub mod storage;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod transfer;
mod verify;

pub use chunking::ChunkParams;
pub use error::{clip as clip_name, Error, Result};
pub use gc::{GcOptions, GcReport};
pub use ids::{ChunkId, FileId, FileIdHasher, IdParseError, PackId, Sha256};
pub use ingest::{Ingest, PutReport};
pub use options::{StoreOptions, MAX_DURATION};
pub use read::{unwrap_io, FileInfo, FileReader};
pub use refresh::RefreshReport;
pub use refs::{validate as check_ref_name, NAME_PREFIXES};
pub use repack::{RepackOptions, RepackReport};
pub use repair::ConfigRepair;
pub use report::{CatchUpReason, Problem, Recovery, RepairReport};
pub use storage::ReadMode;
pub use store::{Stats, Store};
pub use tessera_model::{Format, ModelInfo, PicklePolicy, TensorInfo, Verdict};
pub use transfer::{
    verify_fetched, within_spans, AdmitReport, Assembly, DownloadPlan, Fetch, PackBytes,
    ReconChunk, ReconTerm, Reconstruction, VerifiedChunks,
};
pub use verify::{VerifyOptions, VerifyReport};
