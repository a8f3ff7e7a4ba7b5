//! Ranged reads of an immutable object: [`S3ReadHandle::read_at`] serves
//! aligned blocks from the store's block cache and fetches the missing ones
//! with Range GETs — contiguous missing blocks in one request, several runs
//! concurrently, and, when reads move forward through the object, a
//! read-ahead window that doubles up to `readahead_blocks`. A thread that
//! wants a block another thread (through any handle of the store) is
//! already fetching waits for that request instead of sending its own.
//! Every GET carries `If-Match` with the ETag seen at open, so an object
//! replaced under a handle fails loudly instead of mixing versions.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::GetOptions;
use tessera::storage::ReadHandle;

use crate::cache::BlockCache;
use crate::counters::Counters;
use crate::errors::os_error;
use crate::runtime::Bridge;
use crate::slot::{share, Slot};
use crate::version::ObjectVersion;

/// What a store's read handles share: the client, the block cache and the
/// fetches in flight.
pub(crate) struct Reads {
    /// The store's `s3://bucket/prefix`, which messages name objects under.
    pub(crate) url: String,
    pub(crate) client: Arc<dyn object_store::ObjectStore>,
    pub(crate) bridge: Bridge,
    pub(crate) counters: Arc<Counters>,
    pub(crate) cache: BlockCache,
    pub(crate) block_size: u64,
    pub(crate) readahead_blocks: u64,
    fetching: Mutex<Fetching>,
}

impl Reads {
    pub(crate) fn new(
        url: String,
        client: Arc<dyn object_store::ObjectStore>,
        bridge: Bridge,
        counters: Arc<Counters>,
        cache: BlockCache,
        block_size: u64,
        readahead_blocks: u64,
    ) -> Reads {
        Reads {
            url,
            client,
            bridge,
            counters,
            cache,
            block_size: block_size.max(1),
            readahead_blocks: readahead_blocks.max(1),
            fetching: Mutex::new(HashMap::new()),
        }
    }

    /// `key` as messages name it: `s3://bucket/prefix/key`.
    pub(crate) fn describe(&self, key: &str) -> String {
        format!("{}/{key}", self.url)
    }

    fn fetching(&self) -> MutexGuard<'_, Fetching> {
        self.fetching.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One Range GET in flight: the bytes of blocks `first..`.
pub(crate) struct Pending {
    first: u64,
    slot: Slot<Bytes>,
}

/// Blocks being fetched, store-wide.
type Fetching = HashMap<(ObjectVersion, u64), Arc<Pending>>;

/// What an open learned about an object.
#[derive(Clone, Debug)]
pub(crate) struct Opened {
    pub(crate) len: u64,
    pub(crate) etag: Option<String>,
    pub(crate) version: ObjectVersion,
}

/// Sequential-read detection, per handle.
struct Readahead {
    /// The block after the end of the last fetch (a read there is sequential).
    next_seq: u64,
    /// The current window, in blocks.
    window: u64,
}

/// One planned fetch: blocks `blocks` of the object.
struct Run {
    blocks: Range<u64>,
    pending: Arc<Pending>,
}

/// Completes and unregisters a thread's fetches however it leaves (an
/// error, a panic): nobody waits forever on a fetch that was never sent.
struct RunGuard<'a> {
    handle: &'a S3ReadHandle,
    runs: Vec<Run>,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        for r in &self.runs {
            r.pending.slot.complete(Err((
                io::ErrorKind::Other,
                "the fetch was abandoned".into(),
            )));
        }
        let mut f = self.handle.inner.fetching();
        for r in &self.runs {
            for b in r.blocks.clone() {
                let k = (self.handle.meta.version.clone(), b);
                if f.get(&k).is_some_and(|p| Arc::ptr_eq(p, &r.pending)) {
                    f.remove(&k);
                }
            }
        }
    }
}

/// A read handle over one version of an object (see the module docs).
pub(crate) struct S3ReadHandle {
    inner: Arc<Reads>,
    key: String,
    path: Path,
    meta: Opened,
    /// The first block as the open fetched it (served even when the cache
    /// is off or has evicted it).
    first_block: Option<Bytes>,
    ahead: Mutex<Readahead>,
}

