//! Ranged reads of an immutable object: [`S3ReadHandle::read_at`] serves
//! aligned blocks from the store's block cache and fetches the missing ones
//! with Range GETs — contiguous missing blocks in one request, several runs
//! concurrently, and, when reads move forward through the object, a
//! read-ahead window that doubles up to `readahead_blocks`. Threads that
//! want a block another thread is already fetching wait for that request
//! instead of sending their own. Every GET carries `If-Match` with the ETag
//! seen at open, so an object replaced under a handle fails loudly instead
//! of mixing versions.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use object_store::path::Path;
use object_store::GetOptions;
use tessera::storage::ReadHandle;

use crate::cache::ObjectVersion;
use crate::store::{os_error, Inner};

/// What a fetch ended with: its bytes, or the error's kind and message.
type Outcome = Result<Bytes, (io::ErrorKind, String)>;

/// One Range GET in flight, covering blocks `first..` of the object.
struct Pending {
    first: u64,
    done: Mutex<Option<Outcome>>,
    cv: Condvar,
}

impl Pending {
    fn complete(&self, r: Outcome) {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        if d.is_none() {
            *d = Some(r);
        }
        self.cv.notify_all();
    }

    fn wait(&self) -> Outcome {
        let mut d = self.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(r) = d.as_ref() {
                return r.clone();
            }
            d = self.cv.wait(d).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Default)]
struct ReadState {
    inflight: HashMap<u64, Arc<Pending>>,
    /// The block after the end of the last fetch (a read there is sequential).
    next_seq: u64,
    /// The current read-ahead window, in blocks.
    window: u64,
}

/// One planned fetch: blocks `blocks` of the object.
struct Run {
    blocks: Range<u64>,
    pending: Arc<Pending>,
}

/// Completes and unregisters a thread's fetches however it leaves (an error,
/// a panic): nobody waits forever on a fetch that was never sent.
struct RunGuard<'a> {
    handle: &'a S3ReadHandle,
    runs: Vec<Run>,
}

impl Drop for RunGuard<'_> {
    fn drop(&mut self) {
        for r in &self.runs {
            r.pending.complete(Err((
                io::ErrorKind::Other,
                "the fetch was abandoned".into(),
            )));
        }
        let mut st = self.handle.lock();
        for r in &self.runs {
            for b in r.blocks.clone() {
                if st
                    .inflight
                    .get(&b)
                    .is_some_and(|p| Arc::ptr_eq(p, &r.pending))
                {
                    st.inflight.remove(&b);
                }
            }
        }
    }
}

/// A read handle over one version of an object (see the module docs).
pub(crate) struct S3ReadHandle {
    inner: Arc<Inner>,
    key: String,
    path: Path,
    version: ObjectVersion,
    etag: Option<String>,
    len: u64,
    state: Mutex<ReadState>,
}

