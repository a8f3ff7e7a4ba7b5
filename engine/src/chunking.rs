//! Content-defined chunking: FastCDC (v2020, normalized), streamed from any
//! `Read` in bounded batches.
//!
//! Boundaries are identical to running FastCDC over the whole input at once:
//! the cutter looks at most `max` bytes past a chunk's start, so a cut is only
//! taken once at least `max` bytes (or the end of input) are buffered. Within
//! a batch, segments are cut in parallel and joined where their chains of cut
//! points meet ([`cut_points`] says why that is exact).

use std::io::{self, Read};
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};
use rayon::prelude::*;

use crate::error::{Error, Result};

/// The chunking parameters. They are part of the store's format: a store
/// records them in its config and refuses to be opened with others.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkParams {
    /// Minimum chunk size in bytes (except the last chunk of a file).
    pub min: u32,
    /// Target average chunk size in bytes (a power of two is typical).
    pub avg: u32,
    /// Maximum chunk size in bytes.
    pub max: u32,
    /// FastCDC normalization level, 0..=3.
    pub normalization: u32,
}

impl Default for ChunkParams {
    /// min 16 KiB, average 64 KiB, max 256 KiB, normalization level 1.
    fn default() -> Self {
        ChunkParams {
            min: 16 * 1024,
            avg: 64 * 1024,
            max: 256 * 1024,
            normalization: 1,
        }
    }
}

impl std::fmt::Display for ChunkParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "FastCDC-2020 min={} avg={} max={} normalization={}",
            self.min, self.avg, self.max, self.normalization
        )
    }
}

impl ChunkParams {
    /// Checks the parameters are within what FastCDC accepts.
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let ok = (MINIMUM_MIN..=MINIMUM_MAX).contains(&self.min)
            && (AVERAGE_MIN..=AVERAGE_MAX).contains(&self.avg)
            && (MAXIMUM_MIN..=MAXIMUM_MAX).contains(&self.max)
            && self.min <= self.avg
            && self.avg <= self.max
            && self.normalization <= 3;
        if ok {
            Ok(())
        } else {
            Err(Error::InvalidArgument(format!(
                "chunk parameters out of range: {self} (need {MINIMUM_MIN}<=min<={MINIMUM_MAX}, \
                 {AVERAGE_MIN}<=avg<={AVERAGE_MAX}, {MAXIMUM_MIN}<=max<={MAXIMUM_MAX}, \
                 min<=avg<=max, normalization<=3)"
            )))
        }
    }

    fn level(&self) -> Normalization {
        match self.normalization {
            0 => Normalization::Level0,
            1 => Normalization::Level1,
            2 => Normalization::Level2,
            _ => Normalization::Level3,
        }
    }

    /// Chunk boundaries of an in-memory buffer (the reference the streaming
    /// chunker must agree with). Parameters must be valid.
    pub fn boundaries(&self, data: &[u8]) -> Vec<Range<usize>> {
        FastCDC::with_level(data, self.min, self.avg, self.max, self.level())
            .map(|c| c.offset..c.offset + c.length)
            .collect()
    }
}

/// A batch of consecutive chunks: one shared buffer and the chunk ranges in it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The bytes of all chunks in the batch, contiguous.
    pub data: Bytes,
    /// Chunk ranges within `data`, in order, covering it exactly.
    pub chunks: Vec<Range<usize>>,
}

// Used by the tests and benchmarks (feature `testing`).
#[allow(dead_code)]
impl Batch {
    /// Iterates the chunks as zero-copy `Bytes`.
    pub fn chunk_bytes(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.chunks.iter().map(|r| self.data.slice(r.clone()))
    }
}

/// The cut rule of one buffer: where the chunk starting at a position ends.
struct Cutter<'a> {
    cdc: FastCDC<'a>,
    len: usize,
    max: usize,
    /// Whether the buffer ends the input (else a chunk is only cut with
    /// `max` bytes in view, and the rest waits for the next buffer).
    eof: bool,
}

impl<'a> Cutter<'a> {
    fn new(params: &ChunkParams, data: &'a [u8], eof: bool) -> Self {
        Cutter {
            cdc: FastCDC::with_level(data, params.min, params.avg, params.max, params.level()),
            len: data.len(),
            max: params.max as usize,
            eof,
        }
    }

    /// The end of the chunk that starts at `p`, or `None` when no chunk
    /// can be cut there (end of the buffer, or too little in view). A
    /// function of the bytes `p..p+max` only: this is what lets segments be
    /// cut independently and joined (see [`cut_points`]).
    fn next(&self, p: usize) -> Option<usize> {
        let remaining = self.len.checked_sub(p).filter(|&r| r > 0)?;
        if !self.eof && remaining < self.max {
            return None;
        }
        let (_, end) = self.cdc.cut(p, remaining);
        (end > p).then_some(end)
    }

