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
    // The loops walk whole elements (`as_chunks`, not `chunks_exact`: the
    // compiler then knows each element's length and vectorises the
    // shuffles, ~6× faster).
    match layout.width {
        1 => planes.copy_from_slice(body),
        2 => {
            let (p0, p1) = planes.split_at_mut(n);
            let it = body.as_chunks::<2>().0.iter().zip(p0).zip(p1);
            if rot {
                for ((&e, a), b) in it {
                    [*a, *b] = u16::from_le_bytes(e).rotate_left(1).to_le_bytes();
                }
            } else {
                for ((&[x, y], a), b) in it {
                    (*a, *b) = (x, y);
                }
            }
        }
        4 => {
            let (p0, rest) = planes.split_at_mut(n);
            let (p1, rest) = rest.split_at_mut(n);
            let (p2, p3) = rest.split_at_mut(n);
            let it = body
                .as_chunks::<4>()
                .0
                .iter()
                .zip(p0)
                .zip(p1)
                .zip(p2)
                .zip(p3);
            for ((((&e, a), b), c), d) in it {
                let mut v = u32::from_le_bytes(e);
                if rot {
                    v = v.rotate_left(1);
                }
                [*a, *b, *c, *d] = v.to_le_bytes();
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
                .as_chunks_mut::<2>()
                .0
                .iter_mut()
                .zip(planes[0])
                .zip(planes[1]);
            if rot {
                for ((o, &a), &b) in it {
                    *o = u16::from_le_bytes([a, b]).rotate_right(1).to_le_bytes();
                }
            } else {
                for ((o, &a), &b) in it {
                    *o = [a, b];
                }
            }
        }
        4 => {
            let it = body
                .as_chunks_mut::<4>()
                .0
                .iter_mut()
                .zip(planes[0])
                .zip(planes[1])
                .zip(planes[2])
                .zip(planes[3]);
            for ((((o, &a), &b), &c), &d) in it {
                let mut v = u32::from_le_bytes([a, b, c, d]);
                if rot {
                    v = v.rotate_right(1);
                }
                *o = v.to_le_bytes();
            }
        }
        // Layouts are validated before use.
        _ => {}
    }
}

/// Elements per block of the merge: a block of the in-place plane is
/// copied out before the block's elements overwrite it.
const MERGE_BLOCK: usize = 4096;

/// Reusable decoder state for the planes format.
#[derive(Default)]
pub struct PlaneDecoder {
    /// Coded planes after the first one (the first is decoded into the
    /// output buffer itself).
    scratch: Vec<u8>,
    /// One merge block per plane: constant planes, and the in-place plane's
    /// block copied out (fixed size).
    blocks: Vec<u8>,
    tables: Option<Box<huff::DecodeTables>>,
}

fn read_u32(b: &[u8], at: usize) -> Result<usize, CodecError> {
    let s = b.get(at..at + 4).ok_or(CodecError::Truncated)?;
    Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]) as usize)
}

/// Where a plane's bytes are.
#[derive(Clone, Copy, Debug)]
enum Src {
    /// In the stored bytes at this offset (raw plane).
    Stored(usize),
    /// Constant.
    Const(u8),
    /// Decoded into the last `n` bytes of the output body.
    InPlace,
    /// Decoded into the scratch buffer at this offset.
    Scratch(usize),
}

/// A coded plane's mode and payload.
#[derive(Clone, Copy)]
struct Coded {
    mode: u8,
    at: usize,
    len: usize,
}

impl PlaneDecoder {
    pub fn scratch_capacity(&self) -> usize {
        self.scratch.capacity()
    }

    fn decode_plane(
        &mut self,
        stored: &[u8],
        c: Coded,
        zstd: &mut zstd::bulk::Decompressor<'static>,
        dst: &mut [u8],
    ) -> Result<(), CodecError> {
        let payload = &stored[c.at..c.at + c.len];
        if c.mode == MODE_HUFFMAN {
            let t = self.tables.get_or_insert_with(Default::default);
            huff::decode(payload, t, dst)
        } else {
            let got = zstd
                .decompress_to_buffer(payload, dst)
                .map_err(|_| CodecError::Corrupt("planes: zstd plane does not decode"))?;
            if got != dst.len() {
                return Err(CodecError::Corrupt(
                    "planes: zstd plane has the wrong length",
                ));
            }
            Ok(())
        }
    }

    /// Decodes a method-2 chunk into `out` (cleared first), which ends with
    /// exactly `raw_len` bytes on success. Whatever `stored` says, `out`
    /// gets exactly `raw_len` bytes of capacity and the scratch holds at
    /// most `(c - 1) * n <= raw_len` bytes for `c >= 2` Huffman or zstd
    /// planes of `n` bytes (none for the usual single coded plane).
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
        let head_at = HEADER_LEN;
        // Parse the plane records (no decoding yet): every length is
        // checked against the stored bytes before anything is allocated.
        let mut srcs = [Src::Const(0); 4];
        let mut coded: [Option<Coded>; 4] = [None; 4];
        let mut q = HEADER_LEN + phase;
        if q > stored.len() {
            return Err(CodecError::Truncated);
        }
        for k in 0..width {
            let mode = *stored.get(q).ok_or(CodecError::Truncated)?;
            q += 1;
            match mode {
                MODE_RAW => {
                    srcs[k] = Src::Stored(q);
                    q += n;
                }
                MODE_CONST => {
                    srcs[k] = Src::Const(*stored.get(q).ok_or(CodecError::Truncated)?);
                    q += 1;
                }
                MODE_HUFFMAN | MODE_ZSTD => {
                    let len = read_u32(stored, q)?;
                    q += 4;
                    coded[k] = Some(Coded { mode, at: q, len });
                    q = q.checked_add(len).ok_or(CodecError::Truncated)?;
                }
                _ => return Err(CodecError::Corrupt("planes: unknown plane mode")),
            }
            if q > stored.len() {
                return Err(CodecError::Truncated);
            }
        }
        if q + tail != stored.len() {
            return Err(CodecError::Corrupt(
                "planes: stored length does not match its contents",
            ));
        }
        let tail_at = q;

