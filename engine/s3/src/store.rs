//! [`S3Store`]: the engine's [`ObjectStore`] over an S3 bucket and prefix.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, ObjectMeta, ObjectStoreExt, PutMode as OsPutMode,
    PutOptions, PutPayload, RetryConfig, UpdateVersion,
};
use tessera::storage::{Cas, Listed, ObjectStore, PutMode, ReadHandle, StagedObject, Version};

use crate::cache::{BlockCache, ObjectVersion};
use crate::counters::{Counters, CountingConnector, S3Stats};
use crate::disk::DiskCache;
use crate::options::{RetryOptions, S3Options};
use crate::read::{Fetching, Opened, S3ReadHandle};
use crate::runtime::Bridge;
use crate::slot::{share, Slot};

/// The store config, dirty and clean markers (see `tessera`'s `paths`): the
/// only objects allowed at the top of a store besides the fan-out prefixes.
const ROOT_OBJECTS: [&str; 3] = ["tessera.store", "dirty", "clean"];
/// Prefixes whose next level is a two-hex-digit fan-out.
const FANNED: [&str; 3] = ["packs", "recipes", "refs"];
/// Attempts of a create-only PUT that the server refused although no object
/// is there afterwards (S3 answers 409 to a conditional write that races
/// another one in flight; the other may fail).
const CREATE_ATTEMPTS: u32 = 3;

/// Objects whose length and ETag an open remembers (then it forgets all).
const KNOWN_OBJECTS: usize = 100_000;

/// Sequence numbers of staged files, unique within the process.
static NEXT_STAGED: AtomicU64 = AtomicU64::new(0);

/// An object's ETag, as the server gave it (quotes included).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl ETag {
    /// The ETag as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An object's bytes with the ETag of that version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    /// The content.
    pub data: Bytes,
    /// The ETag of this version.
    pub etag: ETag,
}

/// What a conditional write did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CasOutcome {
    /// The object was written; its new ETag.
    Written(ETag),
    /// The condition did not hold (the object changed, was deleted, or for
    /// [`S3Store::put_if_absent`], exists): nothing was written.
    Conflict,
}

/// Maps an object_store error to the `io::Error` kinds the engine relies
/// on, with a message naming the operation and the object.
pub(crate) fn os_error(op: &str, object: &str, e: object_store::Error) -> io::Error {
    use object_store::Error as E;
    let (kind, what) = match &e {
        E::NotFound { .. } => (io::ErrorKind::NotFound, "not found"),
        E::AlreadyExists { .. } => (io::ErrorKind::AlreadyExists, "already exists"),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
            (io::ErrorKind::PermissionDenied, "refused")
        }
        E::InvalidPath { .. } => (io::ErrorKind::InvalidInput, "invalid key"),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            (io::ErrorKind::Unsupported, "not supported")
        }
        E::Precondition { .. } => (io::ErrorKind::Other, "precondition failed"),
        _ => (io::ErrorKind::Other, "failed"),
    };
    io::Error::new(kind, format!("{op} {object}: {what}: {}", chain(&e)))
}

/// An error with its causes (object_store's top-level message often says
/// only "error sending request"; the cause says "timed out", "connection
/// refused", ...).
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !msg.contains(&m) {
            msg.push_str(": ");
            msg.push_str(&m);
        }
        cur = c.source();
    }
    msg
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Splits `s3://bucket/prefix` into the bucket and the prefix (no leading
/// or trailing `/`).
fn parse_url(url: &str) -> io::Result<(String, String)> {
    let rest = url
        .strip_prefix("s3://")
        .ok_or_else(|| invalid(format!("{url}: not an s3://bucket/prefix URL")))?;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(invalid(format!("{url}: no bucket name")));
    }
    let prefix = prefix.trim_matches('/');
    if !prefix.is_empty() {
        Path::parse(prefix).map_err(|e| invalid(format!("{url}: bad prefix: {e}")))?;
    }
    Ok((bucket.to_string(), prefix.to_string()))
}

fn is_staging_name(name: &str) -> bool {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    name.strip_suffix(".tmp")
        .and_then(|s| s.split_once('-'))
        .is_some_and(|(pid, n)| digits(pid) && digits(n))
}

