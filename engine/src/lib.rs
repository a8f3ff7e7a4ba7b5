//! Tessera: a content-addressed chunk storage engine for ML model files.
//!
//! Files are split into content-defined chunks (FastCDC), identified by
//! BLAKE3, deduplicated through a sled index, compressed with zstd when it
//! pays, and appended to immutable, content-addressed pack files. A file is a
//! recipe: an ordered list of terms (runs of chunks in one pack) plus its
//! chunk list. Any file, or any byte range of one, is rebuilt from the packs,
//! and every chunk is verified against its id before its bytes leave the
//! engine.
//!
//! ```no_run
//! use tessera::{Store, StoreOptions};
//! let store = Store::open("/var/lib/tessera", StoreOptions { create: true, ..Default::default() })?;
//! let report = store.put(std::fs::File::open("model.safetensors").map_err(|e| tessera::Error::InvalidArgument(e.to_string()))?, &["acme/llm@v1:model.safetensors"])?;
//! let head = store.read_range(&report.file_id, 0, 8)?;
//! # Ok::<(), tessera::Error>(())
//! ```
//!
//! The on-disk formats are specified in `format-spec/SPEC.md`.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
pub mod check;
pub mod chunking;
mod error;
pub mod fault;
pub mod format;
pub mod fuzzing;
pub mod hash;
pub mod index;
mod mmap;
pub mod pack;
pub mod reader;
pub mod recipe;
pub mod recover;
pub mod storage;
pub mod store;

pub use chunking::ChunkParams;
pub use error::{Error, Result};
pub use hash::{ChunkId, FileId, PackId, Sha256};
pub use reader::FileReader;
pub use recover::{CatchUpReason, Recovery};
pub use storage::ReadMode;
pub use store::{FileInfo, Ingest, PutReport, Stats, Store, StoreOptions};
