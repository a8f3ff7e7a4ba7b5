//! How to open a store.

use std::time::Duration;

use crate::chunking::ChunkParams;
use crate::error::{Error, Result};
use crate::storage::ReadMode;
use tessera_model::PicklePolicy;

/// The longest time span any option takes (100 years of 365.25 days):
/// longer ones are refused, so that no clock arithmetic on them overflows
/// (an `Instant` plus it, or it in milliseconds as a `u64`).
pub const MAX_DURATION: Duration = Duration::from_secs(3_155_760_000);

/// Refuses a time span longer than [`MAX_DURATION`], naming the option.
pub(crate) fn check_duration(what: &str, d: Duration) -> Result<()> {
    if d <= MAX_DURATION {
        return Ok(());
    }
    Err(Error::InvalidArgument(format!(
        "{what} of {} s is longer than the most allowed ({} s, 100 years)",
        d.as_secs(),
        MAX_DURATION.as_secs()
    )))
}

/// A time span in milliseconds, saturating at `u64::MAX` (never wrapping).
pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How to open a store. The defaults suit a registry server.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Chunking parameters. `None` accepts whatever the store was created
    /// with (and uses the default when creating); `Some` must match.
    pub chunking: Option<ChunkParams>,
    /// Create the store if the location holds none (it must be new or empty).
    pub create: bool,
    /// Seal a pack once it would exceed this many bytes.
    pub pack_target_bytes: u64,
    /// zstd level for chunk compression (0 disables compression).
    pub zstd_level: i32,
    /// Store a chunk compressed only if that saves at least this fraction.
    pub min_compression_savings: f64,
    /// Bytes read and chunked per batch while ingesting (memory bound).
    pub ingest_batch_bytes: usize,
    /// How a directory store reads packs.
    pub read_mode: ReadMode,
    /// Number of open packs kept.
    pub pack_cache: usize,
    /// Number of decoded recipes kept.
    pub recipe_cache: usize,
    /// Most memory the decoded recipes kept take (a recipe lists every
    /// chunk of its file: about 50 bytes each, 80 MB for a 100 GB file).
    pub recipe_cache_bytes: u64,
    /// The index's page-cache size.
    pub index_cache_bytes: u64,
    /// Chunks decoded ahead by a sequential [`crate::FileReader`].
    pub read_ahead_chunks: usize,
    /// Open an existing store whose index directory is missing, with an
    /// empty index (only `repair index` wants this).
    pub allow_missing_index: bool,
    /// What ingest does with files that contain pickles (which run code when
    /// loaded): `DenyUnsafe` (the default) refuses those importing anything
    /// outside the allowlist of ordinary checkpoints, `Deny` any pickle,
    /// `Allow` records the verdict only.
    pub pickle_policy: PicklePolicy,
    /// How long to wait for another process to release the store's lock
    /// (`None`: fail at once with [`Error::StoreLocked`]).
    pub lock_wait: Option<std::time::Duration>,
    /// When the index reports its own files damaged at open, delete it and
    /// rebuild it from the packs, recipe files and ref files (as `repair
    /// index` would). Off: opening fails with [`crate::Error::IndexDamaged`].
    pub rebuild_damaged_index: bool,
    /// For a store shared by several processes (an S3 bucket): refresh this
    /// node's index from a listing at open when the last refresh is older
    /// than this ([`crate::Store::refresh`]). `None`: only on demand (what
    /// this node lacks is still found on a miss).
    pub refresh_after: Option<std::time::Duration>,
    /// For a shared store: how long a writer's check of the GC's condemned
    /// set stays good (it publishes within this long of the check, or fails
    /// and says retry; spec §10.6). Every node of a store must use at most
    /// half of the collector's writer window ([`crate::GcOptions`]).
    pub gc_check_valid: std::time::Duration,
}

impl StoreOptions {
    /// Refuses time spans too long to compute with ([`MAX_DURATION`]).
    /// `lock_wait` is exempt: `Duration::MAX` there means "wait forever".
    pub(crate) fn check(&self) -> Result<()> {
        if let Some(d) = self.refresh_after {
            check_duration("refresh_after", d)?;
        }
        check_duration("gc_check_valid", self.gc_check_valid)
    }
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            chunking: None,
            create: false,
            pack_target_bytes: 64 << 20,
            zstd_level: 3,
            min_compression_savings: 0.05,
            ingest_batch_bytes: 8 << 20,
            read_mode: ReadMode::Mmap,
            pack_cache: 512,
            recipe_cache: 64,
            recipe_cache_bytes: 256 << 20,
            index_cache_bytes: 256 << 20,
            read_ahead_chunks: 16,
            allow_missing_index: false,
            lock_wait: None,
            pickle_policy: PicklePolicy::DenyUnsafe,
            rebuild_damaged_index: true,
            refresh_after: None,
            gc_check_valid: std::time::Duration::from_secs(30),
        }
    }
}