impl S3ReadHandle {
    pub(crate) fn new(
        inner: Arc<Reads>,
        key: &str,
        path: Path,
        meta: Opened,
        first_block: Option<Bytes>,
    ) -> Self {
        S3ReadHandle {
            inner,
            key: key.to_string(),
            path,
            meta,
            ahead: Mutex::new(Readahead {
                next_seq: u64::from(first_block.is_some()),
                window: 1,
            }),
            first_block,
        }
    }

    fn ahead(&self) -> MutexGuard<'_, Readahead> {
        self.ahead.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn block_count(&self) -> u64 {
        self.meta.len.div_ceil(self.inner.block_size)
    }

    /// Length of block `b`.
    fn block_len(&self, b: u64) -> u64 {
        let bs = self.inner.block_size;
        ((b + 1) * bs).min(self.meta.len) - b * bs
    }

    /// The blocks `first..=last`, from the cache or fetched.
    fn blocks(&self, first: u64, last: u64) -> io::Result<Vec<Bytes>> {
        let cache = &self.inner.cache;
        let counters = &self.inner.counters;
        let v = &self.meta.version;
        let n = (last - first + 1) as usize;
        let mut out: Vec<Option<Bytes>> = vec![None; n];
        let mut waits: Vec<(u64, Arc<Pending>)> = Vec::new();
        let mut guard = RunGuard {
            handle: self,
            runs: Vec::new(),
        };
        let (next_seq, window) = {
            let a = self.ahead();
            (a.next_seq, a.window)
        };
        {
            let mut fetching = self.inner.fetching();
            let mut runs: Vec<Range<u64>> = Vec::new();
            for b in first..=last {
                let cached = match (b, &self.first_block) {
                    (0, Some(d)) => Some(d.clone()),
                    _ => cache.get(v, b),
                };
                if let Some(d) = cached {
                    out[(b - first) as usize] = Some(d);
                    counters.cache_hits.fetch_add(1, Ordering::Relaxed);
                } else if let Some(p) = fetching.get(&(v.clone(), b)) {
                    waits.push((b, p.clone()));
                } else {
                    counters.cache_misses.fetch_add(1, Ordering::Relaxed);
                    match runs.last_mut() {
                        Some(r) if r.end == b => r.end += 1,
                        _ => runs.push(b..b + 1),
                    }
                }
            }
            if let Some(r) = runs.last_mut() {
                let sequential =
                    r.start == next_seq || (r.start > 0 && cache.contains(v, r.start - 1));
                // Without a cache, blocks read ahead would be thrown away.
                let window = if sequential && cache.enabled() {
                    (window * 2).min(self.inner.readahead_blocks)
                } else {
                    1
                };
                let want = (r.start + window).min(self.block_count());
                while r.end < want
                    && !fetching.contains_key(&(v.clone(), r.end))
                    && !cache.contains(v, r.end)
                {
                    r.end += 1;
                }
                let mut a = self.ahead();
                a.next_seq = r.end;
                a.window = window;
            }
            for blocks in runs {
                let pending = Arc::new(Pending {
                    first: blocks.start,
                    slot: Slot::new(),
                });
                for b in blocks.clone() {
                    fetching.insert((v.clone(), b), pending.clone());
                }
                guard.runs.push(Run { blocks, pending });
            }
        }
        let mut first_err: Option<io::Error> = None;
        if !guard.runs.is_empty() {
            let results = self.fetch(&guard.runs);
            for (run, r) in guard.runs.iter().zip(results) {
                match r {
                    Ok(data) => {
                        for b in run.blocks.clone() {
                            let block = self.slice(&data, run.blocks.start, b);
                            // A copy, so the cache accounts for what it keeps.
                            cache.insert(v, b, Bytes::copy_from_slice(&block));
                            if (first..=last).contains(&b) {
                                out[(b - first) as usize] = Some(block);
                            }
                        }
                        run.pending.slot.complete(Ok(data));
                    }
                    Err(e) => {
                        run.pending.slot.complete(Err(share(&e)));
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        drop(guard);
        for (b, p) in waits {
            match p.slot.wait() {
                Ok(data) => out[(b - first) as usize] = Some(self.slice(&data, p.first, b)),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        out.into_iter()
            .enumerate()
            .map(|(i, b)| {
                b.ok_or_else(|| {
                    io::Error::other(format!(
                        "read {}: block {} was not fetched",
                        self.inner.describe(&self.key),
                        first + i as u64
                    ))
                })
            })
            .collect()
    }

    /// Block `b` out of a fetched run that starts at block `run_first`.
    fn slice(&self, data: &Bytes, run_first: u64, b: u64) -> Bytes {
        let lo = ((b - run_first) * self.inner.block_size) as usize;
        let hi = lo + self.block_len(b) as usize;
        data.slice(lo.min(data.len())..hi.min(data.len()))
    }

    /// Sends one Range GET per run, all at once, and waits for them.
    fn fetch(&self, runs: &[Run]) -> Vec<io::Result<Bytes>> {
        let bs = self.inner.block_size;
        let ranges: Vec<Range<u64>> = runs
            .iter()
            .map(|r| r.blocks.start * bs..(r.blocks.end * bs).min(self.meta.len))
            .collect();
        let client = self.inner.client.clone();
        let path = self.path.clone();
        let etag = self.meta.etag.clone();
        let object = self.inner.describe(&self.key);
        let count = ranges.len();
        let all = self
            .inner
            .bridge
            .run(|| format!("GET {object} ({count} ranges)"), {
                let object = object.clone();
                async move {
                    let gets = ranges.into_iter().map(|range| {
                        let client = client.clone();
                        let path = path.clone();
                        let etag = etag.clone();
                        let object = object.clone();
                        async move {
                            let (start, end) = (range.start, range.end);
                            let what = format!("{object} bytes {start}..{end}");
                            let opts = GetOptions::new()
                                .with_range(Some(range))
                                .with_if_match(etag);
                            let r = match client.get_opts(&path, opts).await {
                                Ok(r) => r.bytes().await,
                                Err(e) => Err(e),
                            };
                            match r {
                                Ok(b) if b.len() as u64 == end - start => Ok(b),
                                Ok(b) => Err(io::Error::other(format!(
                                    "GET {what}: got {} bytes (the object changed since it \
                                     was opened?)",
                                    b.len()
                                ))),
                                Err(e @ object_store::Error::Precondition { .. }) => {
                                    Err(io::Error::other(format!(
                                        "GET {what}: the object changed since it was opened: {e}"
                                    )))
                                }
                                Err(e) => Err(os_error("GET", &what, e)),
                            }
                        }
                    });
                    Ok(futures::future::join_all(gets).await)
                }
            });
        match all {
            Ok(v) => v,
            Err(e) => runs
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }
}

impl ReadHandle for S3ReadHandle {
    fn len(&self) -> u64 {
        self.meta.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.meta.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} of {}: past the end ({} bytes)",
                    self.inner.describe(&self.key),
                    self.meta.len
                ),
            ));
        }
        if len == 0 {
            return Ok(Bytes::new());
        }
        let end = offset + len as u64;
        let bs = self.inner.block_size;
        let (first, last) = (offset / bs, (end - 1) / bs);
        let blocks = self.blocks(first, last)?;
        if let [one] = blocks.as_slice() {
            let lo = (offset - first * bs) as usize;
            return Ok(one.slice(lo..lo + len));
        }
        let mut out = BytesMut::with_capacity(len);
        for (i, b) in blocks.iter().enumerate() {
            let start = (first + i as u64) * bs;
            let lo = offset.saturating_sub(start) as usize;
            let hi = ((end - start) as usize).min(b.len());
            out.extend_from_slice(&b[lo.min(hi)..hi]);
        }
        Ok(out.freeze())
    }
}
