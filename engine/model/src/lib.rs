//! Tessera's model-format knowledge: streaming detection and description of
//! ML model files, and a pickle import scanner.
//!
//! The engine sees every byte of an ingested file once, in order, possibly
//! from a pipe. A [`Sniffer`] is fed those batches and keeps only what it
//! needs: the magic bytes, the header (up to [`Limits::max_header_bytes`]),
//! pickle opcode streams (walked, never buffered), npy headers. Bulk tensor
//! data is skipped by count, so `feed` costs next to nothing per byte there.
//! [`Sniffer::finish`] returns a [`ModelInfo`]: the format, tensors with
//! absolute offsets, metadata, zip members, every pickle's imports and a
//! [`Verdict`]. Nothing here fails: malformed, truncated, hostile or
//! unknown input yields format `other` (or the detected format with a
//! `reason`), never an error or a panic.
//!
//! ```
//! use tessera_model::{Format, Limits, Sniffer};
//! let mut s = Sniffer::new(Limits::default());
//! s.feed(b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00K\x01.");
//! let info = s.finish(16);
//! assert_eq!(info.format, Format::Pickle);
//! assert!(info.pickle_imports.is_empty());
//! ```
#![forbid(unsafe_code)]

pub mod allowlist;
mod compressed;
mod gguf;
mod info;
mod npy;
mod onnx;
pub mod pickle;
mod policy;
mod safetensors_fmt;
mod tar;
mod tflite;
mod zip;

pub use info::*;
pub use pickle::{scan_pickle, PickleLimits, PickleScanner};
pub use policy::{PicklePolicy, PolicyViolation};

use std::collections::BTreeSet;

use crate::zip::{NpyReader, ZipCaps, ZipStream};

/// Caps on what the sniffer keeps or does for one file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest header buffered: the safetensors JSON, the GGUF header, a zip
    /// central directory.
    pub max_header_bytes: u64,
    /// Largest npy header (numpy itself refuses more than 10 000 bytes by
    /// default).
    pub max_npy_header: u64,
    /// Prefix and suffix kept for TFLite (its root table, vtable and small
    /// vectors lie near one end or the other).
    pub max_prefix_bytes: usize,
    /// Tensors listed.
    pub max_tensors: usize,
    /// Metadata keys listed.
    pub max_metadata: usize,
    /// Longest metadata string kept (longer ones are clipped).
    pub max_meta_string: usize,
    /// Zip members listed.
    pub max_zip_members: usize,
    /// Longest zip member name shown (longer ones are clipped).
    pub max_zip_name: usize,
    /// Bytes inflated per file from deflated zip members.
    pub max_inflate_bytes: u64,
    /// Consecutive pickles scanned in a bare pickle file.
    pub max_pickles: usize,
    /// Caps for each pickle stream.
    pub pickle: PickleLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_header_bytes: 64 << 20,
            max_npy_header: 1 << 20,
            max_prefix_bytes: 1 << 20,
            max_tensors: 1 << 20,
            max_metadata: 1 << 16,
            max_meta_string: 16 << 10,
            max_zip_members: 100_000,
            max_zip_name: 4096,
            max_inflate_bytes: 256 << 20,
            max_pickles: 64,
            pickle: PickleLimits::default(),
        }
    }
}

/// A tensor's bytes as [`Sniffer::tensor_regions`] reports them: absolute
/// offset, length and dtype name.
pub type TensorRegion<'a> = (u64, u64, &'a str);

/// Bytes looked at before deciding on a format.
const DETECT_LEN: usize = 16;

/// The first pickle of a legacy (pre-zip) `torch.save` file: protocol 2,
/// `LONG1` of the 10-byte magic number 0x1950a86a20f9469cfc6c, `STOP`.
const TORCH_LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// Clips `s` to at most `max` bytes on a char boundary, marking the cut.
pub(crate) fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Pickles a legacy (pre-zip) `torch.save` file holds before its raw
/// storage data: magic number, protocol version, system info, the object,
/// the storage keys. `torch.load` unpickles them one after the other
/// (whatever protocol each was written with), going on as long as the
/// first one's *value* is the magic number.
const LEGACY_PICKLES: usize = 5;

/// A sequence of pickles in one file: a bare pickle (possibly followed by
/// more), or the five pickles of a legacy `torch.save` file.
///
/// What follows a pickle's `STOP` is what a loader reading pickles in a
/// row would read next: the first [`LEGACY_PICKLES`] are followed whatever
/// opcode starts them (the legacy magic number may be pickled with any
/// protocol, and its value cannot be told without running the pickle), later
/// ones only when they start with `PROTO`. A follower with `PROTO` (or any
/// follower in a file with the legacy magic) is a pickle like the first;
/// one without is judged like a header-less guess: it counts if it reaches
/// its `STOP`, calls or modifies an import, names a plausible import or
/// hits a limit, and otherwise is trailing bytes an unpickler fails on
/// before doing anything.
struct PickleSeq {
    done: Vec<PickleReport>,
    cur: Option<PickleScanner>,
    /// Bytes of a possible next pickle's start, after a STOP.
    peek: Vec<u8>,
    legacy: bool,
    /// A guess (no PROTO first): not yet known to be a pickle.
    speculative: bool,
    /// `cur` follows a pickle without starting with PROTO (see above).
    follower: bool,
    /// Where the pickles ended (trailing bytes start here).
    end: Option<u64>,
    /// No more pickles will follow.
    stopped: bool,
    /// The guess failed: not a pickle.
    rejected: bool,
}

