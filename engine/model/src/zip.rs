//! Zip archives (PyTorch checkpoints, TorchScript, npz), walked through
//! their local file headers as they stream past.
//!
//! Each member's data is routed by name: `*.pkl` to a [`PickleScanner`],
//! `*.npy` to an npy header reader (and on to a pickle scanner for object
//! arrays). Any other member's first bytes are looked at too: numpy's
//! `NpzFile` reads every member that starts with the npy magic as an
//! array, whatever its name, so such a member gets the npy reader as well;
//! the rest is skipped by count. Stored members stream as they are;
//! deflated ones go through a streaming inflater, stopped as soon as the
//! consumer has what it needs and bounded by the file's inflate budget.
//!
//! Members written with a data descriptor (sizes after the data) are ended
//! by finding the descriptor: its signature, a compressed size equal to the
//! bytes seen, and a zip header right after it. The search keeps at most a
//! few bytes back between batches.
//!
//! Loaders (Python's `zipfile`, numpy, PyTorch's miniz reader) find the end
//! of central directory record by searching back from the end of the file
//! and read members through the central directory, not the local headers.
//! So the walk must account for every byte: local headers and member data
//! back to back from offset 0, then the central directory, then exactly one
//! end record (with its zip64 records) whose comment ends the file and whose
//! counts, size and offset describe the directory the walk found. Every
//! directory entry must point at a local header the walk saw, with the same
//! name, compression method, sizes and encryption flag, so that the bytes a
//! loader decompresses are the bytes that were scanned. Anything else (bytes
//! the walk cannot place, a lost walk, a directory over the buffering limit,
//! a disagreement) is recorded in [`ZipStream::unaccounted`], which makes
//! the verdict unsafe: what the walk did not see may be a pickle a loader
//! runs.

use std::collections::HashMap;

use flate2::{Decompress, FlushDecompress, Status};

use crate::info::{PickleReport, TensorInfo, ZipMember};
use crate::npy;
use crate::pickle::{PickleLimits, PickleScanner};

const LOCAL: &[u8; 4] = b"PK\x03\x04";
const CENTRAL: &[u8; 4] = b"PK\x01\x02";
const EOCD: &[u8; 4] = b"PK\x05\x06";
const EOCD64: &[u8; 4] = b"PK\x06\x06";
const EOCD64_LOC: &[u8; 4] = b"PK\x06\x07";
const DESCRIPTOR: &[u8; 4] = b"PK\x07\x08";

/// Caps the zip walker needs.
#[derive(Clone, Debug)]
pub(crate) struct ZipCaps {
    pub max_members: usize,
    pub max_name: usize,
    pub max_central: u64,
    pub max_inflate: u64,
    pub max_npy_header: u64,
    pub pickle: PickleLimits,
}

/// Reads an npy member (or a bare .npy file): header, then for object
/// arrays the pickle that follows.
pub(crate) struct NpyReader {
    /// Name for the tensor.
    pub name: String,
    /// Location prefix for the object-array pickle report.
    location: String,
    /// Absolute offset of the npy's first byte, when stored plainly.
    pub start: Option<u64>,
    buf: Vec<u8>,
    need: Option<u64>,
    pub header: Option<(npy::Header, String, u64)>,
    pub error: Option<String>,
    /// The error is one numpy would not run into: it may read the data,
    /// possibly as a pickle, where this reader could not follow.
    unreadable: bool,
    pickle: Option<PickleScanner>,
    fed: u64,
    max_header: u64,
    plimits: PickleLimits,
}

impl NpyReader {
    pub fn new(
        name: String,
        location: String,
        start: Option<u64>,
        max_header: u64,
        plimits: PickleLimits,
    ) -> Self {
        NpyReader {
            name,
            location,
            start,
            buf: Vec::new(),
            need: None,
            header: None,
            error: None,
            unreadable: false,
            pickle: None,
            fed: 0,
            max_header,
            plimits,
        }
    }

    /// More bytes are useful.
    pub fn wants(&self) -> bool {
        if self.error.is_some() {
            return false;
        }
        match &self.header {
            None => true,
            Some(_) => self.pickle.as_ref().is_some_and(|p| !p.is_finished()),
        }
    }

    /// Feeds bytes; returns how many it used (the rest it does not want).
    pub fn feed(&mut self, mut data: &[u8]) -> usize {
        let offered = data.len();
        let used = self.feed_inner(&mut data);
        self.fed += used as u64;
        debug_assert!(used <= offered);
        used
    }

