//! Tessera's per-chunk codec: float-aware byte planes.
//!
//! A chunk (at most [`MAX_RAW_LEN`] bytes, typically 16–256 KiB of model
//! weights) is stored with one of three [`Method`]s, whose one-byte codes go
//! on disk:
//!
//! | code | method | stored bytes |
//! | ---: | --- | --- |
//! | 0 | [`Method::None`] | the raw bytes |
//! | 1 | [`Method::Zstd`] | one zstd frame (`zstd::bulk::decompress` reads it) |
//! | 2 | [`Method::FloatPlanes`] | byte planes, see `FORMAT.md` |
//!
//! Method 2 views the chunk as elements of 1, 2 or 4 bytes (after an
//! optional *phase* of leading bytes: content-defined chunks start
//! anywhere), rotates each element left by one bit so that a float's sign
//! moves to the lowest bit and (bf16, f32) its exponent fills the high
//! byte, splits the elements into byte planes, and stores each plane raw,
//! as a constant, Huffman-coded (four interleaved streams) or as a zstd
//! frame.
//!
//! [`Encoder`] picks the method per chunk from a [`Hint`] (the dtype, when
//! the caller knows it from a safetensors or GGUF header, and optionally the
//! element phase) and from cheap statistics of a few KiB sampled from the
//! chunk; data that will not compress is detected from the sample and
//! stored raw without compressing it. [`Decoder`] decodes any method, never
//! panics, never allocates more than the chunk's raw length (plus fixed-size
//! tables), and reports malformed input as a [`CodecError`].
//!
//! ```
//! use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Method};
//!
//! let raw = tessera_codec::testvec::normal_bf16(32 * 1024, 7);
//! let mut enc = Encoder::new(EncoderOptions::default()).unwrap();
//! let (method, stored) = {
//!     let e = enc.encode(&raw, DtypeHint::Bf16).unwrap();
//!     (e.method, e.bytes.to_vec())
//! };
//! assert_eq!(method, Method::FloatPlanes);
//! assert!(stored.len() < raw.len() * 3 / 4);
//!
//! let mut dec = Decoder::new().unwrap();
//! let mut out = Vec::new();
//! dec.decode(method.code(), &stored, raw.len(), &mut out).unwrap();
//! assert_eq!(out, raw);
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod detect;
mod huff;
mod planes;
pub mod testvec;

use std::fmt;

use planes::{Layout, TRANSFORM_NONE, TRANSFORM_ROTL1};

/// Largest raw chunk the codec encodes or decodes (the engine's maximum
/// chunk length). Decoders reject larger `raw_len`s before allocating.
pub const MAX_RAW_LEN: usize = 16 * 1024 * 1024;

/// Chunks shorter than this are always stored raw.
pub const MIN_CODED_LEN: usize = 32;

/// How a chunk's bytes are stored; the one-byte [`code`](Method::code) is
/// what goes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Method {
    /// Stored as is.
    None = 0,
    /// One zstd frame.
    Zstd = 1,
    /// Byte planes of 1-, 2- or 4-byte elements (`FORMAT.md`).
    FloatPlanes = 2,
}

impl Method {
    /// Every method, by code.
    pub const ALL: [Method; 3] = [Method::None, Method::Zstd, Method::FloatPlanes];

    /// The on-disk code.
    pub const fn code(self) -> u8 {
        self as u8
    }

    /// The method of an on-disk code, `None` for an unknown code.
    pub const fn from_code(code: u8) -> Option<Method> {
        match code {
            0 => Some(Method::None),
            1 => Some(Method::Zstd),
            2 => Some(Method::FloatPlanes),
            _ => None,
        }
    }

    /// A short name for output: `none`, `zstd`, `planes`.
    pub const fn name(self) -> &'static str {
        match self {
            Method::None => "none",
            Method::Zstd => "zstd",
            Method::FloatPlanes => "planes",
        }
    }
}