enum State {
    Detect(Vec<u8>),
    Safetensors {
        header_len: u64,
        buf: Vec<u8>,
    },
    SafetensorsParsed(Box<safetensors_fmt::Parsed>),
    Gguf {
        buf: Vec<u8>,
        next_try: usize,
    },
    GgufParsed(Box<gguf::Parsed>),
    Pickles(Box<PickleSeq>),
    /// A gzip/zlib/zstd/... stream: its first bytes.
    Compressed(Box<compressed::Compressed>),
    Npy(Box<NpyReader>),
    Zip(Box<ZipStream>),
    Onnx(Box<onnx::OnnxStream>),
    /// TFLite: the first bytes and the last bytes seen.
    Tflite {
        prefix: Vec<u8>,
        tail: Vec<u8>,
    },
    /// Decided: `format` with `reason`; nothing more to read.
    Decided(Format, Option<String>),
}

/// Streaming model-format sniffer. See the crate docs.
pub struct Sniffer {
    limits: Limits,
    pos: u64,
    state: State,
    /// Walks the file as a tar archive alongside `state` (`torch.load`
    /// tries any file as a legacy tar checkpoint first, and reads it as a
    /// pickle when that fails); dropped as soon as the first block is not
    /// a tar header.
    tar: Option<Box<tar::TarWalker>>,
    /// Walks the file as a pickle from its first byte alongside a format
    /// picked by its magic bytes, when that byte is an opcode: `pickle.load`
    /// (and numpy, joblib, `torch.load`) look at no magic number, so a file
    /// can be a TFLite, GGUF or safetensors look-alike and a pickle at once.
    /// Judged at [`Sniffer::finish`]; dropped once the guess is rejected.
    shadow: Option<Box<PickleSeq>>,
}

impl Sniffer {
    pub fn new(limits: Limits) -> Self {
        Sniffer {
            limits,
            pos: 0,
            state: State::Detect(Vec::with_capacity(DETECT_LEN)),
            tar: Some(Box::default()),
            shadow: None,
        }
    }

