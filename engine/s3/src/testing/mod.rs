//! Test support (feature `testing`): the `ObjectStore` conformance suite
//! and the helper that finds or starts an S3-compatible server. Panicking
//! is how these report, so the lints against `unwrap`/`expect` do not apply.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod conformance;
mod server;

pub use server::{required, s3_target, S3Target};
