//! Test support (feature `testing`): the `ObjectStore` conformance suite
//! and the helper that finds or starts an S3-compatible server. Panicking
//! is how these report, so the lints against `unwrap`/`expect` do not apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod conformance;
mod server;

pub use server::{required, s3_target, S3Target};

use std::path::Path;
use std::sync::Arc;

use tessera::{Store, StoreOptions};

use crate::S3Store;

/// One node of a multi-node test: its own S3 client over the bucket, and
/// a store whose local cache (and the client's staging) is its own
/// directory.
pub struct Node {
    /// The node's client, to look at or tamper with the bucket directly.
    pub s3: Arc<S3Store>,
    /// The store as the node sees it.
    pub store: Store,
}

/// Store options for a GC test node: 1 MiB packs (many packs from small
/// files), and a writer check good for 300 ms, so a short writer window
/// keeps the rule (at least twice the check).
pub fn gc_test_options(create: bool) -> StoreOptions {
    StoreOptions {
        create,
        pack_target_bytes: 1 << 20,
        gc_check_valid: std::time::Duration::from_millis(300),
        ..StoreOptions::default()
    }
}

impl S3Target {
    /// Opens a node over `url` with its cache in `local`.
    pub fn node(&self, url: &str, local: &Path, opts: StoreOptions) -> Node {
        let mut o = self.options();
        o.staging_dir = Some(local.join("staging"));
        let s3 = Arc::new(S3Store::from_url(url, o).unwrap_or_else(|e| panic!("{url}: {e}")));
        let store = Store::open_with(s3.clone(), local, opts)
            .unwrap_or_else(|e| panic!("open {url} with cache {}: {e}", local.display()));
        Node { s3, store }
    }
}