    /// Bytes fed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Feeds the next batch of the file's bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        if let Some(t) = &mut self.tar {
            t.feed(bytes);
            if t.not_tar() {
                self.tar = None;
            }
        }
        self.feed_shadow(bytes, self.pos);
        // Hot path: nothing left to learn.
        if let State::Decided(..) | State::SafetensorsParsed(_) | State::GgufParsed(_) = self.state
        {
            self.pos += bytes.len() as u64;
            return;
        }
        let mut data = bytes;
        if let State::Detect(head) = &mut self.state {
            let take = (DETECT_LEN - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
            data = &data[take..];
            self.pos += take as u64;
            if head.len() < DETECT_LEN {
                return;
            }
            let head = std::mem::take(head);
            self.start(&head);
            // The shadow starts with the head (in `start`); the rest of
            // this batch follows it.
            self.feed_shadow(data, self.pos);
        }
        self.pos += data.len() as u64;
        self.advance(data);
    }

    /// Feeds the shadow pickle walk `bytes`, which start at offset `at`.
    fn feed_shadow(&mut self, bytes: &[u8], at: u64) {
        if let Some(seq) = &mut self.shadow {
            let (limits, max) = (self.limits.pickle.clone(), self.limits.max_pickles);
            Self::feed_pickles(seq, bytes, at, &limits, max);
            if seq.rejected {
                self.shadow = None;
            }
        }
    }

    /// The tensors' byte regions as soon as a safetensors or GGUF header has
    /// been parsed: (absolute offset, length, dtype as the format names it:
    /// `"BF16"`, `"Q4_K"`, …), in header order; `None` before then and for
    /// other formats. For decisions per byte range while the rest of the
    /// file streams (the engine picks codec hints from it): nothing here is
    /// checked against the file's length yet, and a GGUF tensor of an
    /// unknown type has length 0.
    pub fn tensor_regions(&self) -> Option<(Format, Vec<TensorRegion<'_>>)> {
        fn region(t: &TensorInfo) -> Option<TensorRegion<'_>> {
            Some((t.offset?, t.length, t.dtype.as_str()))
        }
        match &self.state {
            State::SafetensorsParsed(p) => Some((
                Format::Safetensors,
                p.tensors.iter().filter_map(region).collect(),
            )),
            State::GgufParsed(p) => Some((
                Format::Gguf,
                p.tensors.iter().filter_map(|(t, _)| region(t)).collect(),
            )),
            _ => None,
        }
    }

    /// Picks the format from the first bytes and replays them into it.
    fn start(&mut self, head: &[u8]) {
        self.state = self.initial_state(head);
        if !matches!(self.state, State::Pickles(_))
            && head.first().is_some_and(|&b| pickle::is_opcode(b))
        {
            if let State::Pickles(seq) = self.pickles(false, true) {
                self.shadow = Some(seq);
                self.feed_shadow(head, 0);
            }
        }
        // `pos` already counts `head`; `advance` works on content only.
        self.advance(head);
    }

    fn initial_state(&self, head: &[u8]) -> State {
        let l = &self.limits;
        if head.starts_with(npy::MAGIC) {
            return State::Npy(Box::new(NpyReader::new(
                "array".into(),
                "object array".into(),
                Some(0),
                l.max_npy_header,
                l.pickle.clone(),
            )));
        }
        // numpy also opens a file starting with an end of central directory
        // record (an empty archive) as an npz, finding the last one.
        if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            return State::Zip(Box::new(ZipStream::new(ZipCaps {
                max_members: l.max_zip_members,
                max_name: l.max_zip_name,
                max_central: l.max_header_bytes,
                max_inflate: l.max_inflate_bytes,
                max_npy_header: l.max_npy_header,
                pickle: l.pickle.clone(),
            })));
        }
        if head.starts_with(gguf::MAGIC) {
            return State::Gguf {
                buf: Vec::new(),
                next_try: 4096,
            };
        }
        if head.get(4..8) == Some(&tflite::IDENT[..]) {
            return State::Tflite {
                prefix: Vec::new(),
                tail: Vec::new(),
            };
        }
        if safetensors_fmt::looks_like(head) {
            let n = u64::from_le_bytes(head[..8].try_into().unwrap_or([0xff; 8]));
            if n > l.max_header_bytes {
                return State::Decided(
                    Format::Other,
                    Some(format!(
                        "safetensors header length {n} exceeds the limit of {} bytes",
                        l.max_header_bytes
                    )),
                );
            }
            return State::Safetensors {
                header_len: n,
                buf: Vec::new(),
            };
        }
        // PROTO 0-5 (CPython accepts 0 and 1 too).
        if head.first() == Some(&0x80) && head.get(1).is_some_and(|p| *p <= 5) {
            return self.pickles(head.starts_with(TORCH_LEGACY_MAGIC), false);
        }
        if let Some(codec) = compressed::detect(head) {
            return State::Compressed(Box::new(compressed::Compressed::new(codec)));
        }
        if head.first() == Some(&0x08) {
            return State::Onnx(Box::new(onnx::OnnxStream::new(
                l.max_tensors,
                l.max_meta_string,
            )));
        }
        // CPython runs any opcode stream, with or without PROTO: anything
        // starting with an opcode is walked as a possible pickle, and kept
        // as one if it reaches a clean STOP, imports something before
        // failing, or hits a limit.
        if head.first().is_some_and(|&b| pickle::is_opcode(b)) {
            return self.pickles(false, true);
        }
        State::Decided(Format::Other, None)
    }

    fn pickles(&self, legacy: bool, speculative: bool) -> State {
        State::Pickles(Box::new(PickleSeq {
            done: Vec::new(),
            cur: Some(PickleScanner::new(self.limits.pickle.clone(), "", Some(0))),
            peek: Vec::new(),
            legacy,
            speculative,
            follower: false,
            end: None,
            stopped: false,
            rejected: false,
        }))
    }

    /// Routes content bytes; `self.pos` already counts them, so the offset
    /// of `data[0]` is `self.pos - data.len()`.
    fn advance(&mut self, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        let at = self.pos - data.len() as u64;
        let max_header = self.limits.max_header_bytes;
        let max_meta_string = self.limits.max_meta_string;
        match &mut self.state {
            State::Detect(_)
            | State::Decided(..)
            | State::SafetensorsParsed(_)
            | State::GgufParsed(_) => {}
            State::Safetensors { header_len, buf } => {
                let need = 8 + *header_len as usize;
                let take = need.saturating_sub(buf.len()).min(data.len());
                buf.extend_from_slice(&data[..take]);
                if buf.len() == need {
                    self.state = match safetensors_fmt::parse_header(&buf[8..], max_meta_string) {
                        Ok(p) => State::SafetensorsParsed(Box::new(p)),
                        Err(e) => State::Decided(Format::Other, Some(e)),
                    };
                }
            }
            State::Gguf { buf, next_try } => {
                let room = (max_header as usize).saturating_sub(buf.len());
                buf.extend_from_slice(&data[..room.min(data.len())]);
                if buf.len() >= *next_try || buf.len() as u64 >= max_header {
                    *next_try = buf.len().saturating_mul(2);
                    self.try_gguf(false);
                }
            }
            State::Pickles(seq) => {
                let limits = self.limits.pickle.clone();
                let max_pickles = self.limits.max_pickles;
                Self::feed_pickles(seq, data, at, &limits, max_pickles);
                if seq.rejected {
                    self.state = State::Decided(Format::Other, None);
                }
            }
            State::Npy(r) => {
                r.feed(data);
            }
            State::Compressed(c) => c.feed(data),
            State::Zip(z) => z.feed(data),
            State::Onnx(o) => {
                o.feed(data);
                if o.rejected {
                    self.state = State::Decided(Format::Other, None);
                }
            }
            State::Tflite { prefix, tail } => {
                let cap = self.limits.max_prefix_bytes;
                let room = cap.saturating_sub(prefix.len());
                prefix.extend_from_slice(&data[..room.min(data.len())]);
                // Keep the last `cap` bytes; trim lazily so each byte is
                // copied a bounded number of times.
                if data.len() >= cap {
                    tail.clear();
                    tail.extend_from_slice(&data[data.len() - cap..]);
                } else {
                    tail.extend_from_slice(data);
                    if tail.len() > 2 * cap {
                        tail.drain(..tail.len() - cap);
                    }
                }
            }
        }
    }

    /// Whether a guessed scan (no PROTO header) is a pickle for sure: a
    /// loader would call one of its imports before the stream ends or
    /// fails (what a loader would run before failing is what matters), or
    /// the walk hit a limit. An import that is never called only imports a
    /// module already on the loading machine; random bytes and text that
    /// merely start with `c` look like that, and are not refused as
    /// pickles. The scanner stops early only where CPython fails too, or
    /// at a limit (which holds): so what it saw before failing is all a
    /// loader runs. (A stream with a PROTO header is a pickle whatever it
    /// holds; a complete, clean guess without calls is a pickle only if
    /// the file ends with it or with more such pickles.)
    fn speculation_holds(cur: Option<&PickleScanner>) -> bool {
        cur.is_some_and(|c| (c.has_plausible_imports() && c.has_called_imports()) || c.hit_limit())
    }

    /// Whether a follower without PROTO is a pickle (see [`PickleSeq`]).
    fn follower_counts(c: &PickleScanner) -> bool {
        c.is_complete() || c.has_plausible_imports() || Self::speculation_holds(Some(c))
    }

    /// A guessed scan that reached a clean STOP without calls is a pickle
    /// only if the file ends with it or continues with more pickles (text
    /// such as "Git v2.3." is also a valid opcode stream up to its first
    /// full stop); anything else after it rejects the guess.
    fn speculation_tentative(c: &PickleScanner) -> bool {
        c.is_complete() && c.stack_is_clean()
    }

    fn feed_pickles(
        seq: &mut PickleSeq,
        mut data: &[u8],
        mut at: u64,
        limits: &PickleLimits,
        max_pickles: usize,
    ) {
        while !data.is_empty() && !seq.stopped {
            if let Some(cur) = &mut seq.cur {
                let used = cur.feed(data);
                data = &data[used..];
                at += used as u64;
                if !cur.is_finished() {
                    return;
                }
                if seq.speculative {
                    // A guess holds at its first call or limit, and dies at
                    // a failure before either.
                    if Self::speculation_holds(Some(cur)) {
                        seq.speculative = false;
                    } else if !Self::speculation_tentative(cur) {
                        seq.rejected = true;
                        return;
                    }
                } else if seq.follower && !Self::follower_counts(cur) {
                    seq.cur = None;
                    seq.stopped = true;
                    return;
                }
                let Some(done) = seq.cur.take() else { return };
                let ok = done.is_complete();
                seq.done.push(done.finish());
                seq.end = Some(at);
                if !ok
                    || seq.done.len() >= max_pickles
                    || (seq.legacy && seq.done.len() >= LEGACY_PICKLES)
                {
                    // The legacy format's raw storages follow its 5th pickle.
                    seq.stopped = true;
                    return;
                }
                continue;
            }
            // After a STOP: does another pickle start here?
            let take = (2 - seq.peek.len()).min(data.len());
            seq.peek.extend_from_slice(&data[..take]);
            data = &data[take..];
            at += take as u64;
            if seq.peek.len() < 2 {
                return;
            }
            Self::next_pickle(seq, at, limits);
        }
    }

    /// Starts the next pickle of `seq` on the peeked bytes (which end at
    /// `at`), or ends the sequence there (a guess then dies: text follows
    /// its STOP).
    fn next_pickle(seq: &mut PickleSeq, at: u64, limits: &PickleLimits) {
        let peek = std::mem::take(&mut seq.peek);
        let proto = peek[0] == 0x80 && peek.get(1).is_none_or(|&p| p <= 5);
        let follows = proto || (seq.done.len() < LEGACY_PICKLES && pickle::is_opcode(peek[0]));
        if !follows {
            seq.stopped = true;
            seq.rejected |= seq.speculative;
            return;
        }
        let mut sc = PickleScanner::new(
            limits.clone(),
            format!("pickle {}", seq.done.len()),
            Some(at - peek.len() as u64),
        );
        sc.feed(&peek);
        seq.follower = !proto && !seq.legacy;
        seq.cur = Some(sc);
    }

    fn gguf_caps(&self) -> gguf::Caps {
        gguf::Caps {
            max_header: self.limits.max_header_bytes,
            max_metadata: self.limits.max_metadata,
            max_meta_string: self.limits.max_meta_string,
            max_tensors: self.limits.max_tensors,
        }
    }

    /// Tries to parse the buffered GGUF prefix; at end of stream a short
    /// prefix is final.
    fn try_gguf(&mut self, at_end: bool) {
        let State::Gguf { buf, .. } = &self.state else {
            return;
        };
        let caps = self.gguf_caps();
        let full = buf.len() as u64 >= caps.max_header;
        self.state = match gguf::parse(buf, &caps) {
            gguf::Parse::NeedMore if !at_end && !full => return,
            gguf::Parse::NeedMore if full => State::Decided(
                Format::Other,
                Some(format!(
                    "GGUF header larger than the limit of {} bytes",
                    caps.max_header
                )),
            ),
            gguf::Parse::NeedMore => State::Decided(
                Format::Other,
                Some(format!("truncated GGUF header ({} bytes)", buf.len())),
            ),
            gguf::Parse::Invalid(e) => State::Decided(Format::Other, Some(e)),
            gguf::Parse::Unsupported(e) => State::Decided(Format::Gguf, Some(e)),
            gguf::Parse::Done(p) => State::GgufParsed(p),
        };
    }

    /// Ends the stream. `total_len` is the file's length (normally the
    /// number of bytes fed; if it differs, the difference is reported and
    /// offsets are checked against `total_len`).
    pub fn finish(mut self, total_len: u64) -> ModelInfo {
        if let State::Detect(head) = &mut self.state {
            let head = std::mem::take(head);
            // `start` replays the head; pos already counts it.
            self.start(&head);
        }
        let mut warnings = Vec::new();
        if total_len != self.pos {
            warnings.push(format!(
                "{} bytes were fed but the file length given is {total_len}",
                self.pos
            ));
        }
        if matches!(self.state, State::Gguf { .. }) {
            self.try_gguf(true);
        }
        let limits = self.limits.clone();
        let mut extra_unsafe = None;
        let tar = self.tar.take();
        let shadow = self.shadow.take();
        let mut info = match self.state {
            State::Detect(_) => ModelInfo::empty(Format::Other, total_len),
            State::Decided(format, reason) => {
                let mut i = ModelInfo::empty(format, total_len);
                i.reason = reason;
                i
            }
            State::Safetensors { header_len, buf } => {
                let mut i = ModelInfo::empty(Format::Other, total_len);
                i.reason = Some(format!(
                    "truncated safetensors header: {} of {} bytes",
                    buf.len().saturating_sub(8),
                    header_len
                ));
                i
            }
            State::SafetensorsParsed(p) => finish_safetensors(*p, total_len),
            State::Gguf { .. } => ModelInfo::empty(Format::Other, total_len),
            State::GgufParsed(p) => finish_gguf(*p, total_len, &limits),
            State::Pickles(seq) => finish_pickles(*seq, total_len, &limits.pickle),
            State::Compressed(c) => c.finish(total_len, &limits.pickle),
            State::Npy(r) => {
                let (i, bad) = finish_npy(*r, total_len);
                extra_unsafe = bad;
                i
            }
            State::Zip(z) => {
                let (i, bad) = finish_zip(*z, total_len);
                extra_unsafe = bad;
                i
            }
            State::Onnx(o) => finish_onnx(*o, total_len),
            State::Tflite { prefix, tail } => {
                // `feed` trims the tail lazily, so it holds anywhere from
                // `cap` to `2 * cap` of the last bytes depending on how the
                // stream was split. Parse exactly the last `cap` bytes so
                // the report does not depend on the feeding (a field lying
                // in the extra bytes was read only with some splits).
                let cap = limits.max_prefix_bytes;
                let tail = &tail[tail.len().saturating_sub(cap)..];
                let tail_start = self.pos.saturating_sub(tail.len() as u64) as usize;
                let buf = tflite::Buf {
                    prefix: &prefix,
                    tail,
                    tail_start,
                };
                finish_tflite(&buf, total_len, limits.max_meta_string)
            }
        };
        // A tar archive: a legacy torch checkpoint replaces the report.
        if let Some(t) = tar {
            t.apply(&mut info, &mut extra_unsafe);
        }
        if let Some(seq) = shadow {
            judge_shadow(&mut info, *seq, total_len, &limits.pickle);
        }
        // Whatever a header claims, only tensors inside the file are listed
        // (e.g. a truncated zip's last member).
        let before = info.tensors.len();
        info.tensors.retain(|t| {
            t.offset
                .is_none_or(|o| o.saturating_add(t.length) <= total_len)
        });
        if info.tensors.len() < before {
            info.warnings.push(format!(
                "{} tensors extend past the end of the file and are not listed",
                before - info.tensors.len()
            ));
        }
        // A name several tensors share: loaders disagree on which counts
        // (first, last, or refuse), so none is read by that name.
        let mut names: Vec<&str> = info.tensors.iter().map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let shared = names
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if shared > 0 {
            info.warnings.push(format!(
                "{shared} tensor names are used more than once; those tensors are listed but not readable by name"
            ));
        }
        warnings.append(&mut info.warnings);
        info.warnings = warnings;
        if let Some(r) = &extra_unsafe {
            // The reason the verdict is unsafe comes first.
            if let Some(prev) = info.reason.replace(r.clone()) {
                info.warnings.push(prev);
            }
        }
        info.settle_verdict(extra_unsafe.is_some());
        info
    }
}