/// What the caller knows about the element type of a chunk's bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum DtypeHint {
    /// Nothing known: the encoder samples the chunk to choose.
    #[default]
    Unknown,
    /// bfloat16 elements.
    Bf16,
    /// IEEE binary16 elements.
    F16,
    /// IEEE binary32 elements.
    F32,
    /// 8-bit elements that are not packed blocks (int8 / uint8 / fp8
    /// tensors): one plane, order-0 entropy coded.
    I8,
    /// Block-quantized data (GGUF Q4/Q8/K-quants, packed int4): stored raw
    /// unless a sample shows clear redundancy, then zstd.
    Quantized,
    /// Known incompressible (already compressed, random): stored raw
    /// without looking.
    Incompressible,
}

impl DtypeHint {
    /// The hint for a safetensors dtype string (`"BF16"`, `"F32"`, …).
    pub fn from_safetensors(dtype: &str) -> DtypeHint {
        match dtype {
            "BF16" => DtypeHint::Bf16,
            "F16" => DtypeHint::F16,
            "F32" => DtypeHint::F32,
            "I8" | "U8" | "F8_E4M3" | "F8_E5M2" => DtypeHint::I8,
            _ => DtypeHint::Unknown,
        }
    }

    /// The hint for a GGUF tensor type (`ggml_type`): 0 F32, 1 F16, 30
    /// BF16, 24 I8; 25–28 (I16, I32, I64, F64) unknown; every other type is
    /// a block-quantized type.
    pub fn from_gguf_type(ggml_type: u32) -> DtypeHint {
        match ggml_type {
            0 => DtypeHint::F32,
            1 => DtypeHint::F16,
            30 => DtypeHint::Bf16,
            24 => DtypeHint::I8,
            25..=28 => DtypeHint::Unknown,
            _ => DtypeHint::Quantized,
        }
    }

    /// Element width in bytes for the float hints.
    pub fn float_width(self) -> Option<usize> {
        match self {
            DtypeHint::Bf16 | DtypeHint::F16 => Some(2),
            DtypeHint::F32 => Some(4),
            _ => None,
        }
    }
}

/// A [`DtypeHint`] and, optionally, where the first whole element starts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Hint {
    /// The element type.
    pub dtype: DtypeHint,
    /// Bytes before the first whole element of the chunk (`0..width`), or
    /// `None` to let the encoder find the alignment from a sample.
    pub phase: Option<u8>,
}

impl Hint {
    /// A hint with an unknown phase.
    pub const fn new(dtype: DtypeHint) -> Hint {
        Hint { dtype, phase: None }
    }

    /// A hint for a chunk that starts `offset` bytes after the start of a
    /// tensor's data (so element boundaries are known).
    pub fn at_offset(dtype: DtypeHint, offset: u64) -> Hint {
        let phase = dtype
            .float_width()
            .map(|w| ((w as u64 - offset % w as u64) % w as u64) as u8);
        Hint { dtype, phase }
    }
}

impl From<DtypeHint> for Hint {
    fn from(dtype: DtypeHint) -> Hint {
        Hint::new(dtype)
    }
}

/// Encoder settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EncoderOptions {
    /// zstd level for method 1 and for zstd-coded planes (default 3).
    pub zstd_level: i32,
    /// Store raw unless the stored form is at least this fraction smaller
    /// than the raw chunk (default 0.05).
    pub min_savings: f64,
}

impl Default for EncoderOptions {
    fn default() -> Self {
        EncoderOptions {
            zstd_level: 3,
            min_savings: 0.05,
        }
    }
}

/// The result of [`Encoder::encode`]: the method and the bytes to store
/// (borrowed from the input for [`Method::None`], else from the encoder).
#[derive(Clone, Copy, Debug)]
pub struct Encoded<'a> {
    /// The method; store `method.code()` with the bytes.
    pub method: Method,
    /// The stored bytes.
    pub bytes: &'a [u8],
}