impl S3ReadHandle {
    pub(crate) fn new(
        inner: Arc<Inner>,
        key: &str,
        path: Path,
        version: ObjectVersion,
        etag: Option<String>,
        len: u64,
        first_block: Option<Bytes>,
    ) -> Self {
        let next_seq = u64::from(first_block.is_some());
        S3ReadHandle {
            inner,
            key: key.to_string(),
            path,
            version,
            etag,
            len,
            state: Mutex::new(ReadState {
                next_seq,
                window: 1,
                ..ReadState::default()
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ReadState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn block_count(&self) -> u64 {
        self.len.div_ceil(self.inner.block_size)
    }

    fn block_range(&self, b: u64) -> Range<u64> {
        let bs = self.inner.block_size;
        b * bs..((b + 1) * bs).min(self.len)
    }

    /// The blocks `first..=last`, from the cache or fetched.
    fn blocks(&self, first: u64, last: u64) -> io::Result<Vec<Bytes>> {
        let cache = &self.inner.cache;
        let counters = &self.inner.counters;
        let n = (last - first + 1) as usize;
        let mut out: Vec<Option<Bytes>> = vec![None; n];
        let mut waits: Vec<(u64, Arc<Pending>)> = Vec::new();
        let mut guard = RunGuard {
            handle: self,
            runs: Vec::new(),
        };
        {
            let mut st = self.lock();
            let mut runs: Vec<Range<u64>> = Vec::new();
            for b in first..=last {
                if let Some(d) = cache.get(&self.version, b) {
                    out[(b - first) as usize] = Some(d);
                    counters
                        .cache_hits
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else if let Some(p) = st.inflight.get(&b) {
                    waits.push((b, p.clone()));
                } else {
                    counters
                        .cache_misses
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match runs.last_mut() {
                        Some(r) if r.end == b => r.end += 1,
                        _ => runs.push(b..b + 1),
                    }
                }
            }
            if let Some(r) = runs.last_mut() {
                let sequential = r.start == st.next_seq
                    || (r.start > 0 && cache.contains(&self.version, r.start - 1));
                st.window = if sequential {
                    (st.window * 2).min(self.inner.readahead_blocks)
                } else {
                    1
                };
                let want = (r.start + st.window).min(self.block_count());
                while r.end < want
                    && !st.inflight.contains_key(&r.end)
                    && !cache.contains(&self.version, r.end)
                {
                    r.end += 1;
                }
                st.next_seq = r.end;
            }
            for blocks in runs {
                let pending = Arc::new(Pending {
                    first: blocks.start,
                    done: Mutex::new(None),
                    cv: Condvar::new(),
                });
                for b in blocks.clone() {
                    st.inflight.insert(b, pending.clone());
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
                            cache.insert(&self.version, b, Bytes::copy_from_slice(&block));
                            if (first..=last).contains(&b) {
                                out[(b - first) as usize] = Some(block);
                            }
                        }
                        run.pending.complete(Ok(data));
                    }
                    Err(e) => {
                        run.pending.complete(Err((e.kind(), e.to_string())));
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        drop(guard);
        for (b, p) in waits {
            match p.wait() {
                Ok(data) => out[(b - first) as usize] = Some(self.slice(&data, p.first, b)),
                Err((kind, msg)) => {
                    first_err.get_or_insert(io::Error::new(kind, msg));
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
        let bs = self.inner.block_size;
        let lo = ((b - run_first) * bs) as usize;
        let hi = (lo as u64 + (self.block_range(b).end - b * bs)) as usize;
        data.slice(lo.min(data.len())..hi.min(data.len()))
    }

    /// Sends one Range GET per run, all at once, and waits for them.
    fn fetch(&self, runs: &[Run]) -> Vec<io::Result<Bytes>> {
        let bs = self.inner.block_size;
        let ranges: Vec<Range<u64>> = runs
            .iter()
            .map(|r| r.blocks.start * bs..(r.blocks.end * bs).min(self.len))
            .collect();
        let client = self.inner.client.clone();
        let path = self.path.clone();
        let etag = self.etag.clone();
        let object = self.inner.describe(&self.key);
        let all = self.inner.bridge.run(
            || format!("GET {object} ({} ranges)", ranges.len()),
            {
                let object = object.clone();
                let ranges = ranges.clone();
                async move {
                    let gets = ranges.into_iter().map(|range| {
                        let client = client.clone();
                        let path = path.clone();
                        let etag = etag.clone();
                        let object = object.clone();
                        async move {
                            let (start, end) = (range.start, range.end);
                            let what = format!("GET {object} bytes {start}..{end}");
                            let want = end - start;
                            let opts = GetOptions::new()
                                .with_range(Some(range))
                                .with_if_match(etag);
                            let r = match client.get_opts(&path, opts).await {
                                Ok(r) => r.bytes().await,
                                Err(e) => Err(e),
                            };
                            match r {
                                Ok(b) if b.len() as u64 == want => Ok(b),
                                Ok(b) => Err(io::Error::other(format!(
                                    "{what}: got {} bytes (the object changed since it was opened?)",
                                    b.len()
                                ))),
                                Err(e @ object_store::Error::Precondition { .. }) => {
                                    Err(io::Error::other(format!(
                                        "{what}: the object changed since it was opened: {e}"
                                    )))
                                }
                                Err(e) => Err(os_error("GET", &format!("{object} bytes {start}..{end}"), e)),
                            }
                        }
                    });
                    Ok(futures::future::join_all(gets).await)
                }
            },
        );
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
        self.len
    }

    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} of {}: past the end ({} bytes)",
                    self.inner.describe(&self.key),
                    self.len
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