    fn feed_inner(&mut self, data: &mut &[u8]) -> usize {
        let offered = data.len();
        while self.header.is_none() && self.error.is_none() && !data.is_empty() {
            // 12 bytes hold any preamble; then the whole header.
            let target = self.need.unwrap_or(12) as usize;
            let take = target.saturating_sub(self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            *data = &data[take..];
            if self.buf.len() < target {
                return offered - data.len();
            }
            match self.need {
                None => match npy::preamble(&self.buf) {
                    npy::Preamble::Ok(_, hlen, hoff) => {
                        let total = hoff + hlen;
                        if total > self.max_header {
                            // numpy reads any size with allow_pickle.
                            self.unreadable(format!(
                                "npy header of {hlen} bytes exceeds the limit of {}",
                                self.max_header
                            ));
                            return offered - data.len();
                        }
                        self.need = Some(total);
                    }
                    npy::Preamble::Invalid(e) => {
                        self.error = Some(e);
                        return offered - data.len();
                    }
                    npy::Preamble::NeedMore => {
                        self.unreadable("npy preamble unreadable".into());
                        return offered - data.len();
                    }
                },
                Some(total) => self.parse_header(total),
            }
        }
        let mut used = offered - data.len();
        if let Some(p) = &mut self.pickle {
            if !p.is_finished() {
                used += p.feed(data);
            }
        }
        used
    }

    /// `buf` holds at least the `total` header bytes.
    fn parse_header(&mut self, total: u64) {
        let ver = match npy::preamble(&self.buf) {
            npy::Preamble::Ok(v, _, _) => v,
            _ => {
                self.unreadable("npy preamble unreadable".into());
                return;
            }
        };
        let hoff = if ver.starts_with('1') { 10 } else { 12 };
        let total_us = total as usize;
        match npy::parse_dict(self.buf.get(hoff..total_us).unwrap_or(&[])) {
            Ok(h) => {
                // A tiny header can leave data bytes in `buf`.
                let extra = self.buf.split_off(total_us.min(self.buf.len()));
                if h.object {
                    let mut p = PickleScanner::new(
                        self.plimits.clone(),
                        self.location.clone(),
                        self.start.map(|s| s + total),
                    );
                    p.feed(&extra);
                    self.pickle = Some(p);
                }
                self.header = Some((h, ver, total));
                self.buf = Vec::new();
            }
            Err(e) => self.unreadable(e),
        }
    }

    fn unreadable(&mut self, e: String) {
        self.error = Some(e);
        self.unreadable = true;
    }

    /// Why the header could not be analysed, when numpy may read it all
    /// the same (a header over the size limit, one this reader cannot
    /// parse, a dtype that is not plain): the data may be a pickle, and
    /// nothing says it is not.
    pub fn header_failure(&self) -> Option<String> {
        let e = self.error.as_ref().filter(|_| self.unreadable)?;
        Some(format!("npy header cannot be analysed ({e})"))
    }

    /// The tensor and (for object arrays) the pickle report. `size` is the
    /// npy's total length when known.
    pub fn finish(self, size: Option<u64>) -> (Result<TensorInfo, String>, Option<PickleReport>) {
        let report = self.pickle.map(PickleScanner::finish);
        if let Some(e) = self.error {
            return (Err(e), report);
        }
        let Some((h, _ver, hdr_len)) = self.header else {
            return (
                Err(format!("truncated npy header ({} bytes seen)", self.fed)),
                report,
            );
        };
        if !h.object && h.itemsize.is_some() && h.data_len().is_none() {
            // numpy refuses it ("array is too big"): not a tensor of the
            // rest of the file.
            return (
                Err(format!(
                    "npy shape {:?} of {} is too big: its byte size overflows 64 bits",
                    h.shape, h.descr
                )),
                report,
            );
        }
        let avail = size.map(|s| s.saturating_sub(hdr_len));
        let length = match (h.data_len(), avail) {
            (Some(n), Some(a)) if !h.object && n > a => {
                return (
                    Err(format!(
                        "npy data needs {n} bytes but only {a} follow the header"
                    )),
                    report,
                )
            }
            (Some(n), _) if !h.object => n,
            (_, Some(a)) => a,
            _ => 0,
        };
        let offset = if h.object {
            None
        } else {
            self.start.map(|s| s + hdr_len)
        };
        (
            Ok(TensorInfo {
                name: self.name,
                dtype: h.descr,
                shape: h.shape,
                offset,
                length,
                fortran_order: h.fortran_order,
            }),
            report,
        )
    }
}

/// Where a member's bytes go.
enum Consumer {
    Nothing,
    Pickle(Box<PickleScanner>),
    Npy(Box<NpyReader>),
    /// A member whose name says nothing: its first bytes decide whether it
    /// is an npy array (which numpy reads whatever the member's name).
    Probe {
        head: Vec<u8>,
        npy: Box<NpyReader>,
    },
}

impl Consumer {
    fn wants(&self) -> bool {
        match self {
            Consumer::Nothing => false,
            Consumer::Pickle(p) => !p.is_finished(),
            Consumer::Npy(n) => n.wants(),
            Consumer::Probe { .. } => true,
        }
    }
    /// Feeds bytes; returns how many the consumer used.
    fn feed(&mut self, b: &[u8]) -> usize {
        match self {
            Consumer::Nothing => 0,
            Consumer::Pickle(p) => p.feed(b),
            Consumer::Npy(n) => n.feed(b),
            Consumer::Probe { head, .. } => {
                let take = (npy::MAGIC.len() - head.len()).min(b.len());
                head.extend_from_slice(&b[..take]);
                if head.len() < npy::MAGIC.len() {
                    return take;
                }
                let Consumer::Probe { head, npy } = std::mem::replace(self, Consumer::Nothing)
                else {
                    return take;
                };
                if head[..] == npy::MAGIC[..] {
                    let mut npy = npy;
                    npy.feed(&head);
                    *self = Consumer::Npy(npy);
                    take + self.feed(&b[take..])
                } else {
                    take
                }
            }
        }
    }
}

enum Sink {
    Stored(Consumer),
    Deflate {
        z: Box<Decompress>,
        consumer: Consumer,
        ended: bool,
        error: Option<String>,
        budget_hit: bool,
    },
}

impl Sink {
    fn wants(&self) -> bool {
        match self {
            Sink::Stored(c) => c.wants(),
            Sink::Deflate {
                consumer,
                ended,
                error,
                budget_hit,
                ..
            } => !ended && error.is_none() && !budget_hit && consumer.wants(),
        }
    }

