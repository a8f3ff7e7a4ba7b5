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

use crate::cache::BlockCache;
use crate::counters::{Counters, CountingConnector, S3Stats};
use crate::disk::DiskCache;
use crate::errors::os_error;
use crate::options::{RetryOptions, S3Options};
use crate::read::{Opened, Reads, S3ReadHandle};
use crate::runtime::Bridge;
use crate::slot::{share, Slot};
use crate::version::ObjectVersion;

mod build;
mod objects;

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
    /// The client, the caches and what its read handles share.
    reads: Arc<Reads>,
    prefix: String,
    staging: PathBuf,
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
    fn describe(&self, key: &str) -> String {
        self.reads.describe(key)
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
        self.reads
            .bridge
            .run(|| format!("{op} {}", self.describe(key)), fut)
    }

    fn put(&self, key: &str, data: Bytes, mode: PutMode) -> io::Result<()> {
        let path = self.path(key)?;
        let client = self.reads.client.clone();
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

    fn opening(&self) -> MutexGuard<'_, OpenState> {
        self.opening.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Deletes `key` (a HEAD first: S3 answers a DELETE of a missing key
    /// with success, the contract wants `NotFound`), sending nothing after
    /// `by`.
    fn delete(&self, key: &str, by: Option<std::time::Instant>) -> io::Result<()> {
        let path = self.path(key)?;
        let client = self.reads.client.clone();
        let object = self.describe(key);
        let fut = async move {
            client
                .head(&path)
                .await
                .map_err(|e| os_error("DELETE", &object, e))?;
            client
                .delete(&path)
                .await
                .map_err(|e| os_error("DELETE", &object, e))
        };
        let what = || format!("DELETE {}", self.describe(key));
        let r = match by {
            Some(by) => self.reads.bridge.run_by(by, what, fut),
            None => self.reads.bridge.run(what, fut),
        };
        self.forget(key);
        r
    }

    /// Forgets what is cached about `key` (after this store wrote or
    /// deleted it).
    fn forget(&self, key: &str) {
        self.opening().known.remove(key);
        self.reads.cache.invalidate(key);
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
                    return Ok(S3ReadHandle::new(
                        self.reads.clone(),
                        key,
                        path,
                        m.clone(),
                        None,
                    ));
                }
                if let Some(first) = self.reads.cache.get(&m.version, 0) {
                    self.reads
                        .counters
                        .cache_hits
                        .fetch_add(1, Ordering::Relaxed);
                    let m = m.clone();
                    return Ok(S3ReadHandle::new(
                        self.reads.clone(),
                        key,
                        path,
                        m,
                        Some(first),
                    ));
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
        Ok(S3ReadHandle::new(
            self.reads.clone(),
            key,
            path,
            meta,
            first,
        ))
    }

    fn open_request(&self, key: &str, path: &Path) -> io::Result<OpenResult> {
        let client = self.reads.client.clone();
        let object = self.describe(key);
        let bs = self.reads.block_size;
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
            self.reads.cache.insert(&opened.version, 0, d.clone());
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
            .field("url", &self.inner.reads.url)
            .field("staging", &self.inner.staging)
            .finish()
    }
}

impl S3Store {
    /// Request counters since the store was built.
    pub fn stats(&self) -> S3Stats {
        self.inner.reads.counters.snapshot()
    }

    /// Bytes held by the in-memory block cache now.
    pub fn cached_bytes(&self) -> u64 {
        self.inner.reads.cache.bytes()
    }

    /// Bytes held by the on-disk block cache (0 without one).
    pub fn disk_cached_bytes(&self) -> u64 {
        self.inner.reads.cache.disk_bytes()
    }

    /// The local directory where objects are staged.
    pub fn staging_dir(&self) -> &std::path::Path {
        &self.inner.staging
    }

    /// Reads a whole object with the ETag of the version read (for a later
    /// [`S3Store::put_if_match`]); a missing object is `NotFound`.
    pub fn get_with_etag(&self, key: &str) -> io::Result<Versioned> {
        let path = self.inner.path(key)?;
        let client = self.inner.reads.client.clone();
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
        let client = self.inner.reads.client.clone();
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
        let client = self.inner.reads.client.clone();
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
        let client = self.inner.reads.client.clone();
        let object = if rel.is_empty() {
            self.inner.reads.url.clone()
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