/// The shared state of a store and its read handles.
pub(crate) struct Inner {
    pub(crate) url: String,
    prefix: String,
    pub(crate) client: Arc<dyn object_store::ObjectStore>,
    pub(crate) bridge: Bridge,
    pub(crate) counters: Arc<Counters>,
    pub(crate) cache: BlockCache,
    staging: PathBuf,
    pub(crate) block_size: u64,
    pub(crate) readahead_blocks: u64,
    fetching: Mutex<Fetching>,
    opening: Mutex<OpenState>,
    shared: bool,
    /// How a create-only PUT that failed in transport is retried (see
    /// [`create`]).
    create_retry: RetryOptions,
}

/// Opens: what earlier ones learned, and the ones in flight.
#[derive(Default)]
struct OpenState {
    known: HashMap<String, Opened>,
    inflight: HashMap<String, Arc<Slot<OpenResult>>>,
}

/// What an open learned, and the first block if it fetched it.
type OpenResult = (Opened, Option<Bytes>);

impl Inner {
    pub(crate) fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    fn full(&self, key: &str) -> String {
        if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    fn path(&self, key: &str) -> io::Result<Path> {
        if key.is_empty() || key.starts_with('/') || key.ends_with('/') {
            return Err(invalid(format!(
                "{}: not an object key",
                self.describe(key)
            )));
        }
        Path::parse(self.full(key))
            .map_err(|e| invalid(format!("{}: not an object key: {e}", self.describe(key))))
    }

    /// The key of a listed object, relative to the store's prefix.
    fn relative<'a>(&self, location: &'a Path) -> Option<&'a str> {
        let s = location.as_ref();
        if self.prefix.is_empty() {
            Some(s)
        } else {
            s.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
        }
    }

    fn run<T: Send + 'static>(
        &self,
        op: &str,
        key: &str,
        fut: impl std::future::Future<Output = io::Result<T>> + Send + 'static,
    ) -> io::Result<T> {
        self.bridge
            .run(|| format!("{op} {}", self.describe(key)), fut)
    }

    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> io::Result<()> {
        let path = self.path(key)?;
        let client = self.client.clone();
        let retry = self.create_retry.clone();
        let object = self.describe(key);
        let payload = PutPayload::from(data);
        let r = self.run("PUT", key, async move {
            match mode {
                PutMode::Replace => client
                    .put_opts(&path, payload, PutOptions::from(OsPutMode::Overwrite))
                    .await
                    .map(|_| ())
                    .map_err(|e| os_error("PUT", &object, e)),
                PutMode::Create => create(client.as_ref(), &path, payload, &object, &retry)
                    .await
                    .map(|_| ()),
            }
        });
        self.forget(key);
        r
    }

    pub(crate) fn fetching(&self) -> MutexGuard<'_, Fetching> {
        self.fetching.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn opening(&self) -> MutexGuard<'_, OpenState> {
        self.opening.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets what is cached about `key` (after this store wrote or
    /// deleted it).
    fn forget(&self, key: &str) {
        self.opening().known.remove(key);
        self.cache.invalidate(key);
    }

    /// Opens an object for ranged reads. One ranged GET of its first block
    /// tells its length and ETag and fills the cache with the block that
    /// readers of a pack want first (its header); an empty object (which a
    /// range cannot address) is asked for with a HEAD. Concurrent opens of
    /// one key share that request, and reopening an object whose first
    /// block is still cached sends none (`open` is for immutable objects;
    /// this store's own writes and deletes forget what it knew).
    pub(crate) fn open(self: &Arc<Self>, key: &str) -> io::Result<S3ReadHandle> {
        let path = self.path(key)?;
        let slot = {
            let mut st = self.opening();
            if let Some(m) = st.known.get(key) {
                if m.len == 0 {
                    return Ok(S3ReadHandle::new(self.clone(), key, path, m.clone(), None));
                }
                if let Some(first) = self.cache.get(&m.version, 0) {
                    self.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                    let m = m.clone();
                    return Ok(S3ReadHandle::new(self.clone(), key, path, m, Some(first)));
                }
            }
            if let Some(slot) = st.inflight.get(key) {
                Some(slot.clone())
            } else {
                st.inflight.insert(key.to_string(), Arc::new(Slot::new()));
                None
            }
        };
        let (meta, first) = match slot {
            Some(slot) => slot.wait()?,
            None => {
                let r = self.open_request(key, &path);
                let mut st = self.opening();
                if let Some(slot) = st.inflight.remove(key) {
                    slot.complete(r.as_ref().map(Clone::clone).map_err(share));
                }
                if let Ok((m, _)) = &r {
                    if st.known.len() >= KNOWN_OBJECTS {
                        st.known.clear();
                    }
                    st.known.insert(key.to_string(), m.clone());
                }
                r?
            }
        };
        Ok(S3ReadHandle::new(self.clone(), key, path, meta, first))
    }

    fn open_request(&self, key: &str, path: &Path) -> io::Result<OpenResult> {
        let client = self.client.clone();
        let object = self.describe(key);
        let bs = self.block_size;
        let p = path.clone();
        let (meta, first) = self.run("open", key, async move {
            let opts = GetOptions::new().with_range(Some(0..bs));
            match client.get_opts(&p, opts).await {
                Ok(r) => {
                    let meta = r.meta.clone();
                    let data = r.bytes().await.map_err(|e| os_error("GET", &object, e))?;
                    Ok((meta, Some(data)))
                }
                Err(e @ object_store::Error::NotFound { .. }) => Err(os_error("GET", &object, e)),
                Err(_) => {
                    let meta = client
                        .head(&p)
                        .await
                        .map_err(|e| os_error("HEAD", &object, e))?;
                    Ok((meta, None))
                }
            }
        })?;
        let opened = Opened {
            len: meta.size,
            etag: meta.e_tag.clone(),
            version: ObjectVersion {
                key: key.into(),
                etag: version_tag(&meta).into(),
            },
        };
        let expect_first = meta.size.min(bs);
        if let Some(d) = &first {
            if d.len() as u64 != expect_first {
                return Err(io::Error::other(format!(
                    "GET {}: asked for bytes 0..{expect_first} of a {}-byte object, got {}",
                    self.describe(key),
                    meta.size,
                    d.len()
                )));
            }
            self.cache.insert(&opened.version, 0, d.clone());
        }
        Ok((opened, first))
    }
}