    /// The chain of cut points from `start`, up to and including the first
    /// one at or past `stop`.
    fn chain(&self, start: usize, stop: usize) -> Vec<usize> {
        let mut out = Vec::new();
        let mut p = start;
        while let Some(e) = self.next(p) {
            out.push(e);
            if e >= stop {
                break;
            }
            p = e;
        }
        out
    }
}

/// The ends of the chunks of `data`, exactly as the serial loop cuts them
/// (start at 0, cut, restart at the cut, until no cut can be taken), found
/// by cutting segments of about `segment` bytes in parallel.
///
/// Why the result is identical: the end of the chunk starting at `p` is a
/// function `next(p)` of the bytes at `p..p+max` alone, so the serial cut
/// points are the chain `0, next(0), next(next(0)), …`. Segment `j` is cut
/// from its own start `s_j`, giving the chain `next(s_j), next²(s_j), …`.
/// Two chains of the same function that share one point share every point
/// after it. The join walks the serial chain: entering segment `j` at the
/// serial point `p` (the first ≥ `s_j`), it looks `p` up in segment `j`'s
/// chain; once found, the rest of that chain *is* the serial chain, and
/// until then it computes `next` itself (usually a chunk or two: gear
/// hashing forgets everything but its last 64 bytes, so chains meet at the
/// first cut point both can reach). Data that never resynchronises (long
/// runs of one byte value cut at `max` from each start) costs serial time,
/// never a different result.
pub(crate) fn cut_points(
    params: &ChunkParams,
    data: &[u8],
    eof: bool,
    segment: usize,
) -> Vec<usize> {
    let cutter = Cutter::new(params, data, eof);
    let segment = segment.max(4 * cutter.max);
    let n = data.len().div_ceil(segment).max(1);
    if n == 1 {
        return cutter.chain(0, usize::MAX);
    }
    let starts: Vec<usize> = (0..n).map(|j| j * segment).collect();
    let stop = |j: usize| starts.get(j + 1).copied().unwrap_or(usize::MAX);
    let chains: Vec<Vec<usize>> = (0..n)
        .into_par_iter()
        .map(|j| cutter.chain(starts[j], stop(j)))
        .collect();
    let mut chains = chains.into_iter();
    let mut out = chains.next().unwrap_or_default();
    for (j, chain) in chains.enumerate().map(|(i, c)| (i + 1, c)) {
        let Some(&entered) = out.last() else {
            return out;
        };
        if entered < starts[j] {
            // The serial chain ended before this segment.
            return out;
        }
        let mut p = entered;
        // Walk the serial chain through segment j until it meets j's chain.
        while p < stop(j) {
            if p == starts[j] {
                out.extend_from_slice(&chain);
                break;
            }
            if let Ok(i) = chain.binary_search(&p) {
                out.extend_from_slice(&chain[i + 1..]);
                break;
            }
            match cutter.next(p) {
                Some(e) => {
                    out.push(e);
                    p = e;
                }
                None => return out,
            }
        }
    }
    out
}

/// Batch buffers of one [`Chunker`]: a buffer goes back to the pool when
/// the last `Bytes` of its batch is dropped, and at most `limit` exist at
/// once (the producer waits for one to come back), so ingest holds a fixed
/// number of buffers however fast it reads.
#[derive(Clone)]
struct BufferPool(Arc<PoolInner>);

struct PoolInner {
    state: Mutex<PoolState>,
    returned: Condvar,
    limit: usize,
}

struct PoolState {
    free: Vec<Vec<u8>>,
    out: usize,
}

/// A pooled buffer owning a batch's bytes (the first `len` of `buf`).
struct Pooled {
    buf: Vec<u8>,
    len: usize,
    pool: Arc<PoolInner>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        let mut s = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        s.out -= 1;
        s.free.push(buf);
        drop(s);
        self.pool.returned.notify_one();
    }
}

impl BufferPool {
    fn new(limit: usize) -> Self {
        BufferPool(Arc::new(PoolInner {
            state: Mutex::new(PoolState {
                free: Vec::new(),
                out: 0,
            }),
            returned: Condvar::new(),
            limit: limit.max(1),
        }))
    }