/// Errors of the codec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CodecError {
    /// The method code is not one of [`Method::ALL`].
    UnknownMethod(u8),
    /// A raw length above [`MAX_RAW_LEN`].
    TooLarge {
        /// The length asked for.
        len: usize,
    },
    /// The stored bytes decode (or claim to decode) to another length.
    LengthMismatch {
        /// The raw length the caller expects.
        expected: usize,
        /// The length found.
        actual: usize,
    },
    /// The stored bytes end early.
    Truncated,
    /// The stored bytes are malformed.
    Corrupt(&'static str),
    /// zstd failed (creating a context, or a method-1 frame is invalid).
    Zstd(String),
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CodecError::UnknownMethod(c) => write!(f, "unknown chunk method code {c}"),
            CodecError::TooLarge { len } => {
                write!(f, "chunk length {len} exceeds the maximum {MAX_RAW_LEN}")
            }
            CodecError::LengthMismatch { expected, actual } => {
                write!(f, "chunk decodes to {actual} bytes, expected {expected}")
            }
            CodecError::Truncated => write!(f, "stored chunk is truncated"),
            CodecError::Corrupt(what) => write!(f, "stored chunk is corrupt: {what}"),
            CodecError::Zstd(e) => write!(f, "zstd: {e}"),
        }
    }
}

impl std::error::Error for CodecError {}

/// Chunk encoder with reusable state (zstd context, scratch buffers);
/// create one per thread.
pub struct Encoder {
    opts: EncoderOptions,
    zstd: zstd::bulk::Compressor<'static>,
    out: Vec<u8>,
    planes: Vec<u8>,
    zbuf: Vec<u8>,
    huff: huff::EncodeTables,
}

/// What the encoder will try for a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Plan {
    Raw,
    Zstd,
    Planes(Layout),
    /// Planes and whole-chunk zstd, the smaller wins (float data with
    /// long repeats).
    Both(Layout),
}

/// A plane whose sampled order-0 entropy is above this (bits per byte) is
/// stored raw without a full histogram.
const RAW_PLANE_BITS: f64 = 7.8;
/// A float hint whose sampled planes cost more than this (bits per byte)
/// is not trusted: the chunk is classified as if unhinted.
const HINT_TRUST_BITS: f64 = 7.5;

impl Encoder {
    /// A new encoder.
    pub fn new(opts: EncoderOptions) -> Result<Encoder, CodecError> {
        let zstd = zstd::bulk::Compressor::new(opts.zstd_level)
            .map_err(|e| CodecError::Zstd(e.to_string()))?;
        Ok(Encoder {
            opts,
            zstd,
            out: Vec::new(),
            planes: Vec::new(),
            zbuf: Vec::new(),
            huff: huff::EncodeTables::default(),
        })
    }

    /// The options.
    pub fn options(&self) -> EncoderOptions {
        self.opts
    }

    /// Largest stored size accepted for a raw chunk of `len` bytes.
    fn limit(&self, len: usize) -> usize {
        let keep = (1.0 - self.opts.min_savings).clamp(0.0, 1.0);
        ((len as f64) * keep).floor() as usize
    }