/// A version tag for the cache: the ETag, or the size and modification
/// time of a server that sends none.
fn version_tag(meta: &ObjectMeta) -> String {
    meta.e_tag
        .clone()
        .unwrap_or_else(|| format!("{}@{}", meta.size, meta.last_modified))
}

/// A create-only PUT (`If-None-Match: *`). A refusal is confirmed with a
/// HEAD: S3 also refuses (409) a conditional write racing another one in
/// flight, and if the other fails nothing is there, so the PUT is retried.
///
/// object_store does not retry a create-only PUT whose connection failed
/// after it was sent (it is not idempotent in general). This one is retried
/// here, with the store's backoff: an attempt that landed although its
/// answer was lost makes the retry find the object (`AlreadyExists`), which
/// every caller handles as "there" — packs and recipes are named by their
/// content, and the engine reads back and checks the config, refs and
/// leases it created.
async fn create(
    client: &dyn object_store::ObjectStore,
    path: &Path,
    payload: PutPayload,
    object: &str,
    retry: &RetryOptions,
) -> io::Result<Option<ETag>> {
    let mut attempt = 0;
    let mut transport_retries = 0;
    let started = std::time::Instant::now();
    let mut backoff = retry.init_backoff;
    loop {
        attempt += 1;
        let r = client
            .put_opts(path, payload.clone(), PutOptions::from(OsPutMode::Create))
            .await;
        match r {
            Ok(r) => return Ok(r.e_tag.map(ETag)),
            Err(e @ object_store::Error::AlreadyExists { .. }) => match client.head(path).await {
                Ok(_) => return Err(os_error("create-only PUT", object, e)),
                Err(object_store::Error::NotFound { .. }) if attempt < CREATE_ATTEMPTS => {
                    tokio::time::sleep(Duration::from_millis(50 << attempt)).await;
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(io::Error::other(format!(
                        "create-only PUT {object}: refused {attempt} times as conflicting \
                         although no object is there: {e}"
                    )))
                }
                Err(h) => return Err(os_error("HEAD", object, h)),
            },
            Err(e @ object_store::Error::Generic { .. })
                if transport_retries < retry.max_retries
                    && started.elapsed() + backoff < retry.retry_timeout =>
            {
                transport_retries += 1;
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(retry.max_backoff);
                let _ = e;
            }
            Err(e) => return Err(os_error("create-only PUT", object, e)),
        }
    }
}

