//! Content-defined chunking: FastCDC (v2020, normalized), streamed from any
//! `Read` in bounded batches.
//!
//! Boundaries are identical to running FastCDC over the whole input at once:
//! the cutter looks at most `max` bytes past a chunk's start, so a cut is only
//! taken once at least `max` bytes (or the end of input) are buffered.

use std::io::{self, Read};
use std::ops::Range;

use bytes::Bytes;
use fastcdc::v2020::{FastCDC, Normalization};

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

impl Batch {
    /// Iterates the chunks as zero-copy `Bytes`.
    pub fn chunk_bytes(&self) -> impl Iterator<Item = Bytes> + '_ {
        self.chunks.iter().map(|r| self.data.slice(r.clone()))
    }
}

/// Streams a reader into batches of chunks, holding at most about
/// `batch_bytes + max` bytes at a time.
pub struct Chunker<R> {
    reader: R,
    params: ChunkParams,
    batch_bytes: usize,
    carry: Vec<u8>,
    eof: bool,
}

impl<R: Read> Chunker<R> {
    /// `batch_bytes` is rounded up to at least `2 * max`.
    pub fn new(reader: R, params: ChunkParams, batch_bytes: usize) -> Result<Self> {
        params.validate()?;
        Ok(Chunker {
            reader,
            params,
            batch_bytes: batch_bytes.max(2 * params.max as usize),
            carry: Vec::new(),
            eof: false,
        })
    }

    /// The next batch, or `None` at the end of input. I/O errors are returned
    /// as `std::io::Error` so the caller can name the source.
    pub fn next_batch(&mut self) -> io::Result<Option<Batch>> {
        let max = self.params.max as usize;
        let target = self.batch_bytes + max;
        // Zeroed once per batch (by the allocator: fresh pages are zero),
        // then filled by as many reads as the source needs: a pipe or a
        // socket returns 64 KiB or less per read.
        let mut buf = vec![0u8; target];
        let mut filled = self.carry.len();
        buf[..filled].copy_from_slice(&self.carry);
        self.carry.clear();
        while !self.eof && filled < target {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => self.eof = true,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        buf.truncate(filled);
        if buf.is_empty() {
            return Ok(None);
        }
        let cdc = FastCDC::with_level(
            &buf,
            self.params.min,
            self.params.avg,
            self.params.max,
            self.params.level(),
        );
        let mut chunks = Vec::new();
        let mut pos = 0usize;
        while pos < buf.len() {
            let remaining = buf.len() - pos;
            // Without the end of input in view, only cut with full lookahead.
            if !self.eof && remaining < max {
                break;
            }
            let (_, end) = cdc.cut(pos, remaining);
            if end <= pos {
                break;
            }
            chunks.push(pos..end);
            pos = end;
        }
        self.carry.extend_from_slice(&buf[pos..]);
        buf.truncate(pos);
        Ok(Some(Batch {
            data: Bytes::from(buf),
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