        // The first coded plane is decoded into the last n bytes of the
        // body: merging block by block from the front never overwrites a
        // byte of it that is still to be read (element i writes bytes
        // < W*(i+1) <= (W-1)*n + i + 1 of the body, and its block was
        // copied out first). Further coded planes go to the scratch.
        let ncoded = coded.iter().flatten().count();
        self.scratch.clear();
        let extra = ncoded.saturating_sub(1) * n;
        self.scratch.reserve_exact(extra);
        self.scratch.resize(extra, 0);
        out.clear();
        out.reserve_exact(raw_len);
        out.extend_from_slice(&stored[head_at..head_at + phase]);
        out.resize(phase + n * width, 0);
        let mut slot = 0;
        let mut first = true;
        for k in 0..width {
            let Some(c) = coded[k] else { continue };
            if first {
                let body = &mut out[phase..];
                let dst = &mut body[(width - 1) * n..];
                self.decode_plane(stored, c, zstd, dst)?;
                srcs[k] = Src::InPlace;
                first = false;
            } else {
                let mut scratch = std::mem::take(&mut self.scratch);
                let r = self.decode_plane(stored, c, zstd, &mut scratch[slot * n..(slot + 1) * n]);
                self.scratch = scratch;
                r?;
                srcs[k] = Src::Scratch(slot * n);
                slot += 1;
            }
        }
        if self.blocks.len() != 4 * MERGE_BLOCK {
            self.blocks = vec![0; 4 * MERGE_BLOCK];
        }
        for (k, s) in srcs.iter().enumerate().take(width) {
            if let Src::Const(v) = *s {
                self.blocks[k * MERGE_BLOCK..(k + 1) * MERGE_BLOCK].fill(v);
            }
        }
        let body = &mut out[phase..];
        // One element byte decoded in place is already the body.
        let mut i0 = if width == 1 && matches!(srcs[0], Src::InPlace) {
            n
        } else {
            0
        };
        while i0 < n {
            let i1 = (i0 + MERGE_BLOCK).min(n);
            let m = i1 - i0;
            for (k, s) in srcs.iter().enumerate().take(width) {
                if let Src::InPlace = s {
                    let from = (width - 1) * n + i0;
                    self.blocks[k * MERGE_BLOCK..k * MERGE_BLOCK + m]
                        .copy_from_slice(&body[from..from + m]);
                }
            }
            let mut refs: [&[u8]; 4] = [&[]; 4];
            for (k, (r, s)) in refs.iter_mut().zip(srcs.iter()).enumerate().take(width) {
                *r = match *s {
                    Src::Stored(at) => &stored[at + i0..at + i1],
                    Src::Scratch(at) => &self.scratch[at + i0..at + i1],
                    Src::Const(_) | Src::InPlace => {
                        &self.blocks[k * MERGE_BLOCK..k * MERGE_BLOCK + m]
                    }
                };
            }
            merge(&refs[..width], layout, &mut body[width * i0..width * i1]);
            i0 = i1;
        }
        out.extend_from_slice(&stored[tail_at..tail_at + tail]);
        debug_assert_eq!(out.len(), raw_len);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plane `k`'s byte of element `i`, straight from the spec: the
    /// element read little-endian, rotated left by one bit if asked, byte
    /// `k` of the result.
    fn reference(body: &[u8], width: usize, rot: bool, k: usize, i: usize) -> u8 {
        let mut v = 0u32;
        for b in 0..width {
            v |= (body[i * width + b] as u32) << (8 * b);
        }
        if rot {
            let bits = 8 * width as u32;
            v = ((v << 1) | (v >> (bits - 1))) & (u32::MAX >> (32 - bits));
        }
        (v >> (8 * k)) as u8
    }

    #[test]
    fn split_and_merge_match_the_reference_for_every_layout() {
        let raw: Vec<u8> = (0..1000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        for width in [1, 2, 4] {
            for transform in [TRANSFORM_NONE, TRANSFORM_ROTL1] {
                for phase in 0..width {
                    // Lengths around the vector widths and with tails.
                    for len in [0, 1, 2, 3, 5, 31, 32, 33, 63, 64, 65, 127, 129, 997, 1000] {
                        let layout = Layout {
                            width,
                            transform,
                            phase: phase.min(len),
                        };
                        let raw = &raw[..len];
                        let mut planes = Vec::new();
                        let n = split(raw, layout, &mut planes);
                        let body = &raw[layout.phase..layout.phase + n * width];
                        let rot = transform == TRANSFORM_ROTL1 && width > 1;
                        for k in 0..width {
                            for i in 0..n {
                                assert_eq!(
                                    planes[k * n + i],
                                    reference(body, width, rot, k, i),
                                    "{layout:?} len {len} plane {k} element {i}"
                                );
                            }
                        }
                        let refs: Vec<&[u8]> = planes.chunks(n.max(1)).collect();
                        let mut back = vec![0u8; n * width];
                        if n > 0 {
                            merge(&refs, layout, &mut back);
                        }
                        assert_eq!(back, body, "{layout:?} len {len}");
                    }
                }
            }
        }
    }
}
