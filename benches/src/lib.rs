//! bench harness
