//! Whole-file compressed streams: `joblib.dump(..., compress=...)` and
//! `pickle` written through `gzip.open` are pickles a loader decompresses
//! and runs (joblib, `pandas.read_pickle` and friends detect the
//! compression by its magic bytes).
//!
//! The sniffer does not analyse a compressed pickle: it decompresses the
//! stream as its bytes come in (gzip with every member, zlib, zstd, bzip2
//! with every stream) into a sink that keeps the first [`OUTPUT_PREFIX`]
//! bytes of output and then stops the decoder, so no input window limits
//! what is seen (padding, long header fields, empty blocks) and memory and
//! work stay bounded. xz and lzma-alone are decoded from the first
//! [`BUFFERED_INPUT`] bytes. If the output starts like a pickle (a `PROTO`
//! header, or a header-less stream that calls an import or is one clean
//! pickle), the file is a pickle that was not analysed, which is unsafe;
//! so is an xz or lzma-alone stream whose start could not be decoded
//! within that bound. lz4 frames are only recognised.

use std::io::{self, Write};

use crate::info::{Format, ModelInfo, PickleReport};
use crate::pickle::{self, PickleLimits, PickleScanner};

/// Decompressed bytes looked at.
pub(crate) const OUTPUT_PREFIX: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip,
    Zlib,
    Zstd,
    Bzip2,
    Xz,
    LzmaAlone,
    Lz4,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zlib => "zlib",
            Codec::Zstd => "zstd",
            Codec::Bzip2 => "bzip2",
            Codec::Xz => "xz",
            Codec::LzmaAlone => "lzma",
            Codec::Lz4 => "lz4",
        }
    }
}

/// The codec whose magic `head` starts with. zlib is recognised only with
/// the header Python's `zlib` (and so joblib) writes, `0x78`, whose first
/// byte is no pickle opcode and no other format's.
pub(crate) fn detect(head: &[u8]) -> Option<Codec> {
    let zlib = |h: &[u8]| {
        h.len() >= 2
            && h[0] == 0x78
            && h[1] & 0x20 == 0
            && (u16::from(h[0]) << 8 | u16::from(h[1])) % 31 == 0
    };
    if head.starts_with(b"\x1f\x8b\x08") {
        Some(Codec::Gzip)
    } else if zlib(head) {
        Some(Codec::Zlib)
    } else if head.starts_with(b"\x28\xb5\x2f\xfd") {
        Some(Codec::Zstd)
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|b| (b'1'..=b'9').contains(b)) {
        Some(Codec::Bzip2)
    } else if head.starts_with(b"\xfd7zXZ\x00") {
        Some(Codec::Xz)
    } else if head.starts_with(b"\x04\x22\x4d\x18") {
        Some(Codec::Lz4)
    } else if lzma_alone(head) {
        Some(Codec::LzmaAlone)
    } else {
        None
    }
}

/// Compressed bytes kept, for the codecs decoded from a buffer (xz and
/// lzma-alone); the others are decoded as the bytes stream in.
pub(crate) const BUFFERED_INPUT: usize = 4 << 20;

/// Keeps the first [`OUTPUT_PREFIX`] bytes written to it, then refuses
/// more, which stops the decoder writing into it.
struct Sink(Vec<u8>);

impl Sink {
    fn full(&self) -> bool {
        self.0.len() >= OUTPUT_PREFIX
    }
}