    /// Encodes one chunk. The stored form is `Method::None` (the input
    /// itself) unless another method saves at least `min_savings`. Errors
    /// only for a chunk longer than [`MAX_RAW_LEN`] or a zstd failure.
    pub fn encode<'a>(
        &'a mut self,
        raw: &'a [u8],
        hint: impl Into<Hint>,
    ) -> Result<Encoded<'a>, CodecError> {
        if raw.len() > MAX_RAW_LEN {
            return Err(CodecError::TooLarge { len: raw.len() });
        }
        let limit = self.limit(raw.len());
        let method = if raw.len() < MIN_CODED_LEN {
            Method::None
        } else {
            match self.plan(raw, hint.into()) {
                Plan::Raw => Method::None,
                Plan::Zstd => self.try_zstd(raw, limit),
                Plan::Planes(layout) => self.try_planes(raw, layout, limit),
                Plan::Both(layout) => {
                    let m = self.try_planes(raw, layout, limit);
                    let best = if m == Method::FloatPlanes {
                        self.out.len().saturating_sub(1)
                    } else {
                        limit
                    };
                    if zstd_into(&mut self.zstd, raw, best, &mut self.zbuf) {
                        std::mem::swap(&mut self.out, &mut self.zbuf);
                        Method::Zstd
                    } else {
                        m
                    }
                }
            }
        };
        Ok(match method {
            Method::None => Encoded { method, bytes: raw },
            _ => Encoded {
                method,
                bytes: &self.out,
            },
        })
    }

    /// Encodes with a fixed method (for measurements and tests): `None`
    /// copies, `Zstd` compresses whole, `FloatPlanes` uses the layout the
    /// hint (or the sample) suggests. Ignores `min_savings`.
    pub fn encode_with<'a>(
        &'a mut self,
        raw: &'a [u8],
        method: Method,
        hint: impl Into<Hint>,
    ) -> Result<Encoded<'a>, CodecError> {
        if raw.len() > MAX_RAW_LEN {
            return Err(CodecError::TooLarge { len: raw.len() });
        }
        let hint = hint.into();
        match method {
            Method::None => {}
            Method::Zstd => {
                if self.try_zstd(raw, usize::MAX) != Method::Zstd {
                    return Err(CodecError::Zstd("compression failed".into()));
                }
            }
            Method::FloatPlanes => {
                let layout = match self.plan(raw, hint) {
                    Plan::Planes(l) | Plan::Both(l) => l,
                    _ => match hint.dtype.float_width() {
                        Some(w) => Layout {
                            width: w,
                            transform: TRANSFORM_ROTL1,
                            phase: hint.phase.unwrap_or(0) as usize % w,
                        },
                        None => Layout {
                            width: 1,
                            transform: TRANSFORM_NONE,
                            phase: 0,
                        },
                    },
                };
                self.try_planes(raw, layout, usize::MAX);
            }
        }
        Ok(Encoded {
            method,
            bytes: if method == Method::None {
                raw
            } else {
                &self.out
            },
        })
    }

    fn plan(&self, raw: &[u8], hint: Hint) -> Plan {
        match hint.dtype {
            DtypeHint::Incompressible => Plan::Raw,
            DtypeHint::Quantized => {
                let st = detect::ByteStats::sample(raw);
                let worth = 8.0 * (1.0 - self.opts.min_savings) - 0.25;
                if st.bits_per_byte() < worth || st.has_runs() || detect::match_fraction(raw) > 0.1
                {
                    Plan::Zstd
                } else {
                    Plan::Raw
                }
            }
            DtypeHint::I8 => Plan::Planes(Layout {
                width: 1,
                transform: TRANSFORM_NONE,
                phase: 0,
            }),
            DtypeHint::Bf16 | DtypeHint::F16 | DtypeHint::F32 => {
                let width = hint.dtype.float_width().unwrap_or(2);
                let (phase, bits) = best_phase(raw, width, hint.phase);
                if bits > HINT_TRUST_BITS * width as f64 {
                    self.detect(raw)
                } else {
                    Plan::Planes(Layout {
                        width,
                        transform: TRANSFORM_ROTL1,
                        phase,
                    })
                }
            }
            DtypeHint::Unknown => self.detect(raw),
        }
    }

    /// Classifies a chunk from samples: element width from the entropy of
    /// bytes grouped by position, phase and rotation from the sampled
    /// planes' entropy, zstd for long repeats, raw when
    /// nothing promises the minimum savings.
    fn detect(&self, raw: &[u8]) -> Plan {
        let pos = detect::position_stats(raw);
        let n: u64 = pos.iter().flat_map(|h| h.iter()).map(|&c| c as u64).sum();
        if n == 0 {
            return Plan::Raw;
        }
        let n = n as f64;
        let all = detect::add(
            &detect::add(&pos[0], &pos[1]),
            &detect::add(&pos[2], &pos[3]),
        );
        let e1 = detect::entropy_bits(&all) / n;
        let e2 = (detect::entropy_bits(&detect::add(&pos[0], &pos[2]))
            + detect::entropy_bits(&detect::add(&pos[1], &pos[3])))
            / n;
        let e4 = pos.iter().map(detect::entropy_bits).sum::<f64>() / n;
        let (mut width, mut est) = (1usize, e1);
        if e2 < est - 0.1 {
            (width, est) = (2, e2);
        }
        if e4 < est - 0.15 {
            (width, est) = (4, e4);
        }
        let worth = 8.0 * (1.0 - self.opts.min_savings) + 0.25;
        if width == 1 {
            // Random-looking bytes are stored raw without looking for
            // repeats (rare in a chunk: repeats of whole chunks dedup).
            if est > worth {
                return Plan::Raw;
            }
            // LZ redundancy (text, repeated values or rows).
            if detect::match_fraction(raw) >= 0.1 {
                return Plan::Zstd;
            }
            return Plan::Planes(Layout {
                width: 1,
                transform: TRANSFORM_NONE,
                phase: 0,
            });
        }
        let (phase, rotated) = best_phase(raw, width, None);
        // Rotating helps floats (the exponent fills a byte); keep the bytes
        // as they are when it does not (integers).
        let plain = detect::layout_bits(raw, width, phase, false);
        let (transform, bits) = if rotated <= plain + 0.02 {
            (TRANSFORM_ROTL1, rotated)
        } else {
            (TRANSFORM_NONE, plain)
        };
        let layout = Layout {
            width,
            transform,
            phase,
        };
        if detect::match_fraction(raw) >= 0.25 {
            // Long repeats: zstd may beat the planes (text), or the planes
            // with zstd-coded planes may beat zstd (repetitive floats).
            return Plan::Both(layout);
        }
        if bits / width as f64 > worth {
            return Plan::Raw;
        }
        Plan::Planes(layout)
    }

    fn try_zstd(&mut self, raw: &[u8], limit: usize) -> Method {
        if zstd_into(&mut self.zstd, raw, limit, &mut self.out) {
            Method::Zstd
        } else {
            Method::None
        }
    }

    fn try_planes(&mut self, raw: &[u8], mut layout: Layout, limit: usize) -> Method {
        if layout.phase > raw.len() {
            // A chunk shorter than the phase: no element starts in it.
            layout.phase = 0;
        }
        let Encoder {
            out,
            planes,
            zstd,
            zbuf,
            huff,
            ..
        } = self;
        out.clear();
        planes::write_header(out, layout, raw.len());
        out.extend_from_slice(&raw[..layout.phase.min(raw.len())]);
        let (n, tail) = layout.split_counts(raw.len());
        let data: &[u8] = if layout.width == 1 {
            &raw[layout.phase..layout.phase + n]
        } else {
            planes::split(raw, layout, planes);
            planes
        };
        for k in 0..layout.width {
            encode_plane(&data[k * n..(k + 1) * n], out, zstd, zbuf, huff);
            if out.len() > limit {
                return Method::None;
            }
        }
        out.extend_from_slice(&raw[raw.len() - tail..]);
        if out.len() <= limit {
            Method::FloatPlanes
        } else {
            Method::None
        }
    }
}