/// Tessera's storage backend over an S3-compatible bucket: every object of
/// a store lives under `s3://bucket/prefix/`; staging and the read cache are
/// local. See the crate docs for the semantics.
#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("url", &self.inner.url)
            .field("staging", &self.inner.staging)
            .finish()
    }
}

impl S3Store {
    /// The store at `s3://bucket/prefix` (the prefix may be empty), with
    /// the connection from the `AWS_*` environment variables and/or
    /// `options.config`. Nothing is sent until the first operation.
    pub fn from_url(url: &str, options: S3Options) -> io::Result<S3Store> {
        let (bucket, prefix) = parse_url(url)?;
        let url = if prefix.is_empty() {
            format!("s3://{bucket}")
        } else {
            format!("s3://{bucket}/{prefix}")
        };
        let mut b = if options.from_env {
            AmazonS3Builder::from_env()
        } else {
            AmazonS3Builder::new()
        };
        for (k, v) in &options.config {
            let key: AmazonS3ConfigKey = k
                .parse()
                .map_err(|e| invalid(format!("{url}: S3 setting {k:?}: {e}")))?;
            b = b.with_config(key, v);
        }
        b = b.with_bucket_name(&bucket);
        let ms = |d: Duration| format!("{}ms", d.as_millis());
        let timeout_key = AmazonS3ConfigKey::Client(ClientConfigKey::Timeout);
        let request_timeout = options.request_timeout.unwrap_or(Duration::from_secs(60));
        if options.request_timeout.is_some() || b.get_config_value(&timeout_key).is_none() {
            b = b.with_config(timeout_key, ms(request_timeout));
        }
        let connect_key = AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout);
        let connect_timeout = options.connect_timeout.unwrap_or(Duration::from_secs(5));
        if options.connect_timeout.is_some() || b.get_config_value(&connect_key).is_none() {
            b = b.with_config(connect_key, ms(connect_timeout));
        }
        let r = &options.retry;
        b = b.with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: r.init_backoff,
                max_backoff: r.max_backoff,
                base: 2.0,
            },
            max_retries: r.max_retries,
            retry_timeout: r.retry_timeout,
        });
        let counters = Arc::new(Counters::default());
        b = b.with_http_connector(CountingConnector {
            counters: counters.clone(),
        });
        let client = b
            .build()
            .map_err(|e| invalid(format!("{url}: configure the S3 client: {e}")))?;
        // A last-resort bound on any one call: retries stop starting after
        // `retry_timeout`, each attempt is bounded by the request timeout.
        let deadline = r.retry_timeout
            + r.max_backoff
            + request_timeout * (CREATE_ATTEMPTS + 1)
            + Duration::from_secs(30);
        let bridge = Bridge::new(options.runtime_threads, deadline)?;
        let staging = options.staging_dir.clone().unwrap_or_else(|| {
            let h = blake3::hash(url.as_bytes()).to_hex();
            std::env::temp_dir()
                .join("tessera-s3")
                .join(&h.as_str()[..16])
        });
        let disk = match &options.disk_cache_dir {
            Some(d) => Some(DiskCache::open(d, options.disk_cache_bytes)?),
            None => None,
        };
        Ok(S3Store {
            inner: Arc::new(Inner {
                url,
                prefix,
                client: Arc::new(client),
                bridge,
                counters: counters.clone(),
                cache: BlockCache::new(options.cache_bytes, disk, counters.clone()),
                staging,
                block_size: options.block_size.max(1),
                readahead_blocks: options.readahead_blocks.max(1),
                fetching: Mutex::new(HashMap::new()),
                opening: Mutex::new(OpenState::default()),
                shared: options.shared,
                create_retry: options.retry.clone(),
            }),
        })
    }

    /// Request counters since the store was built.
    pub fn stats(&self) -> S3Stats {
        self.inner.counters.snapshot()
    }

    /// Bytes held by the in-memory block cache now.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.cache.bytes()
    }

    /// Bytes held by the on-disk block cache (0 without one).
    pub fn disk_cached_bytes(&self) -> u64 {
        self.inner.cache.disk_bytes()
    }

    /// The local directory where objects are staged.
    pub fn staging_dir(&self) -> &std::path::Path {
        &self.inner.staging
    }

    /// Reads a whole object with the ETag of the version read (for a later
    /// [`S3Store::put_if_match`]); a missing object is `NotFound`.
    pub fn get_with_etag(&self, key: &str) -> io::Result<Versioned> {
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        self.inner.run("GET", key, async move {
            let r = client
                .get(&path)
                .await
                .map_err(|e| os_error("GET", &object, e))?;
            let etag = r.meta.e_tag.clone();
            let data = r.bytes().await.map_err(|e| os_error("GET", &object, e))?;
            let etag = etag.ok_or_else(|| {
                io::Error::other(format!("GET {object}: the server sent no ETag"))
            })?;
            Ok(Versioned {
                data,
                etag: ETag(etag),
            })
        })
    }

    /// Replaces `key` with `data` only if its current ETag is `etag`
    /// (`If-Match`); a changed or deleted object is [`CasOutcome::Conflict`].
    /// Needs a server that honours `If-Match` on PUT (AWS S3 since 2024,
    /// MinIO, R2, moto 5.2: see the README).
    pub fn put_if_match(&self, key: &str, data: &[u8], etag: &ETag) -> io::Result<CasOutcome> {
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let mode = OsPutMode::Update(UpdateVersion {
            e_tag: Some(etag.0.clone()),
            version: None,
        });
        let r = self.inner.run("conditional PUT", key, async move {
            match client
                .put_opts(&path, payload, PutOptions::from(mode))
                .await
            {
                Ok(r) => r
                    .e_tag
                    .map(|t| CasOutcome::Written(ETag(t)))
                    .ok_or_else(|| {
                        io::Error::other(format!(
                            "conditional PUT {object}: the server sent no ETag"
                        ))
                    }),
                Err(object_store::Error::Precondition { .. }) => Ok(CasOutcome::Conflict),
                Err(e) => Err(os_error("conditional PUT", &object, e)),
            }
        });
        self.inner.forget(key);
        r
    }

    /// Creates `key` only if it does not exist (`If-None-Match: *`), and
    /// returns the new ETag; an existing object is [`CasOutcome::Conflict`].
    pub fn put_if_absent(&self, key: &str, data: &[u8]) -> io::Result<CasOutcome> {
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        let payload = PutPayload::from(Bytes::copy_from_slice(data));
        let retry = self.inner.create_retry.clone();
        self.inner.run("create-only PUT", key, async move {
            match create(client.as_ref(), &path, payload, &object, &retry).await {
                Ok(Some(t)) => Ok(CasOutcome::Written(t)),
                Ok(None) => Err(io::Error::other(format!(
                    "create-only PUT {object}: the server sent no ETag"
                ))),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(CasOutcome::Conflict),
                Err(e) => Err(e),
            }
        })
    }

    /// `list_with_delimiter` under `rel` (relative to the store prefix).
    fn list_level(&self, rel: &str) -> io::Result<object_store::ListResult> {
        let full = if rel.is_empty() {
            self.inner.prefix.clone()
        } else {
            self.inner.full(rel)
        };
        let p = if full.is_empty() {
            None
        } else {
            Some(Path::parse(&full).map_err(|e| invalid(format!("{full}: {e}")))?)
        };
        let client = self.inner.client.clone();
        let object = if rel.is_empty() {
            self.inner.url.clone()
        } else {
            self.inner.describe(rel)
        };
        self.inner.run("LIST", rel, async move {
            client
                .list_with_delimiter(p.as_ref())
                .await
                .map_err(|e| os_error("LIST", &format!("{object}/"), e))
        })
    }

    fn last_segment(p: &Path) -> String {
        p.as_ref()
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// An object being written to a local temp file, uploaded by `publish`.
struct Staged {
    inner: Arc<Inner>,
    path: PathBuf,
    file: Option<BufWriter<File>>,
}

impl Staged {
    fn err(&self, what: &str, e: io::Error) -> io::Error {
        io::Error::new(
            e.kind(),
            format!("{what} staged object {}: {e}", self.path.display()),
        )
    }
}

impl StagedObject for Staged {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let r = match self.file.as_mut() {
            Some(f) => f.write_all(buf),
            None => Err(io::Error::other("already published")),
        };
        r.map_err(|e| self.err("write", e))
    }

    fn publish(mut self: Box<Self>, key: &str, mode: PutMode) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            f.flush().map_err(|e| self.err("flush", e))?;
        }
        let data = fs::read(&self.path).map_err(|e| self.err("read back", e))?;
        // The bytes are in memory now; the file goes whatever the upload does.
        let _ = fs::remove_file(&self.path);
        self.inner.put(key, Bytes::from(data), mode)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        // Never published (or published: then already gone).
        drop(self.file.take());
        let _ = fs::remove_file(&self.path);
    }
}