fn finish_safetensors(p: safetensors_fmt::Parsed, total_len: u64) -> ModelInfo {
    let mut i = ModelInfo::empty(Format::Safetensors, total_len);
    match safetensors_fmt::check_against_len(&p.header, &p.tensors, total_len) {
        Err(e) => {
            i.format = Format::Other;
            i.reason = Some(e);
            return i;
        }
        Ok(note) => i.reason = note,
    }
    i.safetensors = Some(p.header);
    i.tensors = p.tensors;
    i.metadata = p.metadata.into_iter().collect();
    i
}

fn finish_gguf(p: gguf::Parsed, total_len: u64, limits: &Limits) -> ModelInfo {
    let mut i = ModelInfo::empty(Format::Gguf, total_len);
    if p.header.data_offset > total_len && p.header.tensor_count > 0 {
        i.format = Format::Other;
        i.reason = Some(format!(
            "GGUF data section at {} lies past the end of the file ({total_len} bytes)",
            p.header.data_offset
        ));
        return i;
    }
    // Tensors of unknown ggml type get the gap to the next tensor.
    let mut starts: Vec<u64> = p.tensors.iter().filter_map(|(t, _)| t.offset).collect();
    starts.sort_unstable();
    let mut unknown = 0;
    let mut tensors = Vec::with_capacity(p.tensors.len());
    for (mut t, known) in p.tensors {
        let off = t.offset.unwrap_or(0);
        if !known {
            unknown += 1;
            let next = starts
                .iter()
                .copied()
                .find(|&s| s > off)
                .unwrap_or(total_len.max(off));
            t.length = next - off;
        }
        if off.saturating_add(t.length) > total_len {
            i.format = Format::Other;
            i.reason = Some(format!(
                "GGUF tensor {:?} ends at {} past the end of the file ({total_len} bytes)",
                t.name,
                off.saturating_add(t.length)
            ));
            i.tensors.clear();
            return i;
        }
        tensors.push(t);
    }
    if unknown > 0 {
        i.warnings.push(format!(
            "{unknown} tensors of unknown ggml type; their length is the gap to the next tensor"
        ));
    }
    if p.metadata_dropped > 0 {
        i.warnings.push(format!(
            "{} metadata keys beyond the limit of {} not listed",
            p.metadata_dropped, limits.max_metadata
        ));
    }
    i.gguf = Some(p.header);
    i.metadata = p.metadata.into_iter().collect();
    i.tensors = tensors;
    i
}