    /// A buffer of at least `len` bytes (contents unspecified), waiting for
    /// one to come back when `limit` are out.
    fn take(&self, len: usize) -> Vec<u8> {
        let inner = &self.0;
        let mut s = inner.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.free.is_empty() && s.out >= inner.limit {
            s = inner.returned.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.out += 1;
        let buf = s.free.pop();
        drop(s);
        match buf {
            Some(b) if b.len() >= len => b,
            // Zeroed once per buffer (by the allocator: fresh pages are
            // zero), not per batch.
            _ => vec![0u8; len],
        }
    }

    fn wrap(&self, buf: Vec<u8>, len: usize) -> Bytes {
        Bytes::from_owner(Pooled {
            buf,
            len,
            pool: self.0.clone(),
        })
    }
}

/// Streams a reader into batches of chunks, holding at most about
/// `batch_bytes + max` bytes per batch. Cut points are found in parallel
/// (see [`cut_points`]) and are those of the serial algorithm.
pub struct Chunker<R> {
    reader: R,
    params: ChunkParams,
    batch_bytes: usize,
    carry: Vec<u8>,
    eof: bool,
    pool: BufferPool,
    segment: usize,
}

impl<R: Read> Chunker<R> {
    /// `batch_bytes` is rounded up to at least `2 * max`. Batches may be
    /// held by the caller: buffers are reused once the batches using them
    /// are dropped.
    #[allow(dead_code)] // tests and benchmarks (feature `testing`)
    pub fn new(reader: R, params: ChunkParams, batch_bytes: usize) -> Result<Self> {
        Self::with_buffers(reader, params, batch_bytes, usize::MAX)
    }

    /// Like [`Chunker::new`], with at most `buffers` batches alive at once:
    /// [`Chunker::next_batch`] waits until the caller drops one.
    pub fn with_buffers(
        reader: R,
        params: ChunkParams,
        batch_bytes: usize,
        buffers: usize,
    ) -> Result<Self> {
        params.validate()?;
        let batch_bytes = batch_bytes.max(2 * params.max as usize);
        let threads = rayon::current_num_threads().max(1);
        Ok(Chunker {
            reader,
            params,
            batch_bytes,
            carry: Vec::new(),
            eof: false,
            pool: BufferPool::new(buffers),
            segment: (batch_bytes / (4 * threads)).max(4 * params.max as usize),
        })
    }

    /// Sets the segment size of parallel cutting (tests, benchmarks).
    #[allow(dead_code)]
    pub fn set_segment(&mut self, segment: usize) {
        self.segment = segment;
    }

    /// The next batch, or `None` at the end of input. I/O errors are returned
    /// as `std::io::Error` so the caller can name the source.
    pub fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        let target = self.batch_bytes + self.params.max as usize;
        let mut buf = self.pool.take(target);
        let mut filled = self.carry.len();
        buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        // As many reads as the source needs: a pipe or a socket returns
        // 64 KiB or less per read.
        while !self.eof && filled < target {
            match self.reader.read(&mut buf[filled..target]) {
                Ok(0) => self.eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if filled == 0 {
            return Ok(None);
        }
        let ends = cut_points(&self.params, &buf[..filled], self.eof, self.segment);
        let pos = ends.last().copied().unwrap_or(0);
        let mut chunks = Vec::with_capacity(ends.len());
        let mut start = 0;
        for e in ends {
            chunks.push(start..e);
            start = e;
        }
        self.carry.extend_from_slice(&buf[pos..filled]);
        Ok(Some(Batch {
            data: self.pool.wrap(buf, pos),
            chunks,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s >> 24) as u8
            })
            .collect()
    }

    fn streamed(data: &[u8], p: ChunkParams, batch: usize, read_size: usize) -> Vec<Range<usize>> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.1).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut c = Chunker::new(Dribble(data, read_size), p, batch).expect("params");
        let mut out = Vec::new();
        let mut base = 0;
        while let Some(b) = c.next_batch().expect("read") {
            for r in &b.chunks {
                out.push(base + r.start..base + r.end);
            }
            base += b.data.len();
        }
        assert_eq!(base, data.len());
        out
    }