impl ObjectStore for S3Store {
    fn location(&self) -> String {
        self.inner.url.clone()
    }

    fn describe(&self, key: &str) -> String {
        self.inner.describe(key)
    }

    fn stage(&self) -> io::Result<Box<dyn StagedObject>> {
        let dir = &self.inner.staging;
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "create staging directory {} for {}: {e}",
                    dir.display(),
                    self.inner.url
                ),
            )
        })?;
        loop {
            let path = dir.join(format!(
                "{}-{}.tmp",
                std::process::id(),
                NEXT_STAGED.fetch_add(1, Ordering::Relaxed)
            ));
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(f) => {
                    return Ok(Box::new(Staged {
                        inner: self.inner.clone(),
                        path,
                        file: Some(BufWriter::with_capacity(1 << 20, f)),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("create staged object {}: {e}", path.display()),
                    ))
                }
            }
        }
    }

    fn put(&self, key: &str, data: &[u8], mode: PutMode) -> io::Result<()> {
        // Small whole objects (refs, markers, config) need no staging file.
        self.inner.put(key, Bytes::copy_from_slice(data), mode)
    }

    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        self.inner.run("GET", key, async move {
            let r = client
                .get(&path)
                .await
                .map_err(|e| os_error("GET", &object, e))?;
            let b = r.bytes().await.map_err(|e| os_error("GET", &object, e))?;
            Ok(b.to_vec())
        })
    }

    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>> {
        Ok(Arc::new(self.inner.open(key)?))
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        Ok(self
            .list_metas(prefix)?
            .into_iter()
            .map(|(k, _)| k)
            .collect())
    }

    fn shared(&self) -> bool {
        self.inner.shared
    }

    fn get_versioned(&self, key: &str) -> io::Result<Option<(Vec<u8>, Version)>> {
        match self.get_with_etag(key) {
            Ok(v) => Ok(Some((v.data.to_vec(), Version(v.etag.0)))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn put_if_version(&self, key: &str, data: &[u8], expect: Option<&Version>) -> io::Result<Cas> {
        let r = match expect {
            None => self.put_if_absent(key, data)?,
            Some(v) => self.put_if_match(key, data, &ETag(v.0.clone()))?,
        };
        Ok(match r {
            CasOutcome::Written(t) => Cas::Written(Version(t.0)),
            CasOutcome::Conflict => Cas::Conflict,
        })
    }

    fn list_versioned(&self, prefix: &str) -> io::Result<Vec<Listed>> {
        Ok(self
            .list_metas(prefix)?
            .into_iter()
            .map(|(key, m)| Listed {
                key,
                version: m.e_tag.map(Version),
                modified: Some(std::time::SystemTime::from(m.last_modified)),
            })
            .collect())
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        self.inner.run("HEAD", key, async move {
            match client.head(&path).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(os_error("HEAD", &object, e)),
            }
        })
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        // S3 answers a DELETE of a missing key with success; the contract
        // wants NotFound, so a HEAD comes first.
        let path = self.inner.path(key)?;
        let client = self.inner.client.clone();
        let object = self.inner.describe(key);
        let r = self.inner.run("DELETE", key, async move {
            client
                .head(&path)
                .await
                .map_err(|e| os_error("DELETE", &object, e))?;
            client
                .delete(&path)
                .await
                .map_err(|e| os_error("DELETE", &object, e))
        });
        self.inner.forget(key);
        r
    }

    fn discard_staged(&self) -> io::Result<()> {
        let dir = &self.inner.staging;
        let entries = match fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("list staging directory {}: {e}", dir.display()),
                ))
            }
        };
        for entry in entries {
            let entry = entry.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("list staging directory {}: {e}", dir.display()),
                )
            })?;
            let name = entry.file_name();
            if name.to_str().is_some_and(is_staging_name) {
                let p = entry.path();
                match fs::remove_file(&p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!("remove staged object {}: {e}", p.display()),
                        ))
                    }
                }
            }
        }
        Ok(())
    }

    fn foreign(&self) -> io::Result<Option<String>> {
        // The same rule as the directory backend: the markers and config at
        // the top, and packs/, recipes/, refs/ holding only two-hex-digit
        // fan-out prefixes. Staging is local, so nothing else belongs here.
        let top = self.list_level("")?;
        for o in &top.objects {
            let name = Self::last_segment(&o.location);
            if !ROOT_OBJECTS.contains(&name.as_str()) {
                return Ok(Some(format!("it holds {name:?}")));
            }
        }
        for p in &top.common_prefixes {
            let name = Self::last_segment(p);
            if !FANNED.contains(&name.as_str()) {
                return Ok(Some(format!("it holds {name:?}")));
            }
            let level = self.list_level(&name)?;
            if let Some(o) = level.objects.first() {
                let fan = Self::last_segment(&o.location);
                return Ok(Some(format!("it holds {name}/{fan}")));
            }
            for f in &level.common_prefixes {
                let fan = Self::last_segment(f);
                if fan.len() != 2 || !fan.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Ok(Some(format!("it holds {name}/{fan}")));
                }
            }
        }
        Ok(None)
    }
}