/// The file read as a pickle from its first byte, beside the format its
/// magic bytes suggested (see `Sniffer::shadow`). When that format did not
/// hold (`other`), the file is judged as the pickle guess would judge any
/// file starting with an opcode. When it held, a polyglot counts only with
/// evidence a loader would act on — a plausible import called — so that
/// a header whose first bytes happen to walk as opcodes (a safetensors
/// length byte `c`, say) is no pickle; its pickles are then judged with the
/// rest.
fn judge_shadow(info: &mut ModelInfo, seq: PickleSeq, total_len: u64, limits: &PickleLimits) {
    let mut guess = finish_pickles(seq, total_len, limits);
    if guess.format != Format::Pickle {
        return;
    }
    if info.format == Format::Other {
        if let Some(why) = info.reason.take() {
            guess
                .warnings
                .push(format!("not the format its first bytes suggest: {why}"));
        }
        guess.warnings.append(&mut info.warnings);
        *info = guess;
        return;
    }
    let acts = guess.pickles.iter().any(|p| {
        p.imports
            .iter()
            .any(|i| !i.calls.is_empty() && pickle::plausible_import(&i.module, &i.name))
    });
    if acts {
        info.warnings.push(format!(
            "the file also reads as a pickle from its first byte (a {} look-alike that pickle.load runs): its imports are judged with the rest",
            info.format
        ));
        info.pickles.append(&mut guess.pickles);
    }
}