/// Compresses `raw` into `out` as one zstd frame; false when it fails or
/// takes more than `limit` bytes.
fn zstd_into(
    z: &mut zstd::bulk::Compressor<'static>,
    raw: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    let cap = zstd::zstd_safe::compress_bound(raw.len()).min(limit);
    out.reserve_exact(cap);
    matches!(z.compress_to_buffer(raw, out), Ok(n) if n <= limit)
}

/// The phase (of `0..width`, or the given one) whose rotated byte planes
/// have the least sampled entropy, and that entropy in bits per element.
fn best_phase(raw: &[u8], width: usize, given: Option<u8>) -> (usize, f64) {
    let phases = match given {
        Some(p) => (p as usize % width)..(p as usize % width + 1),
        None => 0..width,
    };
    let mut best = (0, f64::INFINITY);
    for p in phases {
        let bits = detect::layout_bits(raw, width, p, true);
        if bits < best.1 {
            best = (p, bits);
        }
    }
    best
}

/// Appends one plane record (mode byte and payload) to `out`.
fn encode_plane(
    plane: &[u8],
    out: &mut Vec<u8>,
    zstd: &mut zstd::bulk::Compressor<'static>,
    zbuf: &mut Vec<u8>,
    huff: &mut huff::EncodeTables,
) {
    let n = plane.len();
    let raw = |out: &mut Vec<u8>| {
        out.push(planes::MODE_RAW);
        out.extend_from_slice(plane);
    };
    if n == 0 {
        return raw(out);
    }
    let st = detect::ByteStats::sample(plane);
    let runs = st.has_runs();
    if st.bits_per_byte() > RAW_PLANE_BITS && !runs {
        return raw(out);
    }
    let mut hist = [0u32; 256];
    huff::histogram(plane, &mut hist);
    let mut lens = [0u8; 256];
    if huff::code_lengths(&hist, &mut lens) == 1 {
        out.push(planes::MODE_CONST);
        out.push(plane[0]);
        return;
    }
    let huff_size = huff::payload_size_bound(&hist, &lens);
    // Best so far: raw costs n, Huffman its payload plus a 4-byte length.
    let mut best = n.min(huff_size + 4);
    let max_count = hist.iter().copied().max().unwrap_or(0) as usize;
    if runs || max_count * 2 > n {
        // Runs or one dominant symbol: order-0 coding wastes bits (Huffman
        // spends at least one bit a symbol), an LZ coder does not.
        zbuf.clear();
        zbuf.reserve_exact(best);
        if let Ok(z) = zstd.compress_to_buffer(plane, zbuf) {
            if z + 4 < best {
                out.push(planes::MODE_ZSTD);
                out.extend_from_slice(&(z as u32).to_le_bytes());
                out.extend_from_slice(&zbuf[..z]);
                return;
            }
        }
        best = best.min(n);
    }
    if best >= n {
        return raw(out);
    }
    out.push(planes::MODE_HUFFMAN);
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    huff::encode(plane, &lens, huff, out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_le_bytes());
}

