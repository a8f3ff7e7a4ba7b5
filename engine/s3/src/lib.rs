//! Tessera's S3-compatible storage backend: [`S3Store`] implements
//! [`tessera::storage::ObjectStore`] over `s3://bucket/prefix` with the
//! `object_store` crate.
//!
//! ```no_run
//! use std::sync::Arc;
//! use tessera::{Store, StoreOptions};
//! use tessera_s3::{S3Options, S3Store};
//! // Credentials, region and endpoint from AWS_* (AWS_ENDPOINT_URL and
//! // AWS_ALLOW_HTTP=true for an S3-compatible server over plain HTTP).
//! let s3 = S3Store::from_url("s3://models/tessera", S3Options::default())?;
//! let store = Store::open_with(
//!     Arc::new(s3),
//!     "/var/cache/tessera", // the local index and lock
//!     StoreOptions { create: true, ..Default::default() },
//! )?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! How the trait maps onto S3:
//!
//! - `stage` writes a local temp file (`<staging>/<pid>-<n>.tmp`);
//!   `publish(key, Create)` uploads it with one PUT carrying
//!   `If-None-Match: *` (an existing key is `AlreadyExists`),
//!   `publish(key, Replace)` with a plain PUT. A single PUT is atomic in S3
//!   (readers see the old object or the new one) and durable when it
//!   returns; objects are at most 64 MiB, far under the 5 GiB single-PUT
//!   limit, so multipart is not used.
//! - `get` is a GET; `open` is one ranged GET of the first block (which
//!   tells the length and the ETag); `read_at` serves cached blocks and
//!   fetches missing ones with Range GETs (see [`S3Options::block_size`],
//!   [`S3Options::cache_bytes`], [`S3Options::readahead_blocks`]).
//! - `list` pages through LIST (1000 keys a page) and returns the keys
//!   relative to the prefix, sorted; `exists` is a HEAD; `delete` is a HEAD
//!   (S3 deletes a missing key without complaint; the contract wants
//!   `NotFound`) and a DELETE.
//! - `discard_staged` removes local staging leftovers; nothing staged ever
//!   reaches the bucket. `foreign` applies the directory backend's rule.
//! - Errors: `NotFound`, `AlreadyExists`, `PermissionDenied`,
//!   `InvalidInput`, `TimedOut` where they apply, otherwise `Other`; every
//!   message names the operation and `s3://bucket/prefix/key`.
//!
//! The trait is synchronous; the store runs object_store's futures on its
//! own tokio runtime (see `runtime.rs`), so it may be called from rayon
//! threads, plain threads, or inside another tokio runtime.
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod cache;
mod counters;
mod disk;
mod errors;
mod options;
mod read;
mod runtime;
mod slot;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod version;

pub use counters::S3Stats;
pub use options::{RetryOptions, S3Options};
pub use store::{CasOutcome, ETag, S3Store, Versioned};
