//! How an [`crate::S3Store`] connects, retries, stages and caches.

use std::path::PathBuf;
use std::time::Duration;

/// Retries of transient failures (5xx answers, timeouts, dropped
/// connections), with exponential backoff and jitter (object_store's
/// `RetryConfig`). Once `max_retries` or `retry_timeout` is used up the
/// operation fails with an error that names the object and says how many
/// attempts were made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOptions {
    /// Retries after the first attempt (0: no retries).
    pub max_retries: usize,
    /// First backoff; doubles each retry (with jitter) up to `max_backoff`.
    pub init_backoff: Duration,
    /// Longest backoff between two attempts.
    pub max_backoff: Duration,
    /// No retry starts later than this after the first attempt.
    pub retry_timeout: Duration,
}

impl Default for RetryOptions {
    fn default() -> Self {
        RetryOptions {
            max_retries: 5,
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            retry_timeout: Duration::from_secs(60),
        }
    }
}

/// Options of an [`crate::S3Store`]. The defaults read the connection from
/// the standard `AWS_*` environment variables, as object_store's
/// `AmazonS3Builder::from_env()` reads them: `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` /
/// `AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` / `AWS_ENDPOINT` (an
/// S3-compatible server), `AWS_ALLOW_HTTP=true` (plain HTTP), and the other
/// `AWS_*` keys object_store knows (`AWS_TIMEOUT`, `AWS_CONNECT_TIMEOUT`,
/// `AWS_VIRTUAL_HOSTED_STYLE_REQUEST`, ...).
#[derive(Clone, Debug)]
pub struct S3Options {
    /// Read the `AWS_*` environment variables (on by default).
    pub from_env: bool,
    /// Explicit object_store S3 settings, applied after the environment:
    /// pairs such as `("aws_endpoint", "http://127.0.0.1:9000")`,
    /// `("aws_allow_http", "true")`, `("aws_access_key_id", ...)`,
    /// `("aws_region", ...)`. Unknown keys are refused when the store is
    /// built.
    pub config: Vec<(String, String)>,
    /// Local directory where objects are staged before they are uploaded.
    /// `None`: `<system temp>/tessera-s3/<hash of the store URL>`, one per
    /// store location, so [`tessera::storage::ObjectStore::discard_staged`]
    /// of one store never touches another's files.
    pub staging_dir: Option<PathBuf>,
    /// Limit on one whole HTTP request (`None`: `AWS_TIMEOUT` if set, else
    /// 60 s; a 64 MiB pack must fit in it).
    pub request_timeout: Option<Duration>,
    /// Limit on connecting (`None`: `AWS_CONNECT_TIMEOUT` if set, else 5 s).
    pub connect_timeout: Option<Duration>,
    /// Retries of transient failures.
    pub retry: RetryOptions,
    /// Ranged reads fetch and cache aligned blocks of this many bytes.
    pub block_size: u64,
    /// Bound on the in-memory cache of fetched blocks, shared by every read
    /// handle of the store (0 disables caching; concurrent readers of one
    /// block still share one request).
    pub cache_bytes: u64,
    /// A local directory for the on-disk tier of the block cache (`None`:
    /// none). Fetched blocks are kept there across processes, bounded by
    /// `disk_cache_bytes`; give each concurrently running store its own.
    pub disk_cache_dir: Option<PathBuf>,
    /// Bound on the on-disk cache's files, in bytes (least recently used
    /// blocks go first).
    pub disk_cache_bytes: u64,
    /// Most blocks fetched in one ranged GET when reads are sequential (the
    /// read-ahead window doubles from one block up to this).
    pub readahead_blocks: u64,
    /// Worker threads of the store's own tokio runtime.
    pub runtime_threads: usize,
    /// Whether several Tessera processes may use the store at once, each
    /// with its own local cache (on by default; see
    /// [`tessera::storage::ObjectStore::shared`]): refs are written with
    /// conditional writes, a node looks in the bucket for what its index
    /// lacks, and the `dirty`/`clean` markers are node-local. Off: one
    /// process at a time, like a directory store.
    pub shared: bool,
}

impl Default for S3Options {
    fn default() -> Self {
        S3Options {
            from_env: true,
            shared: true,
            config: Vec::new(),
            staging_dir: None,
            request_timeout: None,
            connect_timeout: None,
            retry: RetryOptions::default(),
            block_size: 1 << 20,
            cache_bytes: 256 << 20,
            disk_cache_dir: None,
            disk_cache_bytes: 1 << 30,
            readahead_blocks: 8,
            runtime_threads: 2,
        }
    }
}

impl S3Options {
    /// Adds an explicit object_store S3 setting (see [`S3Options::config`]).
    pub fn with_config(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// Settings for an S3-compatible server at `endpoint` (such as
    /// `http://127.0.0.1:9000`) with the given static credentials and
    /// region, ignoring the environment. Plain HTTP is allowed when the
    /// endpoint is `http://`.
    pub fn endpoint(endpoint: &str, access_key: &str, secret_key: &str, region: &str) -> Self {
        S3Options {
            from_env: false,
            ..S3Options::default()
        }
        .with_config("aws_endpoint", endpoint)
        .with_config(
            "aws_allow_http",
            if endpoint.starts_with("http://") {
                "true"
            } else {
                "false"
            },
        )
        .with_config("aws_access_key_id", access_key)
        .with_config("aws_secret_access_key", secret_key)
        .with_config("aws_region", region)
    }
}