/// Chunk decoder with reusable state; create one per thread.
pub struct Decoder {
    zstd: zstd::bulk::Decompressor<'static>,
    planes: planes::PlaneDecoder,
}

impl Decoder {
    /// A new decoder.
    pub fn new() -> Result<Decoder, CodecError> {
        Ok(Decoder {
            zstd: zstd::bulk::Decompressor::new().map_err(|e| CodecError::Zstd(e.to_string()))?,
            planes: planes::PlaneDecoder::default(),
        })
    }

    /// Bytes of scratch the decoder holds between calls (not counting
    /// fixed-size tables and zstd's context): `(c - 1) * n` for the last
    /// method-2 chunk with `c >= 2` coded planes of `n` bytes, so never more
    /// than the largest `raw_len` decoded; 0 while every chunk had at most
    /// one coded plane.
    pub fn scratch_capacity(&self) -> usize {
        self.planes.scratch_capacity()
    }

    /// Decodes a stored chunk of method `method_code` into `out` (cleared
    /// first). On success `out` holds exactly `raw_len` bytes. Never
    /// panics. Whatever `stored` says, `out` is given exactly `raw_len`
    /// bytes of capacity (unless it already had more) and nothing else is
    /// sized by the stored bytes: a method-2 chunk with one Huffman or zstd
    /// plane (the usual float case) is decoded inside `out`; further coded
    /// planes use a reusable scratch of at most `raw_len` bytes (see
    /// [`scratch_capacity`](Decoder::scratch_capacity)); tables are fixed
    /// size. On error `out`'s contents are unspecified.
    pub fn decode(
        &mut self,
        method_code: u8,
        stored: &[u8],
        raw_len: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let method =
            Method::from_code(method_code).ok_or(CodecError::UnknownMethod(method_code))?;
        if raw_len > MAX_RAW_LEN {
            return Err(CodecError::TooLarge { len: raw_len });
        }
        match method {
            Method::None => {
                if stored.len() != raw_len {
                    return Err(CodecError::LengthMismatch {
                        expected: raw_len,
                        actual: stored.len(),
                    });
                }
                out.clear();
                out.extend_from_slice(stored);
                Ok(())
            }
            Method::Zstd => {
                out.clear();
                out.reserve_exact(raw_len);
                out.resize(raw_len, 0);
                // Into exactly raw_len bytes: a longer frame is an error,
                // never a larger write or allocation.
                let n = self
                    .zstd
                    .decompress_to_buffer(stored, &mut out[..])
                    .map_err(|e| CodecError::Zstd(e.to_string()))?;
                if n != raw_len {
                    return Err(CodecError::LengthMismatch {
                        expected: raw_len,
                        actual: n,
                    });
                }
                Ok(())
            }
            Method::FloatPlanes => self.planes.decode(stored, raw_len, &mut self.zstd, out),
        }
    }
}

