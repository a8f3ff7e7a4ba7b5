//! The byte-planes format (method 2): header, element transform, plane
//! split/merge and per-plane coding. Normative description: `FORMAT.md`.

use crate::huff;
use crate::CodecError;

/// Size of the fixed header.
pub const HEADER_LEN: usize = 8;

/// Plane coding modes.
pub const MODE_RAW: u8 = 0;
pub const MODE_CONST: u8 = 1;
pub const MODE_HUFFMAN: u8 = 2;
pub const MODE_ZSTD: u8 = 3;

/// Element transforms.
pub const TRANSFORM_NONE: u8 = 0;
pub const TRANSFORM_ROTL1: u8 = 1;

/// A layout: element width, transform and phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    pub width: usize,
    pub transform: u8,
    pub phase: usize,
}

impl Layout {
    /// Number of whole elements and the tail length for `raw_len` bytes.
    pub fn split_counts(&self, raw_len: usize) -> (usize, usize) {
        let body = raw_len.saturating_sub(self.phase);
        (body / self.width, body % self.width)
    }
}

/// Writes the fixed header.
pub fn write_header(out: &mut Vec<u8>, layout: Layout, raw_len: usize) {
    out.push(layout.width as u8);
    out.push(layout.transform);
    out.push(layout.phase as u8);
    out.push(0);
    out.extend_from_slice(&(raw_len as u32).to_le_bytes());
}

/// Splits the element body of `raw` (after the phase bytes) into `width`
/// planes of `n` bytes each, laid out one after another in `planes`.
pub fn split(raw: &[u8], layout: Layout, planes: &mut Vec<u8>) -> usize {
    let (n, _) = layout.split_counts(raw.len());
    let body = &raw[layout.phase..layout.phase + n * layout.width];
    planes.clear();
    planes.resize(n * layout.width, 0);
    let rot = layout.transform == TRANSFORM_ROTL1;
    match layout.width {
        1 => planes.copy_from_slice(body),
        2 => {
            let (p0, p1) = planes.split_at_mut(n);
            if rot {
                for ((c, a), b) in body.chunks_exact(2).zip(p0.iter_mut()).zip(p1.iter_mut()) {
                    let v = u16::from_le_bytes([c[0], c[1]]).rotate_left(1);
                    *a = v as u8;
                    *b = (v >> 8) as u8;
                }
            } else {
                for ((c, a), b) in body.chunks_exact(2).zip(p0.iter_mut()).zip(p1.iter_mut()) {
                    *a = c[0];
                    *b = c[1];
                }
            }
        }
        4 => {
            let (p0, rest) = planes.split_at_mut(n);
            let (p1, rest) = rest.split_at_mut(n);
            let (p2, p3) = rest.split_at_mut(n);
            let it = body
                .chunks_exact(4)
                .zip(p0.iter_mut())
                .zip(p1.iter_mut())
                .zip(p2.iter_mut())
                .zip(p3.iter_mut());
            for ((((c, a), b), d), e) in it {
                let mut v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if rot {
                    v = v.rotate_left(1);
                }
                *a = v as u8;
                *b = (v >> 8) as u8;
                *d = (v >> 16) as u8;
                *e = (v >> 24) as u8;
            }
        }
        // Layouts are validated before use.
        _ => {}
    }
    n
}

/// Inverse of [`split`]: writes `n` elements into `body` from the planes.
pub fn merge(planes: &[&[u8]], layout: Layout, body: &mut [u8]) {
    let rot = layout.transform == TRANSFORM_ROTL1;
    match layout.width {
        1 => body.copy_from_slice(planes[0]),
        2 => {
            let it = body
                .chunks_exact_mut(2)
                .zip(planes[0].iter())
                .zip(planes[1].iter());
            if rot {
                for ((o, &a), &b) in it {
                    let v = u16::from_le_bytes([a, b]).rotate_right(1);
                    o.copy_from_slice(&v.to_le_bytes());
                }
            } else {
                for ((o, &a), &b) in it {
                    o[0] = a;
                    o[1] = b;
                }
            }
        }
        4 => {
            let it = body
                .chunks_exact_mut(4)
                .zip(planes[0].iter())
                .zip(planes[1].iter())
                .zip(planes[2].iter())
                .zip(planes[3].iter());
            for ((((o, &a), &b), &c), &d) in it {
                let mut v = u32::from_le_bytes([a, b, c, d]);
                if rot {
                    v = v.rotate_right(1);
                }
                o.copy_from_slice(&v.to_le_bytes());
            }
        }
        // Layouts are validated before use.
        _ => {}
    }
}

/// Reusable decoder state for the planes format.
#[derive(Default)]
pub struct PlaneDecoder {
    scratch: Vec<u8>,
    tables: Option<Box<huff::DecodeTables>>,
}