    fn feed(&mut self, data: &[u8], budget: &mut u64, out: &mut [u8]) {
        if !self.wants() {
            return;
        }
        match self {
            Sink::Stored(c) => {
                c.feed(data);
            }
            Sink::Deflate {
                z,
                consumer,
                ended,
                error,
                budget_hit,
            } => {
                let mut input = data;
                while !input.is_empty() && consumer.wants() {
                    if *budget == 0 {
                        *budget_hit = true;
                        return;
                    }
                    let room = (out.len() as u64).min(*budget) as usize;
                    let (in0, out0) = (z.total_in(), z.total_out());
                    let st = z.decompress(input, &mut out[..room], FlushDecompress::None);
                    let used = (z.total_in() - in0) as usize;
                    let made = (z.total_out() - out0) as usize;
                    input = input.get(used..).unwrap_or(&[]);
                    // Only what the consumer used is charged: how much
                    // one call inflates past its need depends on how the
                    // input was split, and the result must not.
                    let taken = consumer.feed(&out[..made]);
                    *budget = budget.saturating_sub(taken as u64);
                    if *budget == 0 && consumer.wants() {
                        // The budget ran out exactly here whatever the
                        // split; what the same call also saw past this
                        // point (the stream's end, an error) depends on
                        // how much input it was given, so it is not
                        // looked at.
                        *budget_hit = true;
                        return;
                    }
                    match st {
                        Ok(Status::StreamEnd) => {
                            *ended = true;
                            return;
                        }
                        Ok(_) if used == 0 && made == 0 => return,
                        Ok(_) => {}
                        Err(e) => {
                            // Only an error the consumer would have run
                            // into counts (it may have stopped earlier;
                            // where depends on batch sizes otherwise).
                            if consumer.wants() {
                                *error = Some(format!("deflate error: {e}"));
                            } else {
                                *ended = true;
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    fn consumer(self) -> (Consumer, Option<String>) {
        match self {
            Sink::Stored(c) => (c, None),
            Sink::Deflate {
                consumer,
                error,
                budget_hit,
                ..
            } => {
                let why = error.or_else(|| {
                    budget_hit.then(|| "inflate budget for this file exhausted".to_string())
                });
                (consumer, why)
            }
        }
    }
}

/// What the walk saw of one local header, to hold the central directory
/// against.
struct LocalRec {
    name_hash: u64,
    /// General purpose flags (only the encryption bits are compared).
    flags: u16,
    method: u16,
    /// The sizes the walk used: the local header's, or its data
    /// descriptor's.
    csize: u64,
    usize_: u64,
}

/// Encryption bits of the general purpose flags (traditional and strong).
const ENCRYPTED: u16 = 0x41;

/// The member whose data is streaming.
struct Current {
    name: String,
    /// Absolute offset of its local header.
    header_at: u64,
    method: u16,
    data_start: u64,
    csize: u64,
    usize_: u64,
    zip64: bool,
    sink: Sink,
}

enum ZSt {
    /// Collecting a 30-byte local header (or a signature of something else).
    Fixed,
    /// Collecting name and extra field.
    Var { fixed: [u8; 30], need: usize },
    /// Member data of known length.
    Data { remaining: u64, descriptor: bool },
    /// Member data of unknown length: searching for its data descriptor.
    Scan { released: u64, carry: Vec<u8> },
    /// Skipping a data descriptor after known-length data.
    SkipDescriptor { seen: Vec<u8> },
    /// Buffering the central directory.
    Central,
    /// Nothing more to learn.
    Done,
}

pub(crate) struct ZipStream {
    caps: ZipCaps,
    pos: u64,
    st: ZSt,
    buf: Vec<u8>,
    cur: Option<Current>,
    out: Vec<u8>,
    inflate_left: u64,
    pub members: Vec<ZipMember>,
    pub members_dropped: u64,
    /// What the member names say about the archive.
    pub kind: ZipKind,
    /// Pickle reports not listed (over the limit), and whether any of them
    /// was not safe.
    pub pickles_dropped: u64,
    pub dropped_unsafe: bool,
    /// Local header offset -> what the walk saw there.
    locals: HashMap<u64, LocalRec>,
    locals_overflow: bool,
    pub pickles: Vec<PickleReport>,
    pub tensors: Vec<TensorInfo>,
    /// Local header offset of each tensor's member (parallel to `tensors`).
    tensor_at: Vec<u64>,
    pub warnings: Vec<String>,
    /// The first thing the walk could not account for (it lost its place,
    /// bytes it cannot place, a directory that disagrees with what streamed
    /// past, ...): what a loader reads may not have been scanned, so the
    /// verdict is unsafe.
    pub unaccounted: Option<String>,
    /// Absolute offset where the central directory (or the end record)
    /// starts.
    central_at: u64,
    central: Vec<u8>,
    central_overflow: bool,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).map_or(0, |s| {
        u64::from_le_bytes([s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]])
    })
}

/// FNV-1a, to remember names without keeping them.
fn name_hash(b: &[u8]) -> u64 {
    b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &x| {
        (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Walks the extra field for the zip64 record; returns the (usize, csize,
/// local offset) values it holds for the fields that were 0xFFFFFFFF.
fn zip64_extra(extra: &[u8], usize_: &mut u64, csize: &mut u64, offset: Option<&mut u64>) -> bool {
    let mut p = 0;
    while p + 4 <= extra.len() {
        let id = u16_at(extra, p);
        let len = usize::from(u16_at(extra, p + 2));
        let body = extra.get(p + 4..p + 4 + len).unwrap_or(&[]);
        if id == 1 {
            let mut q = 0;
            if *usize_ == 0xffff_ffff && q + 8 <= body.len() {
                *usize_ = u64_at(body, q);
                q += 8;
            }
            if *csize == 0xffff_ffff && q + 8 <= body.len() {
                *csize = u64_at(body, q);
                q += 8;
            }
            if let Some(off) = offset {
                if *off == 0xffff_ffff && q + 8 <= body.len() {
                    *off = u64_at(body, q);
                }
            }
            return true;
        }
        p += 4 + len;
    }
    false
}

impl ZipStream {
    pub fn new(caps: ZipCaps) -> Self {
        ZipStream {
            inflate_left: caps.max_inflate,
            caps,
            pos: 0,
            st: ZSt::Fixed,
            buf: Vec::new(),
            cur: None,
            out: Vec::new(),
            members: Vec::new(),
            members_dropped: 0,
            kind: ZipKind::default(),
            pickles_dropped: 0,
            dropped_unsafe: false,
            locals: HashMap::new(),
            locals_overflow: false,
            pickles: Vec::new(),
            tensors: Vec::new(),
            tensor_at: Vec::new(),
            warnings: Vec::new(),
            unaccounted: None,
            central_at: 0,
            central: Vec::new(),
            central_overflow: false,
        }
    }

    fn warn(&mut self, w: String) {
        if self.warnings.len() < 64 {
            self.warnings.push(w);
        }
    }

    /// Records something the walk cannot account for (the first one is
    /// reported).
    fn unaccounted(&mut self, why: String) {
        self.unaccounted.get_or_insert(why);
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        let mut idle = 0;
        while !data.is_empty() {
            let used = self.step(data);
            self.pos += used as u64;
            data = &data[used..];
            // A step may end a member without consuming input (its data
            // descriptor lay in carried-over bytes); the next one consumes.
            // Stop rather than spin if that ever fails to hold.
            idle = if used == 0 { idle + 1 } else { 0 };
            if idle > 2 {
                self.unaccounted("zip walker stalled".to_string());
                self.st = ZSt::Done;
                break;
            }
        }
    }

    /// Consumes a prefix of `data`; returns its length.
    fn step(&mut self, data: &[u8]) -> usize {
        match &mut self.st {
            ZSt::Done => data.len(),
            ZSt::Central => {
                let room = self
                    .caps
                    .max_central
                    .saturating_sub(self.central.len() as u64);
                let take = (room as usize).min(data.len());
                self.central.extend_from_slice(&data[..take]);
                if take < data.len() {
                    self.central_overflow = true;
                }
                data.len()
            }
            ZSt::Fixed => {
                let take = (30 - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() >= 4 {
                    let sig = &self.buf[..4];
                    if sig != LOCAL {
                        if [CENTRAL, EOCD, EOCD64, EOCD64_LOC]
                            .contains(&sig.try_into().unwrap_or(&[0; 4]))
                        {
                            let start = std::mem::take(&mut self.buf);
                            self.central_at = self.pos + take as u64 - start.len() as u64;
                            self.st = ZSt::Central;
                            self.central = start;
                            return take;
                        }
                        let why = format!(
                            "expected a zip header at offset {}, found {:02x?}: the walk cannot place the bytes that follow",
                            self.pos + take as u64 - self.buf.len() as u64,
                            sig
                        );
                        self.unaccounted(why);
                        self.st = ZSt::Done;
                        return take;
                    }
                }
                if self.buf.len() == 30 {
                    let mut fixed = [0u8; 30];
                    fixed.copy_from_slice(&self.buf);
                    self.buf.clear();
                    let need = usize::from(u16_at(&fixed, 26)) + usize::from(u16_at(&fixed, 28));
                    self.st = ZSt::Var { fixed, need };
                    if need == 0 {
                        self.start_member(self.pos + take as u64);
                    }
                }
                take
            }
            ZSt::Var { need, .. } => {
                let need = *need;
                let take = (need - self.buf.len()).min(data.len());
                self.buf.extend_from_slice(&data[..take]);
                if self.buf.len() == need {
                    self.start_member(self.pos + take as u64);
                }
                take
            }
            ZSt::Data {
                remaining,
                descriptor,
            } => {
                let take = (*remaining).min(data.len() as u64) as usize;
                *remaining -= take as u64;
                let (done, descriptor) = (*remaining == 0, *descriptor);
                self.sink_feed(&data[..take]);
                if done {
                    if descriptor {
                        self.st = ZSt::SkipDescriptor { seen: Vec::new() };
                    } else {
                        self.end_member(None);
                    }
                }
                take
            }
            ZSt::SkipDescriptor { seen } => {
                let zip64 = self.cur.as_ref().is_some_and(|c| c.zip64);
                let full = if zip64 { 24 } else { 16 };
                // The descriptor's signature is optional: without it the
                // descriptor is 4 bytes shorter.
                let want = if seen.len() < 4 {
                    4
                } else if seen[..4] == DESCRIPTOR[..] {
                    full
                } else {
                    full - 4
                };
                let take = (want - seen.len()).min(data.len());
                seen.extend_from_slice(&data[..take]);
                if seen.len() >= 4 && seen.len() == want && want != 4 {
                    self.end_member(None);
                }
                take
            }
            ZSt::Scan { .. } => self.scan(data),
        }
    }

    fn sink_feed(&mut self, data: &[u8]) {
        if let Some(cur) = &mut self.cur {
            if cur.sink.wants() {
                if self.out.is_empty() {
                    self.out = vec![0u8; 32 << 10];
                }
                cur.sink.feed(data, &mut self.inflate_left, &mut self.out);
            }
        }
    }

    /// Parses the buffered local header and sets up the member.
    fn start_member(&mut self, data_start: u64) {
        let ZSt::Var { fixed, .. } = &self.st else {
            return;
        };
        let fixed = *fixed;
        let var = std::mem::take(&mut self.buf);
        let header_at = data_start - var.len() as u64 - 30;
        let flags = u16_at(&fixed, 6);
        let method = u16_at(&fixed, 8);
        let mut csize = u64::from(u32_at(&fixed, 18));
        let mut usize_ = u64::from(u32_at(&fixed, 22));
        let nlen = usize::from(u16_at(&fixed, 26));
        let full_name = var.get(..nlen).unwrap_or(&[]);
        let extra = var.get(nlen..).unwrap_or(&[]);
        let zip64 = zip64_extra(extra, &mut usize_, &mut csize, None);
        let name_full = String::from_utf8_lossy(full_name).into_owned();
        if self.locals.len() < 1 << 20 {
            self.locals.insert(
                header_at,
                LocalRec {
                    name_hash: name_hash(full_name),
                    flags,
                    method,
                    csize,
                    usize_,
                },
            );
        } else {
            self.locals_overflow = true;
        }
        let name = crate::clip(&name_full, self.caps.max_name);
        if nlen > self.caps.max_name {
            self.warn(format!(
                "zip member name of {nlen} bytes at offset {header_at} (shown clipped)"
            ));
        }
        let lower = name_full.to_ascii_lowercase();
        let consumer = if lower.ends_with(".pkl") {
            Consumer::Pickle(Box::new(PickleScanner::new(
                self.caps.pickle.clone(),
                name.clone(),
                (method == 0).then_some(data_start),
            )))
        } else if lower.ends_with(".npy") {
            let tname = name.strip_suffix(".npy").unwrap_or(&name).to_string();
            Consumer::Npy(Box::new(NpyReader::new(
                tname,
                format!("{name}:object array"),
                (method == 0).then_some(data_start),
                self.caps.max_npy_header,
                self.caps.pickle.clone(),
            )))
        } else {
            // numpy reads a member under its own name too (`arr_0`, not
            // only `arr_0.npy`) when it starts with the npy magic.
            Consumer::Probe {
                head: Vec::new(),
                npy: Box::new(NpyReader::new(
                    name.clone(),
                    format!("{name}:object array"),
                    (method == 0).then_some(data_start),
                    self.caps.max_npy_header,
                    self.caps.pickle.clone(),
                )),
            }
        };
        let named = matches!(consumer, Consumer::Pickle(_) | Consumer::Npy(_));
        let scanned = !matches!(consumer, Consumer::Nothing);
        let sink = if flags & 1 != 0 {
            // A loader needs a password for it; the directory is checked
            // to say so too.
            if named {
                self.unscanned(&name, "is encrypted");
            }
            Sink::Stored(Consumer::Nothing)
        } else {
            match method {
                0 => Sink::Stored(consumer),
                8 if scanned => Sink::Deflate {
                    z: Box::new(Decompress::new(false)),
                    consumer,
                    ended: false,
                    error: None,
                    budget_hit: false,
                },
                _ => {
                    if scanned {
                        self.unscanned(&name, &format!("uses compression method {method}"));
                    }
                    Sink::Stored(Consumer::Nothing)
                }
            }
        };
        self.kind.note(&name_full);
        self.cur = Some(Current {
            name,
            header_at,
            method,
            data_start,
            csize,
            usize_,
            zip64,
            sink,
        });
        let descriptor = flags & 8 != 0;
        self.st = if descriptor && csize == 0 {
            ZSt::Scan {
                released: 0,
                carry: Vec::new(),
            }
        } else if csize == 0 {
            self.end_member(None);
            return;
        } else {
            ZSt::Data {
                remaining: csize,
                descriptor,
            }
        };
    }

    /// Lists a pickle report, or counts it when over the limit (keeping
    /// the verdict: an unlisted unsafe report still makes the file unsafe).
    fn push_pickle(&mut self, r: PickleReport) {
        if self.pickles.len() < self.caps.max_members {
            self.pickles.push(r);
        } else {
            self.pickles_dropped += 1;
            self.dropped_unsafe |= !r.is_safe();
        }
    }

    /// Records a pickle-bearing member that could not be scanned.
    fn unscanned(&mut self, name: &str, why: &str) {
        self.push_pickle(PickleReport {
            location: name.to_string(),
            offset: None,
            protocol: None,
            bytes: 0,
            opcodes: 0,
            complete: false,
            reason: Some(format!("member {why}; not scanned")),
            imports: Vec::new(),
        });
    }

    /// The current member's data ended; `sizes` from a data descriptor.
    fn end_member(&mut self, sizes: Option<(u64, u64)>) {
        self.st = ZSt::Fixed;
        let Some(cur) = self.cur.take() else { return };
        let (csize, usize_) = sizes.unwrap_or((cur.csize, cur.usize_));
        if let Some(rec) = self.locals.get_mut(&cur.header_at) {
            rec.csize = csize;
            rec.usize_ = usize_;
        }
        if self.members.len() < self.caps.max_members {
            self.members.push(ZipMember {
                name: cur.name.clone(),
                method: cur.method,
                offset: cur.data_start,
                compressed_size: csize,
                size: usize_,
            });
        } else {
            self.members_dropped += 1;
        }
        let (consumer, why) = cur.sink.consumer();
        if let Some(w) = &why {
            self.warn(format!("member {}: {w}", cur.name));
        }
        match consumer {
            Consumer::Nothing | Consumer::Probe { .. } => {}
            Consumer::Pickle(p) => {
                let mut r = p.finish();
                if let (Some(w), None) = (&why, &r.reason) {
                    r.complete = false;
                    r.reason = Some(w.clone());
                }
                self.push_pickle(r);
            }
            Consumer::Npy(n) => {
                if let Some(e) = n.header_failure() {
                    // numpy may still read it, as an object array.
                    self.unaccounted(format!("member {}: {e}", cur.name));
                }
                let (t, r) = n.finish(Some(usize_));
                match t {
                    Ok(t) if self.tensors.len() < self.caps.max_members => {
                        self.tensors.push(t);
                        self.tensor_at.push(cur.header_at);
                    }
                    Ok(_) => {}
                    Err(e) => self.warn(format!("member {}: {e}", cur.name)),
                }
                if let Some(mut r) = r {
                    if let (Some(w), None) = (&why, &r.reason) {
                        r.complete = false;
                        r.reason = Some(w.clone());
                    }
                    self.push_pickle(r);
                }
            }
        }
    }

    /// Data of unknown length: find the data descriptor that ends it.
    ///
    /// `released` bytes of the member went to the sink; `carry` holds the
    /// few bytes after them that might begin a descriptor (less than a
    /// descriptor plus the next signature, plus 3).
    fn scan(&mut self, data: &[u8]) -> usize {
        let zip64 = self.cur.as_ref().is_some_and(|c| c.zip64);
        let d = if zip64 { 24 } else { 16 };
        let window = d + 4;
        let ZSt::Scan { released, carry } = &mut self.st else {
            return data.len();
        };
        let released0 = *released;
        let carry_v = std::mem::take(carry);
        let clen = carry_v.len();

        if data.len() < window {
            // Short batch: work on carry + data as one small buffer.
            let mut joined = carry_v;
            joined.extend_from_slice(data);
            let mut keep_from = joined.len().saturating_sub(3);
            for p in memchr::memmem::find_iter(&joined, DESCRIPTOR) {
                match Self::check_descriptor(&joined, p, released0 + p as u64, zip64) {
                    Some(Some(sizes)) => {
                        self.sink_feed(&joined[..p]);
                        self.end_member(Some(sizes));
                        let end = p + d;
                        if end < clen {
                            // Carried bytes of the next header start its
                            // buffer; `data` is then wholly unconsumed.
                            self.buf.extend_from_slice(&joined[end..clen]);
                            return 0;
                        }
                        return end - clen;
                    }
                    Some(None) => {}
                    None => {
                        keep_from = keep_from.min(p);
                        break;
                    }
                }
            }
            self.sink_feed(&joined[..keep_from]);
            if let ZSt::Scan { released, carry } = &mut self.st {
                *released = released0 + keep_from as u64;
                *carry = joined[keep_from..].to_vec();
            }
            return data.len();
        }

        // 1. Descriptors starting in the carried-over bytes; `data` holds
        //    enough bytes to decide each of them.
        if clen > 0 {
            let mut joined = carry_v.clone();
            joined.extend_from_slice(&data[..window]);
            for p in memchr::memmem::find_iter(&joined, DESCRIPTOR) {
                if p >= clen {
                    break;
                }
                if let Some(Some(sizes)) =
                    Self::check_descriptor(&joined, p, released0 + p as u64, zip64)
                {
                    self.sink_feed(&carry_v[..p]);
                    self.end_member(Some(sizes));
                    let end = p + d;
                    if end < clen {
                        self.buf.extend_from_slice(&carry_v[end..]);
                        return 0;
                    }
                    return end - clen;
                }
            }
            // No descriptor starts in them: they are member data.
            self.sink_feed(&carry_v);
        }

        // 2. Descriptors starting in `data`.
        let base = released0 + clen as u64;
        let mut keep_from = data.len().saturating_sub(3);
        for p in memchr::memmem::find_iter(data, DESCRIPTOR) {
            match Self::check_descriptor(data, p, base + p as u64, zip64) {
                Some(Some(sizes)) => {
                    self.sink_feed(&data[..p]);
                    self.end_member(Some(sizes));
                    return p + d;
                }
                Some(None) => {}
                None => {
                    keep_from = keep_from.min(p);
                    break;
                }
            }
        }
        self.sink_feed(&data[..keep_from]);
        if let ZSt::Scan { released, carry } = &mut self.st {
            *released = base + keep_from as u64;
            *carry = data[keep_from..].to_vec();
        }
        data.len()
    }

    /// Whether a data descriptor starting at `b[p]` ends member data of
    /// length `len`: `None` when `b` is too short to tell, `Some(None)` when
    /// it does not, `Some(Some((csize, usize)))` when it does.
    fn check_descriptor(b: &[u8], p: usize, len: u64, zip64: bool) -> Option<Option<(u64, u64)>> {
        let d = if zip64 { 24 } else { 16 };
        let w = b.get(p..p + d + 4)?;
        let (cs, us) = if zip64 {
            (u64_at(w, 8), u64_at(w, 16))
        } else {
            (u64::from(u32_at(w, 8)), u64::from(u32_at(w, 12)))
        };
        let next = &w[d..d + 4];
        let next_ok = next == LOCAL || next == CENTRAL || next == EOCD || next == EOCD64;
        let len_ok = if zip64 {
            cs == len
        } else {
            cs == len & 0xffff_ffff
        };
        Some((len_ok && next_ok).then_some((cs, us)))
    }

    /// Ends the walk.
    pub fn finish(&mut self) {
        let mut directory = None;
        match std::mem::replace(&mut self.st, ZSt::Done) {
            ZSt::Fixed if self.buf.is_empty() && self.central.is_empty() => {
                self.unaccounted("zip has no central directory (truncated?)".into())
            }
            ZSt::Central => {
                if self.central_overflow {
                    self.unaccounted(format!(
                        "central directory larger than {} bytes; not checked against the members",
                        self.caps.max_central
                    ));
                } else if self.locals_overflow {
                    self.unaccounted(
                        "too many members to check the central directory against them".into(),
                    );
                } else {
                    match self.check_central() {
                        Ok(d) => directory = Some(d),
                        Err(e) => self.unaccounted(e),
                    }
                }
            }
            ZSt::Done => {}
            ZSt::Scan { carry, .. } => {
                // The descriptor was never found: what remains is data.
                self.sink_feed(&carry);
                let name = self
                    .cur
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                self.unaccounted(format!(
                    "end of zip member {name:?} not found (stream ended inside it)"
                ));
                self.end_member(None);
            }
            _ => {
                let name = self.cur.as_ref().map(|c| c.name.clone());
                self.unaccounted(match &name {
                    Some(n) => format!("zip truncated inside member {n:?}"),
                    None => "zip truncated inside a local header".to_string(),
                });
                self.end_member(None);
            }
        }
        if let Some(dir) = &directory {
            self.keep_tensors_loaders_read(dir);
        }
    }

    /// Keeps only the tensors numpy would read under their names: for key
    /// `k`, `NpzFile` opens the member named `k` if there is one, else
    /// `k.npy`, and of several members with one name Python's `zipfile`
    /// keeps the directory's last. A tensor from any other member (a
    /// duplicate name, or one shadowed by a member named without `.npy`)
    /// would serve bytes numpy does not read, so it is not listed.
    fn keep_tensors_loaders_read(&mut self, dir: &HashMap<u64, u64>) {
        let tensors = std::mem::take(&mut self.tensors);
        let at = std::mem::take(&mut self.tensor_at);
        for (t, at) in tensors.into_iter().zip(at) {
            let pick = dir
                .get(&name_hash(t.name.as_bytes()))
                .or_else(|| dir.get(&name_hash(format!("{}.npy", t.name).as_bytes())));
            if pick == Some(&at) {
                self.tensors.push(t);
            } else {
                self.warn(format!(
                    "tensor {:?} at offset {at} is not the member numpy reads under that name (duplicate or shadowing member names); not listed",
                    t.name
                ));
            }
        }
    }

    /// Checks the central directory and the end records after it against
    /// what the walk saw (see the module docs). Returns the directory as
    /// loaders see it: name hash -> local header offset of the last entry
    /// with that name.
    fn check_central(&self) -> Result<HashMap<u64, u64>, String> {
        let c = &self.central;
        let truncated = || "central directory entry is truncated".to_string();
        let mut dir = HashMap::new();
        let mut p = 0;
        let mut entries = 0u64;
        while c.get(p..p + 4) == Some(&CENTRAL[..]) {
            let fixed = c.get(p..p + 46).ok_or_else(truncated)?;
            let flags = u16_at(fixed, 8);
            let method = u16_at(fixed, 10);
            let nlen = usize::from(u16_at(fixed, 28));
            let xlen = usize::from(u16_at(fixed, 30));
            let clen = usize::from(u16_at(fixed, 32));
            let mut csize = u64::from(u32_at(fixed, 20));
            let mut usize_ = u64::from(u32_at(fixed, 24));
            let mut off = u64::from(u32_at(fixed, 42));
            let name = c.get(p + 46..p + 46 + nlen).ok_or_else(truncated)?;
            let extra = c
                .get(p + 46 + nlen..p + 46 + nlen + xlen)
                .ok_or_else(truncated)?;
            zip64_extra(extra, &mut usize_, &mut csize, Some(&mut off));
            let shown = crate::clip(&String::from_utf8_lossy(name), 256);
            let hash = name_hash(name);
            let Some(local) = self.locals.get(&off).filter(|l| l.name_hash == hash) else {
                return Err(format!(
                    "central directory entry {shown:?} points at offset {off}, where no local header of that name streamed past"
                ));
            };
            if (local.method, local.csize, local.usize_) != (method, csize, usize_)
                || (local.flags ^ flags) & ENCRYPTED != 0
            {
                return Err(format!(
                    "central directory entry {shown:?} (method {method}, {csize} bytes stored, {usize_} bytes, flags {flags:#06x}) disagrees with its local header (method {}, {} bytes stored, {} bytes, flags {:#06x}): loaders would read what was not scanned",
                    local.method, local.csize, local.usize_, local.flags
                ));
            }
            dir.insert(hash, off);
            entries += 1;
            p = p
                .checked_add(46 + nlen + xlen + clen)
                .ok_or_else(truncated)?;
        }
        let cd_size = p as u64;
        // Optional zip64 end record and locator, then the end record.
        let mut z64 = None;
        if c.get(p..p + 4) == Some(&EOCD64[..]) {
            let rec = c
                .get(p..p + 56)
                .ok_or("zip64 end of central directory record is truncated")?;
            z64 = Some((u64_at(rec, 32), u64_at(rec, 40), u64_at(rec, 48)));
            let len = usize::try_from(u64_at(rec, 4))
                .ok()
                .and_then(|l| l.checked_add(12 + p))
                .filter(|&end| end <= c.len())
                .ok_or("zip64 end of central directory record is truncated")?;
            p = len;
        }
        if c.get(p..p + 4) == Some(&EOCD64_LOC[..]) {
            p += 20;
        }
        let eocd = c
            .get(p..p + 22)
            .filter(|e| e[..4] == EOCD[..])
            .ok_or_else(|| {
                format!(
                    "no end of central directory record right after the central directory (at offset {})",
                    self.central_at + p as u64
                )
            })?;
        let mut n = u64::from(u16_at(eocd, 10));
        let mut size = u64::from(u32_at(eocd, 12));
        let mut off = u64::from(u32_at(eocd, 16));
        if let Some((zn, zsize, zoff)) = z64 {
            if n == 0xffff {
                n = zn;
            }
            if size == 0xffff_ffff {
                size = zsize;
            }
            if off == 0xffff_ffff {
                off = zoff;
            }
        }
        if (n, size, off) != (entries, cd_size, self.central_at) {
            return Err(format!(
                "end of central directory record describes {n} entries, {size} bytes at offset {off}, but the directory found has {entries} entries, {cd_size} bytes at offset {}",
                self.central_at
            ));
        }
        let comment_at = p + 22;
        let end = comment_at + usize::from(u16_at(eocd, 20));
        if end != c.len() {
            return Err(format!(
                "the end of central directory record at offset {} does not end the file ({} bytes follow where its comment says {})",
                self.central_at + p as u64,
                c.len() - comment_at,
                u16_at(eocd, 20)
            ));
        }
        if memchr::memmem::find(&c[comment_at..], EOCD).is_some() {
            return Err(
                "the archive comment holds another end of central directory record (loaders use the last one)"
                    .into(),
            );
        }
        Ok(dir)
    }
}

/// What member names say about an archive, gathered as they stream.
#[derive(Default, Debug)]
pub(crate) struct ZipKind {
    members: u64,
    /// `<dir>/data.pkl` (one level deep): a PyTorch checkpoint.
    torch_data: bool,
    /// `<dir>/code/...` or `<dir>/constants.pkl`: TorchScript.
    torchscript: bool,
    /// Every member is `*.npy`.
    all_npy: bool,
}

impl ZipKind {
    fn note(&mut self, name: &str) {
        self.all_npy = (self.members == 0 || self.all_npy) && name.ends_with(".npy");
        self.members += 1;
        if let Some((dir, rest)) = name.split_once('/') {
            if !dir.is_empty() {
                self.torch_data |= rest == "data.pkl";
                self.torchscript |= rest.starts_with("code/") || rest == "constants.pkl";
            }
        }
    }

    /// The archive's format.
    pub fn format(&self) -> crate::info::Format {
        use crate::info::Format;
        if self.torchscript {
            Format::Torchscript
        } else if self.torch_data {
            Format::PytorchZip
        } else if self.members > 0 && self.all_npy {
            Format::Npz
        } else {
            Format::Other
        }
    }
}