    #[test]
    fn streaming_matches_whole_buffer() {
        let p = ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
            normalization: 1,
        };
        let data = pseudo(300_000, 7);
        let whole = p.boundaries(&data);
        for (batch, rs) in [(0, 1 << 20), (40_000, 777), (1 << 20, 4096)] {
            assert_eq!(
                streamed(&data, p, batch, rs),
                whole,
                "batch {batch} read {rs}"
            );
        }
    }

    /// Model-like bytes: bf16-ish words, zero runs, a repeated block and
    /// a constant region (which never resynchronises).
    fn model_like(n: usize, seed: u64) -> Vec<u8> {
        let mut v = pseudo(n, seed);
        for (i, w) in v.chunks_mut(2).enumerate() {
            if let [a, b] = w {
                *b = 0x3c | (*b & 0x81);
                if i % 7 == 0 {
                    *a = 0;
                }
            }
        }
        let q = n / 4;
        v[q..q + n / 10].fill(0);
        let rep = n / 20;
        let (head, tail) = v.split_at_mut(2 * q);
        tail[..rep].copy_from_slice(&head[..rep]);
        let c = 3 * q;
        v[c..c + n / 12].fill(0x55);
        v
    }

    fn ends_of(ranges: &[Range<usize>]) -> Vec<usize> {
        ranges.iter().map(|r| r.end).collect()
    }

    #[test]
    fn parallel_cut_points_match_serial() {
        let small = ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
            normalization: 1,
        };
        for (pi, p) in [small, ChunkParams::default()].into_iter().enumerate() {
            for (di, data) in [
                pseudo(3 << 20, 11),
                model_like(3 << 20, 12),
                vec![0u8; 2 << 20],
            ]
            .iter()
            .enumerate()
            {
                let serial = ends_of(&p.boundaries(data));
                for seg in [1, 4096, 65_537, 100_000, 262_144, 1 << 20, 5 << 20] {
                    assert_eq!(
                        cut_points(&p, data, true, seg),
                        serial,
                        "params {pi} data {di} segment {seg}"
                    );
                }
                // Without the end of input in view: the serial loop's
                // prefix that has `max` bytes of lookahead.
                let max = p.max as usize;
                let mut partial = Vec::new();
                let mut pos = 0;
                let cdc = Cutter::new(&p, data, false);
                while let Some(e) = cdc.next(pos) {
                    partial.push(e);
                    pos = e;
                }
                assert!(data.len() - pos < max + p.max as usize);
                for seg in [1, 70_000, 1 << 20] {
                    assert_eq!(cut_points(&p, data, false, seg), partial);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        #[test]
        fn parallel_cutting_is_serial_fastcdc(
            len in 0usize..600_000,
            seed in proptest::prelude::any::<u64>(),
            model in proptest::prelude::any::<bool>(),
            seg in 1usize..300_000,
            batch in 0usize..200_000,
            read in 1usize..100_000,
        ) {
            let p = ChunkParams { min: 2048, avg: 8192, max: 32768, normalization: 2 };
            let data = if model { model_like(len.max(64), seed) } else { pseudo(len, seed) };
            let serial = p.boundaries(&data);
            proptest::prop_assert_eq!(ends_of(&serial), cut_points(&p, &data, true, seg));
            proptest::prop_assert_eq!(&streamed_seg(&data, p, batch, read, seg), &serial);
        }
    }

    fn streamed_seg(
        data: &[u8],
        p: ChunkParams,
        batch: usize,
        read_size: usize,
        seg: usize,
    ) -> Vec<Range<usize>> {
        struct Dribble<'a>(&'a [u8], usize);
        impl Read for Dribble<'_> {
            fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
                let n = b.len().min(self.1).min(self.0.len());
                b[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut c = Chunker::with_buffers(Dribble(data, read_size), p, batch, 2).expect("params");
        c.set_segment(seg);
        let mut out = Vec::new();
        let mut base = 0;
        while let Some(b) = c.next_batch().expect("read") {
            assert_eq!(b.chunks.last().map(|r| r.end), Some(b.data.len()));
            for r in &b.chunks {
                out.push(base + r.start..base + r.end);
            }
            base += b.data.len();
        }
        assert_eq!(base, data.len());
        out
    }

    #[test]
    fn buffers_are_bounded_and_reused() {
        let data = pseudo(1 << 20, 3);
        let p = ChunkParams {
            min: 1024,
            avg: 4096,
            max: 16384,
            normalization: 1,
        };
        let mut c = Chunker::with_buffers(&data[..], p, 40_000, 2).expect("params");
        let a = c.next_batch().expect("read").expect("batch");
        let b = c.next_batch().expect("read").expect("batch");
        // A third would wait: give one back from another thread.
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(a);
        });
        let third = c.next_batch().expect("read").expect("batch");
        t.join().expect("thread");
        assert!(!third.chunks.is_empty() && !b.chunks.is_empty());
    }

    #[test]
    fn empty_input_has_no_chunks() {
        let mut c = Chunker::new(&[][..], ChunkParams::default(), 0).expect("params");
        assert!(c.next_batch().expect("read").is_none());
    }

    #[test]
    fn rejects_bad_params() {
        let p = ChunkParams {
            min: 10,
            avg: 5,
            max: 1,
            normalization: 9,
        };
        assert!(p.validate().is_err());
    }
}