fn read_u32(b: &[u8], at: usize) -> Result<usize, CodecError> {
    let s = b.get(at..at + 4).ok_or(CodecError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Where a decoded plane's bytes are.
#[derive(Clone, Copy)]
enum Src {
    Stored(usize),
    Scratch(usize),
}

impl PlaneDecoder {
    pub fn scratch_capacity(&self) -> usize {
        self.scratch.capacity()
    }

    /// Decodes a method-2 chunk into `out` (cleared first), which ends with
    /// exactly `raw_len` bytes on success. Allocates at most `raw_len` bytes
    /// of scratch plus fixed-size tables, whatever `stored` says.
    pub fn decode(
        &mut self,
        stored: &[u8],
        raw_len: usize,
        zstd: &mut zstd::bulk::Decompressor<'static>,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let h = stored.get(..HEADER_LEN).ok_or(CodecError::Truncated)?;
        let (width, transform, phase, flags) = (h[0] as usize, h[1], h[2] as usize, h[3]);
        if !matches!(width, 1 | 2 | 4) {
            return Err(CodecError::Corrupt("planes: element width not 1, 2 or 4"));
        }
        if transform > TRANSFORM_ROTL1 || (transform == TRANSFORM_ROTL1 && width == 1) {
            return Err(CodecError::Corrupt("planes: unknown transform"));
        }
        if phase >= width || flags != 0 {
            return Err(CodecError::Corrupt("planes: bad phase or flags"));
        }
        let declared = read_u32(h, 4)?;
        if declared != raw_len {
            return Err(CodecError::LengthMismatch {
                expected: raw_len,
                actual: declared,
            });
        }
        if phase > raw_len {
            return Err(CodecError::Corrupt("planes: phase beyond the chunk"));
        }
        let layout = Layout {
            width,
            transform,
            phase,
        };
        let (n, tail) = layout.split_counts(raw_len);
        let mut p = HEADER_LEN;
        let head_at = p;
        p += phase;
        if p > stored.len() {
            return Err(CodecError::Truncated);
        }
        // Planes that are not stored raw are decoded into the scratch
        // buffer: at most width * n <= raw_len bytes.
        let mut srcs = [Src::Stored(0); 4];
        let coded: usize = {
            // First pass: count scratch planes without decoding.
            let mut q = p;
            let mut c = 0;
            for _ in 0..width {
                let mode = *stored.get(q).ok_or(CodecError::Truncated)?;
                q += 1;
                q += match mode {
                    MODE_RAW => n,
                    MODE_CONST => {
                        c += 1;
                        1
                    }
                    MODE_HUFFMAN | MODE_ZSTD => {
                        c += 1;
                        4 + read_u32(stored, q)?
                    }
                    _ => return Err(CodecError::Corrupt("planes: unknown plane mode")),
                };
                if q > stored.len() {
                    return Err(CodecError::Truncated);
                }
            }
            if q + tail != stored.len() {
                return Err(CodecError::Corrupt(
                    "planes: stored length does not match its contents",
                ));
            }
            c
        };
        self.scratch.clear();
        // Exact: never more than raw_len, whatever the growth policy.
        self.scratch.reserve_exact(coded * n);
        self.scratch.resize(coded * n, 0);
        let mut slot = 0;
        for src in srcs.iter_mut().take(width) {
            let mode = stored[p];
            p += 1;
            match mode {
                MODE_RAW => {
                    *src = Src::Stored(p);
                    p += n;
                }
                MODE_CONST => {
                    let v = stored[p];
                    p += 1;
                    self.scratch[slot * n..(slot + 1) * n].fill(v);
                    *src = Src::Scratch(slot * n);
                    slot += 1;
                }
                _ => {
                    let len = read_u32(stored, p)?;
                    p += 4;
                    let payload = &stored[p..p + len];
                    p += len;
                    let dst = &mut self.scratch[slot * n..(slot + 1) * n];
                    if mode == MODE_HUFFMAN {
                        let t = self.tables.get_or_insert_with(Default::default);
                        huff::decode(payload, t, dst)?;
                    } else {
                        let got = zstd.decompress_to_buffer(payload, dst).map_err(|_| {
                            CodecError::Corrupt("planes: zstd plane does not decode")
                        })?;
                        if got != n {
                            return Err(CodecError::Corrupt(
                                "planes: zstd plane has the wrong length",
                            ));
                        }
                    }
                    *src = Src::Scratch(slot * n);
                    slot += 1;
                }
            }
        }
        let tail_at = p;
        let mut refs: [&[u8]; 4] = [&[]; 4];
        for (r, s) in refs.iter_mut().zip(srcs.iter()).take(width) {
            *r = match *s {
                Src::Stored(at) => &stored[at..at + n],
                Src::Scratch(at) => &self.scratch[at..at + n],
            };
        }
        out.clear();
        out.reserve_exact(raw_len);
        out.extend_from_slice(&stored[head_at..head_at + phase]);
        out.resize(phase + n * width, 0);
        merge(&refs[..width], layout, &mut out[phase..]);
        out.extend_from_slice(&stored[tail_at..tail_at + tail]);
        debug_assert_eq!(out.len(), raw_len);
        Ok(())
    }
}