impl Write for Sink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = OUTPUT_PREFIX.saturating_sub(self.0.len());
        if room == 0 && !data.is_empty() {
            return Err(io::Error::other("output prefix full"));
        }
        let n = room.min(data.len());
        self.0.extend_from_slice(&data[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The decoder a stream is fed to.
enum Decoder {
    Gzip(Box<Gzip>),
    Zlib(Box<flate2::write::ZlibDecoder<Sink>>),
    Zstd(Box<zstd::stream::write::Decoder<'static, Sink>>),
    Bzip2(Box<bzip2::write::BzDecoder<Sink>>),
    /// xz and lzma-alone: the first [`BUFFERED_INPUT`] bytes.
    Buffered(Vec<u8>),
    /// Stopped (output full, a decode error, or not decoded): what came out.
    Stopped(Sink),
}

/// An lzma-alone (`.lzma`, `FORMAT_ALONE`) header, checked as xz-utils
/// does: a properties byte below 225, a dictionary size that is 2^n or
/// 2^n + 2^(n-1) of at least 4 KiB, and an uncompressed size that is
/// unknown (all ones) or below 2^38.
fn lzma_alone(head: &[u8]) -> bool {
    let (Some(&props), Some(d), Some(u)) = (head.first(), head.get(1..5), head.get(5..13)) else {
        return false;
    };
    let dict = u32::from_le_bytes([d[0], d[1], d[2], d[3]]);
    let size = u64::from_le_bytes([u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7]]);
    let mut r = dict.wrapping_sub(1);
    r |= r >> 2;
    r |= r >> 3;
    r |= r >> 4;
    r |= r >> 8;
    r |= r >> 16;
    let rounded = r.wrapping_add(1);
    props < 225 && dict >= 4096 && rounded == dict && (size == u64::MAX || size < 1 << 38)
}

/// A compressed stream being fed: decompressed as it streams in, until
/// [`OUTPUT_PREFIX`] bytes have come out or the data is corrupt.
pub(crate) struct Compressed {
    codec: Codec,
    dec: Decoder,
    /// Input bytes seen.
    seen: u64,
}

impl Compressed {
    pub fn new(codec: Codec) -> Self {
        let sink = || Sink(Vec::new());
        let dec = match codec {
            Codec::Gzip => Decoder::Gzip(Box::new(Gzip::new(sink()))),
            Codec::Zlib => Decoder::Zlib(Box::new(flate2::write::ZlibDecoder::new(sink()))),
            Codec::Zstd => match zstd::stream::write::Decoder::new(sink()) {
                Ok(d) => Decoder::Zstd(Box::new(d)),
                Err(_) => Decoder::Stopped(sink()),
            },
            Codec::Bzip2 => Decoder::Bzip2(Box::new(bzip2::write::BzDecoder::new(sink()))),
            Codec::Xz | Codec::LzmaAlone => Decoder::Buffered(Vec::new()),
            Codec::Lz4 => Decoder::Stopped(sink()),
        };
        Compressed {
            codec,
            dec,
            seen: 0,
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        self.seen = self.seen.saturating_add(data.len() as u64);
        let stop = match &mut self.dec {
            Decoder::Gzip(g) => g.feed(data).is_none() || g.full(),
            Decoder::Zlib(d) => d.write_all(data).is_err() || d.get_ref().full(),
            Decoder::Zstd(d) => d.write_all(data).is_err() || d.get_ref().full(),
            Decoder::Bzip2(_) => return self.feed_bzip2(data),
            Decoder::Buffered(buf) => {
                let room = BUFFERED_INPUT.saturating_sub(buf.len());
                buf.extend_from_slice(&data[..room.min(data.len())]);
                false
            }
            Decoder::Stopped(_) => false,
        };
        if stop {
            self.stop();
        }
    }

    /// bzip2 files may hold several streams one after the other (Python's
    /// `bz2` reads them all): a new decoder starts where one ends.
    fn feed_bzip2(&mut self, mut data: &[u8]) {
        while let Decoder::Bzip2(d) = &mut self.dec {
            if data.is_empty() {
                return;
            }
            match d.write(data) {
                Ok(0) => match d.finish() {
                    // The stream ended: the next one starts here.
                    Ok(sink) => {
                        self.dec = Decoder::Bzip2(Box::new(bzip2::write::BzDecoder::new(sink)))
                    }
                    Err(_) => return self.stop(),
                },
                Ok(n) => {
                    data = &data[n.min(data.len())..];
                    if d.get_ref().full() {
                        return self.stop();
                    }
                }
                Err(_) => return self.stop(),
            }
        }
    }

    /// Flushes what the decoder holds and keeps only its output.
    fn stop(&mut self) {
        let dec = std::mem::replace(&mut self.dec, Decoder::Stopped(Sink(Vec::new())));
        self.dec = Decoder::Stopped(match dec {
            Decoder::Gzip(g) => g.into_sink(),
            Decoder::Zlib(mut d) => {
                let _ = d.try_finish();
                take_sink(d.get_mut())
            }
            Decoder::Zstd(mut d) => {
                let _ = d.flush();
                take_sink(d.get_mut())
            }
            Decoder::Bzip2(mut d) => {
                let _ = d.try_finish();
                take_sink(d.get_mut())
            }
            Decoder::Buffered(_) => Sink(Vec::new()),
            Decoder::Stopped(s) => s,
        });
    }

    pub fn finish(mut self, total_len: u64, limits: &PickleLimits) -> ModelInfo {
        let name = self.codec.name();
        // Whether the output seen may be a prefix that stops short of
        // where a pickle would show (xz and lzma-alone beyond the input
        // bound, or in a layout not decoded here).
        let mut short = false;
        let out = match std::mem::replace(&mut self.dec, Decoder::Stopped(Sink(Vec::new()))) {
            Decoder::Buffered(buf) => {
                let bounded = (buf.len() as u64) < self.seen;
                let (out, reached) = match self.codec {
                    Codec::Xz => xz_prefix(&buf),
                    _ => lzma_alone_prefix(&buf),
                };
                short = !reached || (bounded && out.len() < OUTPUT_PREFIX);
                Some(out)
            }
            Decoder::Stopped(_) if self.codec == Codec::Lz4 => None,
            other => {
                self.dec = other;
                self.stop();
                match &self.dec {
                    Decoder::Stopped(s) => Some(s.0.clone()),
                    _ => Some(Vec::new()),
                }
            }
        };
        let Some(out) = out else {
            let mut i = ModelInfo::empty(Format::Other, total_len);
            i.reason = Some(format!(
                "{name}-compressed stream; its content is not looked into"
            ));
            return i;
        };
        let unsafe_info = |mut report: PickleReport, reason: String| {
            let mut i = ModelInfo::empty(Format::Pickle, total_len);
            i.variant = Some(name.to_string());
            report.location = format!("{name} stream");
            report.complete = false;
            report.reason = Some(reason);
            i.pickles.push(report);
            i
        };
        match pickle_start(&out, limits) {
            Some(report) => {
                unsafe_info(report, format!("compressed pickle ({name}), not analysed"))
            }
            None if short => {
                let report = PickleReport {
                    location: String::new(),
                    offset: None,
                    protocol: None,
                    bytes: 0,
                    opcodes: 0,
                    complete: false,
                    reason: None,
                    imports: Vec::new(),
                };
                unsafe_info(
                    report,
                    format!(
                        "compressed stream ({name}) not analysed: its start could not be decompressed within the bounds"
                    ),
                )
            }
            None => {
                let mut i = ModelInfo::empty(Format::Other, total_len);
                i.reason = Some(format!("{name}-compressed stream (not a pickle)"));
                i
            }
        }
    }
}

/// Where a gzip stream is: Python's `gzip` reads member after member
/// (skipping zero padding between them) and puts no bound on the header's
/// name and comment fields (flate2's parser stops at 64 KiB), so the
/// header is walked here and each member's body goes to a raw deflate
/// decoder.
enum GzPart {
    /// The fixed 10-byte header (or zero padding before one).
    Fixed(Vec<u8>),
    /// FEXTRA's 2-byte length, read so far.
    ExtraLen(Vec<u8>),
    /// Bytes of FEXTRA left to skip.
    Extra(usize),
    /// Zero-terminated FNAME (`true`) or FCOMMENT.
    Text(bool),
    /// Bytes of FHCRC left.
    Hcrc(usize),
    Body(Box<flate2::write::DeflateDecoder<Sink>>),
    /// Bytes of the CRC32 / ISIZE trailer left.
    Trailer(usize),
}

struct Gzip {
    part: GzPart,
    flags: u8,
    /// The output, while no body decoder holds it.
    sink: Option<Sink>,
    /// Members started.
    members: u64,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;

impl Gzip {
    fn new(sink: Sink) -> Self {
        Gzip {
            part: GzPart::Fixed(Vec::new()),
            flags: 0,
            sink: Some(sink),
            members: 0,
        }
    }

    fn full(&self) -> bool {
        match (&self.part, &self.sink) {
            (GzPart::Body(d), _) => d.get_ref().full(),
            (_, Some(s)) => s.full(),
            _ => false,
        }
    }

    fn into_sink(self) -> Sink {
        match self.part {
            GzPart::Body(mut d) => {
                let _ = d.try_finish();
                take_sink(d.get_mut())
            }
            _ => self.sink.unwrap_or(Sink(Vec::new())),
        }
    }

    /// The header part after `done`: the next optional field the flags
    /// ask for, or the body.
    fn after(&mut self, done: u8) -> Option<GzPart> {
        let f = self.flags;
        Some(if done < FEXTRA && f & FEXTRA != 0 {
            GzPart::ExtraLen(Vec::new())
        } else if done < FNAME && f & FNAME != 0 {
            GzPart::Text(true)
        } else if done < FCOMMENT && f & FCOMMENT != 0 {
            GzPart::Text(false)
        } else if done < 0x20 && f & FHCRC != 0 {
            GzPart::Hcrc(2)
        } else {
            GzPart::Body(Box::new(flate2::write::DeflateDecoder::new(
                self.sink.take()?,
            )))
        })
    }

    /// Feeds `data`; `None` once the stream is corrupt or the output full.
    fn feed(&mut self, mut data: &[u8]) -> Option<()> {
        while !data.is_empty() {
            let next = match &mut self.part {
                GzPart::Fixed(h) => {
                    if h.is_empty() && self.members > 0 {
                        // Zero padding between members.
                        let z = data.iter().take_while(|&&b| b == 0).count();
                        data = &data[z..];
                        if data.is_empty() {
                            return Some(());
                        }
                    }
                    let n = (10 - h.len()).min(data.len());
                    h.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    if h.len() < 10 {
                        return Some(());
                    }
                    if h[..3] != *b"\x1f\x8b\x08" {
                        return None;
                    }
                    self.flags = h[3];
                    self.members += 1;
                    self.after(0)?
                }
                GzPart::ExtraLen(b) => {
                    b.push(data[0]);
                    data = &data[1..];
                    if b.len() < 2 {
                        continue;
                    }
                    GzPart::Extra(usize::from(u16::from_le_bytes([b[0], b[1]])))
                }
                GzPart::Extra(left) | GzPart::Hcrc(left) | GzPart::Trailer(left) => {
                    let n = (*left).min(data.len());
                    data = &data[n..];
                    *left -= n;
                    if *left > 0 {
                        return Some(());
                    }
                    match self.part {
                        GzPart::Extra(_) => self.after(FEXTRA)?,
                        GzPart::Hcrc(_) => self.after(0x20)?,
                        _ => GzPart::Fixed(Vec::new()),
                    }
                }
                GzPart::Text(name) => {
                    let name = *name;
                    match memchr::memchr(0, data) {
                        None => return Some(()),
                        Some(i) => data = &data[i + 1..],
                    }
                    self.after(if name { FNAME } else { FCOMMENT })?
                }
                GzPart::Body(d) => {
                    let n = d.write(data).ok()?;
                    if n > 0 {
                        data = &data[n..];
                        if d.get_ref().full() {
                            return None;
                        }
                        continue;
                    }
                    // The member's deflate stream has ended.
                    d.try_finish().ok()?;
                    self.sink = Some(take_sink(d.get_mut()));
                    GzPart::Trailer(8)
                }
            };
            self.part = next;
        }
        Some(())
    }
}

fn take_sink(s: &mut Sink) -> Sink {
    Sink(std::mem::take(&mut s.0))
}

/// Up to [`OUTPUT_PREFIX`] bytes of an lzma-alone stream's output, and
/// whether they are all there is or the prefix's full length.
fn lzma_alone_prefix(input: &[u8]) -> (Vec<u8>, bool) {
    use lzma_rs::decompress::{Options, UnpackedSize};
    let declared = input
        .get(5..13)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_le_bytes);
    let run = |unpacked_size| {
        let mut sink = Sink(Vec::new());
        let opts = Options {
            unpacked_size,
            memlimit: Some(2 * OUTPUT_PREFIX),
            allow_incomplete: false,
        };
        lzma_rs::lzma_decompress_with_options(&mut &input[..], &mut sink, &opts)
            .ok()
            .map(|()| sink.0)
    };
    let cap = OUTPUT_PREFIX as u64;
    match declared {
        Some(n) if n != u64::MAX && n <= cap => match run(UnpackedSize::ReadFromHeader) {
            Some(out) => (out, true),
            None => (Vec::new(), false),
        },
        _ => {
            if let Some(out) = run(UnpackedSize::ReadHeaderButUseProvided(Some(cap))) {
                return (out, true);
            }
            // Ends (with its end marker) before the prefix is full.
            match run(UnpackedSize::ReadHeaderButUseProvided(None)) {
                Some(out) => (out, true),
                None => (Vec::new(), false),
            }
        }
    }
}

/// Up to [`OUTPUT_PREFIX`] bytes of an xz stream's first block (LZMA2
/// alone, the filter chain Python's `lzma` writes), and whether they are
/// all the stream holds or the prefix's full length. LZMA2 chunks are
/// walked here; each one that resets the dictionary (the first always
/// does) is decoded on its own, uncompressed chunks are copied. Anything
/// else (other filters, chunks that continue the previous one's state, a
/// second block) ends the walk short.
fn xz_prefix(input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    let reached = xz_walk(input, &mut out).unwrap_or(false);
    out.truncate(OUTPUT_PREFIX);
    let full = out.len() >= OUTPUT_PREFIX;
    (out, reached || full)
}

fn xz_walk(input: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    use lzma_rs::decompress::{Options, UnpackedSize};
    if input.get(..6)? != b"\xfd7zXZ\x00" || input.get(6)? != &0 {
        return None;
    }
    let mut pos = 12;
    let hsize = (usize::from(*input.get(pos)?) + 1) * 4;
    if hsize == 4 {
        // The index: the stream holds no block.
        return Some(input.len() <= pos + 64);
    }
    let header = input.get(pos..pos + hsize)?;
    let flags = header[1];
    if flags & 0x03 != 0 || flags & 0x3c != 0 {
        return None; // more than one filter, or reserved bits
    }
    let mut h = 2;
    let varint = |h: &mut usize| -> Option<u64> {
        let mut v = 0u64;
        for i in 0..9 {
            let b = *header.get(*h)?;
            *h += 1;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    };
    if flags & 0x40 != 0 {
        varint(&mut h)?;
    }
    if flags & 0x80 != 0 {
        varint(&mut h)?;
    }
    if varint(&mut h)? != 0x21 || varint(&mut h)? != 1 {
        return None; // not LZMA2
    }
    pos += hsize;
    let mut dict_reset_seen = false;
    while out.len() < OUTPUT_PREFIX {
        let c = *input.get(pos)?;
        match c {
            0x00 => return Some(input.len() <= pos + 1 + 3 + 64 + 12 + 64),
            0x01 | 0x02 => {
                let n = usize::from(u16::from_be_bytes([
                    *input.get(pos + 1)?,
                    *input.get(pos + 2)?,
                ])) + 1;
                out.extend_from_slice(input.get(pos + 3..pos + 3 + n)?);
                dict_reset_seen |= c == 0x01;
                pos += 3 + n;
            }
            0x80..=0xff => {
                let unpacked = ((usize::from(c & 0x1f) << 16)
                    | usize::from(u16::from_be_bytes([
                        *input.get(pos + 1)?,
                        *input.get(pos + 2)?,
                    ])))
                    + 1;
                let packed = usize::from(u16::from_be_bytes([
                    *input.get(pos + 3)?,
                    *input.get(pos + 4)?,
                ])) + 1;
                // Only a chunk with a dictionary reset and new properties
                // (or new properties at the very start) decodes on its own.
                if c < 0xc0 || (c < 0xe0 && (dict_reset_seen || !out.is_empty())) {
                    return None;
                }
                let props = *input.get(pos + 5)?;
                let data = input.get(pos + 6..pos + 6 + packed)?;
                let mut alone = vec![props];
                alone.extend_from_slice(&(1u32 << 22).to_le_bytes());
                alone.extend_from_slice(data);
                let want = unpacked.min(OUTPUT_PREFIX - out.len().min(OUTPUT_PREFIX));
                let mut sink = Sink(Vec::new());
                let opts = Options {
                    unpacked_size: UnpackedSize::UseProvided(Some(want as u64)),
                    memlimit: Some(2 * OUTPUT_PREFIX),
                    allow_incomplete: false,
                };
                lzma_rs::lzma_decompress_with_options(&mut &alone[..], &mut sink, &opts).ok()?;
                out.extend_from_slice(&sink.0);
                dict_reset_seen = true;
                pos += 6 + packed;
            }
            _ => return None,
        }
    }
    Some(true)
}

/// The scan of `out` if it starts like a pickle: with a `PROTO` header, or
/// without one when it calls an import (or hits a limit) within the prefix
/// or is, whole, one clean pickle.
fn pickle_start(out: &[u8], limits: &PickleLimits) -> Option<PickleReport> {
    let first = *out.first()?;
    if !pickle::is_opcode(first) {
        return None;
    }
    let proto = first == 0x80 && out.get(1).is_some_and(|&p| p <= 5);
    let mut sc = PickleScanner::new(limits.clone(), "", None);
    let used = sc.feed(out);
    let whole = sc.is_complete() && sc.stack_is_clean() && used == out.len();
    let holds = (sc.has_plausible_imports() && sc.has_called_imports()) || sc.hit_limit();
    (proto || holds || whole).then(|| sc.finish())
}