impl S3Store {
    /// Every object under `prefix` (keys relative to the store), sorted,
    /// with what the listing says of it.
    fn list_metas(&self, prefix: &str) -> io::Result<Vec<(String, ObjectMeta)>> {
        let full = self.inner.full(prefix);
        // object_store lists whole path segments: list the deepest complete
        // "directory" of the prefix, then keep the keys that start with it.
        let dir = full.rfind('/').map_or("", |i| &full[..i]);
        let dir = if dir.is_empty() {
            None
        } else {
            Some(Path::parse(dir).map_err(|e| {
                invalid(format!(
                    "list {}: bad prefix: {e}",
                    self.inner.describe(prefix)
                ))
            })?)
        };
        let client = self.inner.client.clone();
        let object = format!("{}*", self.inner.describe(prefix));
        let metas: Vec<ObjectMeta> = self.inner.run("LIST", prefix, async move {
            client
                .list(dir.as_ref())
                .try_collect()
                .await
                .map_err(|e| os_error("LIST", &object, e))
        })?;
        let mut keys: Vec<(String, ObjectMeta)> = metas
            .into_iter()
            .filter_map(|m| {
                let k = self.inner.relative(&m.location)?.to_string();
                k.starts_with(prefix).then_some((k, m))
            })
            .collect();
        keys.sort_by(|a, b| a.0.cmp(&b.0));
        keys.dedup_by(|a, b| a.0 == b.0);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_bucket_and_prefix() {
        assert_eq!(
            parse_url("s3://b/a/b/").expect("url"),
            ("b".into(), "a/b".into())
        );
        assert_eq!(parse_url("s3://b").expect("url"), ("b".into(), "".into()));
        assert!(parse_url("http://b/x").is_err());
        assert!(parse_url("s3:///x").is_err());
        assert!(parse_url("s3://b/a//b").is_err());
    }

    #[test]
    fn staging_names_are_recognised() {
        assert!(is_staging_name("12-3.tmp"));
        assert!(!is_staging_name("12-3.pack"));
        assert!(!is_staging_name("x-3.tmp"));
        assert!(!is_staging_name("notes.txt"));
    }

    #[test]
    fn errors_keep_the_engine_kinds_and_name_the_object() {
        let nf = object_store::Error::NotFound {
            path: "p/k".into(),
            source: "404".into(),
        };
        let e = os_error("GET", "s3://b/p/k", nf);
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(
            e.to_string().starts_with("GET s3://b/p/k: not found"),
            "{e}"
        );
        let ae = object_store::Error::AlreadyExists {
            path: "p/k".into(),
            source: "412".into(),
        };
        assert_eq!(
            os_error("PUT", "s3://b/p/k", ae).kind(),
            io::ErrorKind::AlreadyExists
        );
        let g = object_store::Error::Generic {
            store: "S3",
            source: "timeout".into(),
        };
        let e = os_error("PUT", "s3://b/p/k", g);
        assert_eq!(e.kind(), io::ErrorKind::Other);
        assert!(e.to_string().contains("s3://b/p/k"), "{e}");
    }

    #[test]
    fn a_bad_setting_is_refused_naming_the_store() {
        let e = S3Store::from_url(
            "s3://b/p",
            S3Options::default().with_config("aws_no_such_setting", "1"),
        )
        .expect_err("unknown key");
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("s3://b/p"), "{e}");
    }
}
