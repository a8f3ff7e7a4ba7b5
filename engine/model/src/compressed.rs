//! Whole-file compressed streams: `joblib.dump(..., compress=...)` and
//! `pickle` written through `gzip.open` are pickles a loader decompresses
//! and runs (joblib, `pandas.read_pickle` and friends detect the
//! compression by its magic bytes).
//!
//! The sniffer does not analyse a compressed pickle: it keeps the first
//! [`INPUT_PREFIX`] bytes of the stream (nothing more, however long the
//! file), and at the end decompresses at most [`OUTPUT_PREFIX`] bytes of
//! them. If those start like a pickle (a `PROTO` header, or a header-less
//! stream that calls an import or is one clean pickle), the file is a
//! pickle that was not analysed, which is unsafe. gzip, zlib and zstd are
//! decompressed; bzip2, xz and lz4 frames are only recognised (no
//! decompressor for them is linked) and reported as such.

use std::io::Read;

use crate::info::{Format, ModelInfo, PickleReport};
use crate::pickle::{self, PickleLimits, PickleScanner};

/// Compressed bytes kept from the start of the stream.
pub(crate) const INPUT_PREFIX: usize = 64 << 10;
/// Decompressed bytes looked at.
pub(crate) const OUTPUT_PREFIX: usize = 64 << 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Codec {
    Gzip,
    Zlib,
    Zstd,
    Bzip2,
    Xz,
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
    } else {
        None
    }
}

/// A compressed stream being fed: its first bytes.
pub(crate) struct Compressed {
    codec: Codec,
    prefix: Vec<u8>,
}

impl Compressed {
    pub fn new(codec: Codec) -> Self {
        Compressed {
            codec,
            prefix: Vec::new(),
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let room = INPUT_PREFIX.saturating_sub(self.prefix.len());
        self.prefix.extend_from_slice(&data[..room.min(data.len())]);
    }

    pub fn finish(self, total_len: u64, limits: &PickleLimits) -> ModelInfo {
        let name = self.codec.name();
        let Some(out) = decompress_prefix(self.codec, &self.prefix) else {
            let mut i = ModelInfo::empty(Format::Other, total_len);
            i.reason = Some(format!(
                "{name}-compressed stream; its content is not looked into"
            ));
            return i;
        };
        match pickle_start(&out, limits) {
            Some(mut report) => {
                let mut i = ModelInfo::empty(Format::Pickle, total_len);
                i.variant = Some(name.to_string());
                report.location = format!("{name} stream");
                report.complete = false;
                report.reason = Some(format!("compressed pickle ({name}), not analysed"));
                i.pickles.push(report);
                i
            }
            None => {
                let mut i = ModelInfo::empty(Format::Other, total_len);
                i.reason = Some(format!("{name}-compressed stream (not a pickle)"));
                i
            }
        }
    }
}

/// Up to [`OUTPUT_PREFIX`] bytes of what `input` (a prefix of the stream)
/// decompresses to; `None` for codecs not decompressed here. An error
/// (the prefix ends mid-stream, or it is corrupt) keeps what came before.
fn decompress_prefix(codec: Codec, input: &[u8]) -> Option<Vec<u8>> {
    fn read_some(mut r: impl Read) -> Vec<u8> {
        let mut out = vec![0u8; OUTPUT_PREFIX];
        let mut n = 0;
        while n < out.len() {
            match r.read(&mut out[n..]) {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
        }
        out.truncate(n);
        out
    }
    Some(match codec {
        Codec::Gzip => read_some(flate2::bufread::GzDecoder::new(input)),
        Codec::Zlib => read_some(flate2::bufread::ZlibDecoder::new(input)),
        Codec::Zstd => read_some(zstd::stream::read::Decoder::with_buffer(input).ok()?),
        Codec::Bzip2 | Codec::Xz | Codec::Lz4 => return None,
    })
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
