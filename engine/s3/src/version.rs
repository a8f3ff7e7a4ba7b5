//! The key both block caches and the fetches in flight share.

use std::sync::Arc;

/// Identifies one version of one object: `key` and its ETag.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ObjectVersion {
    pub(crate) key: Arc<str>,
    pub(crate) etag: Arc<str>,
}