fn finish_pickles(seq: PickleSeq, total_len: u64, limits: &PickleLimits) -> ModelInfo {
    let mut seq = seq;
    // A pickle start cut short by the end of the file (one byte peeked).
    if !seq.peek.is_empty() && !seq.stopped && seq.cur.is_none() {
        let at = seq.end.unwrap_or(0) + seq.peek.len() as u64;
        Sniffer::next_pickle(&mut seq, at, limits);
    }
    // A guess still running at the end counts only with a call or a limit
    // hit; guessed pickles that all stopped cleanly and end the file stand.
    if seq.rejected
        || (seq.speculative && seq.cur.is_some() && !Sniffer::speculation_holds(seq.cur.as_ref()))
    {
        return ModelInfo::empty(Format::Other, total_len);
    }
    if seq.follower && !seq.speculative && !seq.cur.as_ref().is_some_and(Sniffer::follower_counts) {
        seq.cur = None;
    }
    let mut i = ModelInfo::empty(Format::Pickle, total_len);
    if seq.legacy {
        i.variant = Some("torch_legacy".into());
    }
    if let Some(cur) = seq.cur.take() {
        seq.done.push(cur.finish());
    } else if let Some(end) = seq.end {
        if end < total_len && !seq.legacy {
            i.warnings
                .push(format!("{} bytes after the last pickle", total_len - end));
        }
    }
    if seq.legacy && seq.done.len() < LEGACY_PICKLES {
        i.warnings.push(format!(
            "legacy torch file with {} of its 5 pickles",
            seq.done.len()
        ));
    }
    if let Some(r) = seq.done.iter().find_map(|p| p.reason.clone()) {
        i.reason = Some(r);
    }
    i.pickles = seq.done;
    i
}

fn finish_npy(r: NpyReader, total_len: u64) -> (ModelInfo, Option<String>) {
    let unaccounted = r.header_failure();
    let mut i = ModelInfo::empty(Format::Npy, total_len);
    let header = r
        .header
        .as_ref()
        .map(|(h, v, len)| (h.object, v.clone(), *len));
    let (t, report) = r.finish(Some(total_len));
    match t {
        Ok(t) => {
            if let Some((object, version, len)) = header {
                i.npy = Some(NpyHeader {
                    version,
                    data_offset: len,
                    object,
                });
            }
            i.tensors.push(t);
        }
        Err(e) => {
            i.format = Format::Other;
            i.reason = Some(e);
        }
    }
    if let Some(rep) = report {
        if let Some(reason) = &rep.reason {
            i.reason.get_or_insert_with(|| reason.clone());
        }
        i.pickles.push(rep);
    }
    (i, unaccounted)
}