/// A description of a method-2 stored chunk, for reports and debugging.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanesInfo {
    /// Element width (1, 2 or 4).
    pub width: u8,
    /// Transform code (0 none, 1 rotate-left-1).
    pub transform: u8,
    /// Phase (leading raw bytes).
    pub phase: u8,
    /// Mode of each plane (0 raw, 1 constant, 2 Huffman, 3 zstd).
    pub modes: Vec<u8>,
}

/// Describes a method-2 stored chunk's header and plane modes, or `None`
/// when the header is malformed.
pub fn planes_info(stored: &[u8]) -> Option<PlanesInfo> {
    let h = stored.get(..planes::HEADER_LEN)?;
    let (width, transform, phase) = (h[0], h[1], h[2]);
    if !matches!(width, 1 | 2 | 4) || phase >= width {
        return None;
    }
    let raw_len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]) as usize;
    let layout = Layout {
        width: width as usize,
        transform,
        phase: phase as usize,
    };
    let (n, _) = layout.split_counts(raw_len);
    let mut p = planes::HEADER_LEN + phase as usize;
    let mut modes = Vec::new();
    for _ in 0..width {
        let mode = *stored.get(p)?;
        p += 1;
        p += match mode {
            planes::MODE_RAW => n,
            planes::MODE_CONST => 1,
            planes::MODE_HUFFMAN | planes::MODE_ZSTD => {
                let b = stored.get(p..p + 4)?;
                4 + u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize
            }
            _ => return None,
        };
        modes.push(mode);
    }
    Some(PlanesInfo {
        width,
        transform,
        phase,
        modes,
    })
}

/// Fuzzing entry point for the engine's cargo-fuzz crate: decodes
/// arbitrary bytes (first byte: method code, next three: raw length,
/// rest: stored bytes) and checks the decoder's contract, then round-trips
/// the stored bytes through the encoder.
#[cfg(feature = "fuzzing")]
pub fn fuzz_decode(data: &[u8]) {
    let Some((head, stored)) = data.split_first_chunk::<4>() else {
        return;
    };
    let method = head[0] % 4;
    // Bounded to 1 MiB so fuzzing stays fast.
    let raw_len = u32::from_le_bytes([head[1], head[2], head[3], 0]) as usize % (1 << 20);
    let mut dec = Decoder::new().expect("zstd context");
    let mut out = Vec::new();
    if dec.decode(method, stored, raw_len, &mut out).is_ok() {
        assert_eq!(out.len(), raw_len);
    }
    assert!(out.capacity() <= raw_len.max(stored.len()) + 64);
    // For method 2 the header names the raw length itself.
    if method == 2 && stored.len() >= 8 {
        let claimed = u32::from_le_bytes([stored[4], stored[5], stored[6], stored[7]]) as usize;
        if claimed <= 1 << 20 && dec.decode(2, stored, claimed, &mut out).is_ok() {
            assert_eq!(out.len(), claimed);
        }
    }
    let hints = [
        DtypeHint::Unknown,
        DtypeHint::Bf16,
        DtypeHint::F16,
        DtypeHint::F32,
        DtypeHint::I8,
        DtypeHint::Quantized,
    ];
    let hint = Hint {
        dtype: hints[head[1] as usize % hints.len()],
        phase: if head[2] & 0x80 != 0 {
            Some(head[2] & 3)
        } else {
            None
        },
    };
    let mut enc = Encoder::new(EncoderOptions::default()).expect("zstd context");
    let e = enc.encode(stored, hint).expect("encode within the limit");
    let (m, bytes) = (e.method, e.bytes.to_vec());
    dec.decode(m.code(), &bytes, stored.len(), &mut out)
        .expect("the encoder's output decodes");
    assert_eq!(out, stored);
}