fn finish_zip(mut z: ZipStream, total_len: u64) -> (ModelInfo, Option<String>) {
    z.finish();
    let format = z.kind.format();
    let mut i = ModelInfo::empty(format, total_len);
    if format == Format::Other {
        i.reason = Some("zip archive without model members".into());
    }
    i.warnings = std::mem::take(&mut z.warnings);
    if z.members_dropped > 0 {
        i.warnings.push(format!(
            "{} zip members beyond the limit not listed",
            z.members_dropped
        ));
    }
    i.members = std::mem::take(&mut z.members);
    if i.format != Format::Other {
        i.tensors = std::mem::take(&mut z.tensors);
    }
    i.pickles = std::mem::take(&mut z.pickles);
    let mut unaccounted = z.unaccounted.take();
    if z.pickles_dropped > 0 {
        i.warnings.push(format!(
            "{} pickle reports beyond the limit not listed",
            z.pickles_dropped
        ));
        if z.dropped_unsafe {
            unaccounted.get_or_insert_with(|| {
                "an unlisted pickle (beyond the listing limit) is not safe".to_string()
            });
        }
    }
    if i.format == Format::Torchscript {
        for imp in i.pickles.iter_mut().flat_map(|p| p.imports.iter_mut()) {
            if !imp.calls.contains(&ImportCall::Modify) {
                imp.risk = allowlist::classify_torchscript(&imp.module, &imp.name);
            }
        }
        i.warnings.push(
            "TorchScript archive: code/ holds TorchScript programs, run by torch.jit.load (__setstate__) and when the model is called".into(),
        );
    }
    (i, unaccounted)
}

fn finish_onnx(mut o: onnx::OnnxStream, total_len: u64) -> ModelInfo {
    // A clean end closes the messages that end exactly at EOF.
    o.finish();
    if o.rejected || !o.confirmed {
        return ModelInfo::empty(Format::Other, total_len);
    }
    let mut i = ModelInfo::empty(Format::Onnx, total_len);
    if let Some(f) = o.failure.take() {
        i.reason = Some(f);
    } else if !o.at_boundary() {
        i.reason = Some("truncated ONNX model".into());
    }
    if o.external_tensors > 0 {
        i.warnings.push(format!(
            "{} initializers keep their data in external files",
            o.external_tensors
        ));
    }
    if o.tensors_dropped > 0 {
        i.warnings
            .push(format!("{} initializers not listed", o.tensors_dropped));
    }
    if o.unservable_tensors > 0 {
        i.warnings.push(format!(
            "{} tensors keep their data in typed or split fields, or in a length their shape does not explain: listed without an offset, not readable by name",
            o.unservable_tensors
        ));
    }
    if o.deep_subgraphs > 0 {
        i.warnings.push(format!(
            "{} subgraphs nested too deep were not walked",
            o.deep_subgraphs
        ));
    }
    i.onnx = Some(std::mem::take(&mut o.header));
    i.tensors = std::mem::take(&mut o.tensors);
    i.metadata = o
        .metadata
        .drain(..)
        .map(|(k, v)| (k, MetaValue::Str(v)))
        .collect();
    i
}

fn finish_tflite(buf: &tflite::Buf<'_>, total_len: u64, max_string: usize) -> ModelInfo {
    let mut i = ModelInfo::empty(Format::Tflite, total_len);
    let root = buf
        .prefix
        .get(..4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    if u64::from(root) >= total_len || root < 8 {
        i.format = Format::Other;
        i.reason = Some(format!(
            "TFLite root table offset {root} is outside the file"
        ));
        return i;
    }
    if let Some((field, at)) = tflite::points_past_end(buf, total_len) {
        i.reason = Some(format!(
            "TFLite {field} at offset {at} is past the end of the file ({total_len} bytes): truncated or damaged"
        ));
    }
    let h = tflite::parse(buf, max_string);
    let unknown: Vec<&str> = [
        ("version", h.version.is_none()),
        ("subgraphs", h.subgraphs.is_none()),
        ("operator_codes", h.operator_codes.is_none()),
        ("buffers", h.buffers.is_none()),
        ("description", h.description.is_none()),
    ]
    .into_iter()
    .filter_map(|(name, missing)| missing.then_some(name))
    .collect();
    if !unknown.is_empty() {
        i.warnings.push(format!(
            "TFLite model fields not read: {} (absent, or stored outside the head and tail of the file the sniffer keeps)",
            unknown.join(", ")
        ));
    }
    i.tflite = Some(h);
    i
}

/// Absolute offsets where tensor data (and, for zip checkpoints, stored
/// member data) starts and ends, sorted and distinct: cut points a
/// content-defined chunker can honour so that a re-export or partial
/// fine-tune that keeps a tensor byte-identical also keeps its chunks.
pub fn tensor_boundaries(info: &ModelInfo) -> Vec<u64> {
    let mut cuts = BTreeSet::new();
    for t in &info.tensors {
        if let Some(o) = t.offset {
            cuts.insert(o);
            cuts.insert(o.saturating_add(t.length));
        }
    }
    for m in &info.members {
        if m.method == 0 {
            cuts.insert(m.offset);
            cuts.insert(m.offset.saturating_add(m.compressed_size));
        }
    }
    cuts.into_iter()
        .filter(|&c| c > 0 && c < info.size)
        .collect()
}

/// Sniffs a whole in-memory file with default limits.
pub fn sniff(data: &[u8]) -> ModelInfo {
    let mut s = Sniffer::new(Limits::default());
    s.feed(data);
    s.finish(data.len() as u64)
}

/// Sniffs everything `r` yields, reading in 1 MiB batches.
pub fn sniff_reader<R: std::io::Read>(mut r: R, limits: Limits) -> std::io::Result<ModelInfo> {
    let mut s = Sniffer::new(limits);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        s.feed(&buf[..n]);
    }
    let len = s.position();
    Ok(s.finish(len))
}

/// Fuzz entry point: sniffs `data` fed whole, byte by byte (short inputs),
/// in 7-byte pieces and in uneven pieces, and panics if the results differ
/// or an invariant breaks. Also runs with tiny limits.
#[cfg(feature = "fuzzing")]
pub fn fuzz_sniff(data: &[u8]) {
    fn run(data: &[u8], limits: &Limits, splits: &mut dyn Iterator<Item = usize>) -> ModelInfo {
        let mut s = Sniffer::new(limits.clone());
        let mut rest = data;
        while !rest.is_empty() {
            let n = splits.next().unwrap_or(rest.len()).clamp(1, rest.len());
            s.feed(&rest[..n]);
            rest = &rest[n..];
        }
        s.finish(data.len() as u64)
    }
    fn json(i: &ModelInfo) -> String {
        serde_json::to_string(i).unwrap_or_default()
    }
    let tiny = Limits {
        max_header_bytes: 4096,
        max_npy_header: 512,
        max_prefix_bytes: 256,
        max_tensors: 8,
        max_metadata: 8,
        max_meta_string: 32,
        max_zip_members: 4,
        max_zip_name: 16,
        max_inflate_bytes: 4096,
        max_pickles: 3,
        pickle: PickleLimits {
            max_walk_bytes: 4096,
            max_string: 32,
            max_line: 64,
            max_memo: 16,
            max_stack: 32,
            max_imports: 8,
            max_retained: 256,
        },
    };
    for limits in [Limits::default(), tiny] {
        let whole = run(data, &limits, &mut std::iter::empty());
        check_invariants(&whole);
        let reference = json(&whole);
        if data.len() <= 4096 {
            let ones = run(data, &limits, &mut std::iter::repeat(1));
            assert_eq!(reference, json(&ones), "1-byte feeding changed the result");
        }
        let sevens = run(data, &limits, &mut std::iter::repeat(7));
        assert_eq!(
            reference,
            json(&sevens),
            "7-byte feeding changed the result"
        );
        let mut seed = data.len() as u64 ^ 0x9e37_79b9_7f4a_7c15;
        let mut uneven = std::iter::from_fn(move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            Some((seed % 300) as usize + 1)
        });
        let odd = run(data, &limits, &mut uneven);
        assert_eq!(reference, json(&odd), "uneven feeding changed the result");
    }
}

/// Invariants every report satisfies.
#[cfg(feature = "fuzzing")]
fn check_invariants(i: &ModelInfo) {
    for t in &i.tensors {
        if let Some(o) = t.offset {
            assert!(
                o.saturating_add(t.length) <= i.size,
                "tensor {:?} past the end",
                t.name
            );
        }
    }
    for u in &i.unsafe_imports {
        assert!(i.pickle_imports.contains(u));
    }
    match i.verdict {
        Verdict::NoPickle => assert!(i.pickles.is_empty()),
        Verdict::SafePickle => {
            assert!(!i.pickles.is_empty() && i.pickles.iter().all(|p| p.is_safe()))
        }
        Verdict::UnsafePickle => {}
    }
    if i.format == Format::Other {
        assert!(i.tensors.is_empty(), "format other with tensors");
    }
    let b = tensor_boundaries(i);
    assert!(b.windows(2).all(|w| w[0] < w[1]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffer_can_move_between_threads() {
        fn send<T: Send + 'static>(_: &T) {}
        let s = Sniffer::new(Limits::default());
        send(&s);
        let info = std::thread::spawn(move || {
            let mut s = s;
            s.feed(b"\x80\x02K\x01.");
            s.finish(5)
        })
        .join()
        .unwrap_or_else(|_| ModelInfo::empty(Format::Other, 0));
        assert_eq!(info.format, Format::Pickle);
    }

    #[test]
    fn clip_respects_char_boundaries() {
        assert_eq!(clip("héllo", 2), "h…");
        assert_eq!(clip("abc", 3), "abc");
    }

    #[test]
    fn boundaries_exclude_file_ends_and_dedupe() {
        let mut i = ModelInfo::empty(Format::Safetensors, 100);
        for (o, l) in [(8u64, 10u64), (18, 0), (18, 82)] {
            i.tensors.push(TensorInfo {
                name: String::new(),
                dtype: String::new(),
                shape: vec![],
                offset: Some(o),
                length: l,
                fortran_order: false,
            });
        }
        assert_eq!(tensor_boundaries(&i), vec![8, 18]);
    }
}
