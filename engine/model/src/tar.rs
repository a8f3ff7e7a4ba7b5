//! Tar archives, walked the way Python's `tarfile` reads them, to find
//! legacy `torch.save` checkpoints.
//!
//! Before the zip format (PyTorch 1.6), `torch.save` could write a tar
//! archive with members `sys_info`, `pickle`, `storages` and `tensors`.
//! `torch.load` tries every plain file as such a tar first
//! (`tarfile.open(fileobj=f, mode="r:")`) and unpickles `storages` (a
//! count, then pickles interleaved with raw storage bytes), `tensors` (the
//! same with raw shape data) and `pickle`. Those members are not analysed:
//! a tar with any of them is an unsafe legacy checkpoint.
//!
//! The walk follows CPython's `tarfile` (read from 3.11; later versions
//! reject more malformed pax records, so they see no more members) so
//! that it sees the member names a loader sees: a header is valid when its checksum (octal,
//! or base-256, as `nti` reads it) equals the unsigned or the signed sum of
//! the block with the checksum field as spaces; the first all-zero or
//! invalid header ends the archive; data is skipped only for regular
//! members and unknown types; GNU long names (`L`, `K`), pax extended and
//! global headers (`x`, `X`, `g`: `path`, `size`, kept as `tarfile`
//! merges them) and old GNU sparse extension blocks are followed. Memory:
//! the current 512-byte block, a pax header's data (at most
//! [`MAX_PAX`]) and the pax values kept from global headers.
//!
//! Whatever the walk does not follow (a pax header over [`MAX_PAX`], GNU
//! sparse pax records together with a pax `size`, a size that sends
//! `tarfile` backwards) could hide a
//! legacy member: such an archive is unsafe too.

use crate::info::{Format, ModelInfo, PickleReport};

const BLOCK: usize = 512;
/// Largest pax extended header data kept (rounded up to whole blocks).
pub(crate) const MAX_PAX: u64 = 64 << 10;
/// The members `torch.serialization`'s legacy tar loader extracts.
const TORCH_MEMBERS: [&str; 4] = ["sys_info", "pickle", "storages", "tensors"];
/// Legacy members listed in a report.
const MAX_HITS: usize = 16;
/// Longest name in [`TORCH_MEMBERS`].
const MAX_COMP: usize = 8;

/// Why a legacy tar checkpoint is refused.
pub(crate) const TORCH_TAR_REASON: &str =
    "legacy torch tar checkpoint: pickles interleaved with raw data, not analysed";

/// The last path component of a name fed in pieces (up to its first NUL,
/// trailing slashes ignored): enough to tell whether it is one of
/// [`TORCH_MEMBERS`] however long the name is.
#[derive(Default)]
struct BaseName {
    comp: Vec<u8>,
    too_long: bool,
    slash: bool,
    ended: bool,
}

impl BaseName {
    fn of(name: &[u8]) -> Option<&'static str> {
        let mut b = BaseName::default();
        b.push(name);
        b.torch_member()
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.ended {
            return;
        }
        let bytes = match memchr::memchr(0, bytes) {
            Some(i) => {
                self.ended = true;
                &bytes[..i]
            }
            None => bytes,
        };
        for &b in bytes {
            if b == b'/' {
                self.slash = true;
                continue;
            }
            if self.slash {
                self.comp.clear();
                self.too_long = false;
                self.slash = false;
            }
            if self.comp.len() < MAX_COMP {
                self.comp.push(b);
            } else {
                self.too_long = true;
            }
        }
    }

    fn torch_member(&self) -> Option<&'static str> {
        if self.too_long {
            return None;
        }
        TORCH_MEMBERS
            .iter()
            .copied()
            .find(|n| n.as_bytes() == self.comp.as_slice())
    }
}

/// The pax keywords that change what the walk sees, as `tarfile` keeps
/// them (a later record replaces an earlier one).
#[derive(Clone, Default)]
struct Pax {
    path: Option<Vec<u8>>,
    size: Option<Vec<u8>>,
    sparse_name: Option<Vec<u8>>,
    /// Another `GNU.sparse.*` keyword: with `size`, `tarfile`'s data
    /// offset then depends on record order and sparse maps.
    sparse_other: bool,
}

impl Pax {
    fn set(&mut self, key: &[u8], value: &[u8]) {
        match key {
            b"path" => self.path = Some(value.to_vec()),
            b"size" => self.size = Some(value.to_vec()),
            b"GNU.sparse.name" => self.sparse_name = Some(value.to_vec()),
            k if k.starts_with(b"GNU.sparse.") => self.sparse_other = true,
            _ => {}
        }
    }
}

/// What an extension header chain (`L`, `K`, `x`, `X`, `g` before a
/// member) holds for the member that ends it.
#[derive(Default)]
struct Chain {
    /// A header of the chain was read.
    active: bool,
    /// The data size from the first pax header whose records (with the
    /// global ones) have `size`: `tarfile` applies the outermost last.
    size: Option<i128>,
    /// A legacy member name from a long name or a pax `path`.
    hit: Option<&'static str>,
}

enum Phase {
    /// Collecting a header block.
    Header,
    /// Collecting old GNU sparse extension blocks; then skipping the data.
    SparseExt {
        then: u64,
    },
    Skip(u64),
    /// A GNU long name (`L`, tracked) or long link name (`K`).
    LongName {
        left: u64,
        name: Option<BaseName>,
    },
    Pax {
        left: u64,
        global: bool,
        buf: Vec<u8>,
    },
    Done,
}

/// A legacy torch member found: its name and where its data starts.
pub(crate) struct TorchMember {
    pub name: &'static str,
    pub offset: u64,
}

/// The streaming tar walker. Fed every byte of the file from offset 0.
pub(crate) struct TarWalker {
    pos: u64,
    block: Vec<u8>,
    phase: Phase,
    /// Whether the first block is a valid header (`None` until it is read).
    is_tar: Option<bool>,
    chain: Chain,
    globals: Pax,
    hits: Vec<TorchMember>,
    /// Why the walk could not follow the archive as `tarfile` would.
    unfollowable: Option<String>,
}

impl Default for TarWalker {
    fn default() -> Self {
        TarWalker {
            pos: 0,
            block: Vec::with_capacity(BLOCK),
            phase: Phase::Header,
            is_tar: None,
            chain: Chain::default(),
            globals: Pax::default(),
            hits: Vec::new(),
            unfollowable: None,
        }
    }
}

impl TarWalker {
    /// True once the file is known not to be a tar archive.
    pub(crate) fn not_tar(&self) -> bool {
        self.is_tar == Some(false)
    }

    pub(crate) fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let n = match &mut self.phase {
                Phase::Done => return,
                Phase::Skip(left) => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    if *left == 0 {
                        self.phase = Phase::Header;
                    }
                    n
                }
                Phase::Header | Phase::SparseExt { .. } => {
                    let n = (BLOCK - self.block.len()).min(data.len());
                    self.block.extend_from_slice(&data[..n]);
                    n
                }
                Phase::LongName { left, name } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    if let Some(t) = name {
                        t.push(&data[..n]);
                    }
                    *left -= n as u64;
                    n
                }
                Phase::Pax { left, buf, .. } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    buf.extend_from_slice(&data[..n]);
                    *left -= n as u64;
                    n
                }
            };
            data = &data[n..];
            self.pos += n as u64;
            self.step();
        }
    }

    /// Acts on a completed block or extension data.
    fn step(&mut self) {
        match &mut self.phase {
            Phase::Header if self.block.len() == BLOCK => {
                let block = std::mem::take(&mut self.block);
                self.header(&block);
                self.block = block;
                self.block.clear();
            }
            Phase::SparseExt { then } if self.block.len() == BLOCK => {
                let more = self.block[504] != 0;
                let then = *then;
                self.block.clear();
                if !more {
                    self.phase = Self::skip(then);
                }
            }
            Phase::LongName { left: 0, name } => {
                if let Some(hit) = name.as_ref().and_then(BaseName::torch_member) {
                    self.chain.hit = Some(hit);
                }
                self.phase = Phase::Header;
            }
            Phase::Pax {
                left: 0,
                global,
                buf,
            } => {
                let (global, buf) = (*global, std::mem::take(buf));
                self.phase = Phase::Header;
                self.pax(global, &buf);
            }
            _ => {}
        }
    }

    fn skip(n: u64) -> Phase {
        if n == 0 {
            Phase::Header
        } else {
            Phase::Skip(n)
        }
    }

    fn stop(&mut self, unfollowable: Option<String>) {
        if self.unfollowable.is_none() {
            self.unfollowable = unfollowable;
        }
        self.phase = Phase::Done;
    }

    fn header(&mut self, block: &[u8]) {
        let first = self.is_tar.is_none();
        // `tarfile` ends the archive at the first all-zero or invalid
        // header (inside an extension chain it raises, and `torch.load`
        // then reads the file as a bare pickle, which the sniffer's other
        // walkers judge).
        let size = if block.iter().all(|&b| b == 0) || !checksum_ok(block) {
            None
        } else {
            nti(&block[124..136])
        };
        let Some(size) = size else {
            if first {
                self.is_tar = Some(false);
            }
            return self.stop(None);
        };
        self.is_tar = Some(true);
        let typeflag = block[156];
        match typeflag {
            b'L' | b'K' | b'x' | b'X' | b'g' => {
                self.chain.active = true;
                // A negative size makes `tarfile` read to the end of the
                // file and fail on the next header.
                if size < 0 {
                    return self.stop(None);
                }
                let left = block_len(size);
                self.phase = if matches!(typeflag, b'L' | b'K') {
                    Phase::LongName {
                        left,
                        name: (typeflag == b'L').then(BaseName::default),
                    }
                } else if left > MAX_PAX {
                    return self.stop(Some(format!(
                        "tar pax header of {size} bytes over the limit of {MAX_PAX}: the rest of the archive is not walked"
                    )));
                } else {
                    Phase::Pax {
                        left,
                        global: typeflag == b'g',
                        buf: Vec::new(),
                    }
                };
                // An empty long name or pax header: the next header follows.
                self.step();
            }
            _ => self.member(block, typeflag, size),
        }
    }

    fn member(&mut self, block: &[u8], typeflag: u8, size: i128) {
        let name = nts(&block[..100]);
        let mut ty = typeflag;
        // Old V7 tar: a regular file whose name ends in `/` is a directory.
        if ty == 0 && name.ends_with(b"/") {
            ty = b'5';
        }
        let prefix = nts(&block[345..500]);
        let full: Vec<u8> = if !prefix.is_empty() && ty != b'S' {
            [prefix, b"/", name].concat()
        } else {
            name.to_vec()
        };
        let chain = std::mem::take(&mut self.chain);
        let hit = BaseName::of(&full)
            .or(chain.hit)
            .or_else(|| self.globals.path.as_deref().and_then(BaseName::of))
            .or_else(|| self.globals.sparse_name.as_deref().and_then(BaseName::of));
        if let Some(name) = hit {
            if self.hits.len() < MAX_HITS {
                self.hits.push(TorchMember {
                    name,
                    offset: self.pos,
                });
            }
        }
        let regular = matches!(ty, b'0' | 0 | b'7' | b'S');
        let supported = regular || matches!(ty, b'1'..=b'6');
        let size = chain.size.unwrap_or(size);
        let data = if regular || !supported {
            if size < 0 {
                return self.stop(Some(format!(
                    "tar member with negative size {size}: the rest of the archive is not walked"
                )));
            }
            block_len(size)
        } else {
            0
        };
        self.phase = if ty == b'S' && block[482] != 0 {
            Phase::SparseExt { then: data }
        } else {
            Self::skip(data)
        };
    }

    /// Applies a pax header's records as `tarfile` does: a global header
    /// updates the global records, an extended one applies its records
    /// merged over them to the member that ends the chain.
    fn pax(&mut self, global: bool, buf: &[u8]) {
        let Some(records) = pax_records(buf) else {
            return self.stop(None);
        };
        let mut d = if global {
            std::mem::take(&mut self.globals)
        } else {
            self.globals.clone()
        };
        for (k, v) in records {
            d.set(k, v);
        }
        if global {
            // Without an extended header `tarfile` never recomputes the
            // data offset from pax records.
            self.globals = d;
            return;
        }
        if d.sparse_other && d.size.is_some() {
            return self.stop(Some(
                "tar archive with GNU sparse pax records and a pax size: the rest of the archive is not walked"
                    .into(),
            ));
        }
        for name in [&d.path, &d.sparse_name].into_iter().flatten() {
            if let Some(hit) = BaseName::of(name) {
                self.chain.hit = Some(hit);
            }
        }
        if self.chain.size.is_none() {
            if let Some(v) = &d.size {
                match pax_size(v) {
                    Ok(n) => self.chain.size = Some(n),
                    Err(e) => self.stop(Some(format!(
                        "tar pax size {e}: the rest of the archive is not walked"
                    ))),
                }
            }
        }
    }

    /// Updates `info` (the other walkers' report) with what the walk
    /// found; `extra_unsafe` as in [`crate::Sniffer::finish`].
    pub(crate) fn apply(self, info: &mut ModelInfo, extra_unsafe: &mut Option<String>) {
        if self.is_tar != Some(true) {
            return;
        }
        if !self.hits.is_empty() {
            let mut i = ModelInfo::empty(Format::Pickle, info.size);
            i.variant = Some("torch_legacy_tar".into());
            i.reason = Some(TORCH_TAR_REASON.into());
            i.pickles = self
                .hits
                .iter()
                .map(|h| PickleReport {
                    location: h.name.into(),
                    offset: Some(h.offset),
                    protocol: None,
                    bytes: 0,
                    opcodes: 0,
                    complete: false,
                    reason: Some(TORCH_TAR_REASON.into()),
                    imports: Vec::new(),
                })
                .collect();
            if let Some(r) = &self.unfollowable {
                i.warnings.push(r.clone());
            }
            *info = i;
            *extra_unsafe = None;
            return;
        }
        if let Some(r) = self.unfollowable {
            extra_unsafe.get_or_insert(r);
            return;
        }
        if info.format == Format::Other && info.reason.is_none() {
            info.reason = Some("tar archive without legacy torch checkpoint members".into());
        }
    }
}

/// Bytes up to the first NUL, as `tarfile`'s `nts`.
fn nts(field: &[u8]) -> &[u8] {
    memchr::memchr(0, field).map_or(field, |i| &field[..i])
}

/// A size rounded up to whole blocks (saturating: a size past any file
/// ends the walk as a truncated archive).
fn block_len(size: i128) -> u64 {
    let blocks = size.saturating_add(BLOCK as i128 - 1) / BLOCK as i128;
    u64::try_from(blocks.saturating_mul(BLOCK as i128)).unwrap_or(u64::MAX)
}

/// The header checksum check of `tarfile`'s `frombuf`.
fn checksum_ok(block: &[u8]) -> bool {
    let Some(chk) = nti(&block[148..156]) else {
        return false;
    };
    let rest = block[..148].iter().chain(&block[156..]);
    let (mut unsigned, mut signed) = (256i128, 256i128);
    for &b in rest {
        unsigned += i128::from(b);
        signed += i128::from(b as i8);
    }
    chk == unsigned || chk == signed
}

/// A numeric header field as `tarfile`'s `nti` reads it: base-256 when the
/// first byte is 0x80 (positive) or 0xff (negative), else octal text up to
/// the first NUL as Python's `int(s.strip() or "0", 8)`. `None` where
/// `tarfile` raises.
fn nti(field: &[u8]) -> Option<i128> {
    match field.first() {
        Some(&(0x80 | 0xff)) => {
            let mut n: i128 = 0;
            for &b in &field[1..] {
                n = n.saturating_mul(256).saturating_add(i128::from(b));
            }
            if field[0] == 0xff {
                let span = 1i128 << (8 * (field.len() as u32 - 1)).min(120);
                n -= span;
            }
            Some(n)
        }
        _ => {
            let s = nts(field);
            if !s.is_ascii() {
                return None;
            }
            let s = py_strip(s);
            if s.is_empty() {
                return Some(0);
            }
            py_int(s, 8)
        }
    }
}

/// A pax `size` value as `tarfile` applies it: Python's `int(value)`, 0
/// when that fails. Values `int` might read differently (non-ASCII
/// digits) and negative sizes are errors.
fn pax_size(v: &[u8]) -> Result<i128, String> {
    if !v.is_ascii() {
        return Err("with non-ASCII bytes".into());
    }
    match py_int(py_strip(v), 10) {
        Some(n) if n < 0 => Err(format!("{n} is negative")),
        Some(n) => Ok(n),
        None => Ok(0),
    }
}

/// Python's ASCII whitespace (`str.strip`, `int`).
fn py_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r' | 0x1c..=0x1f)
}

fn py_strip(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if !py_space(*first) {
            break;
        }
        s = rest;
    }
    while let [rest @ .., last] = s {
        if !py_space(*last) {
            break;
        }
        s = rest;
    }
    s
}

/// Python's `int(s, base)` for ASCII `s` already stripped, base 8 or 10:
/// a sign, for base 8 an optional `0o` prefix, digits with single
/// underscores between them (and after the prefix). Saturates.
fn py_int(s: &[u8], base: u8) -> Option<i128> {
    let (neg, mut s) = match s.split_first() {
        Some((b'-', r)) => (true, r),
        Some((b'+', r)) => (false, r),
        _ => (false, s),
    };
    let mut underscore_ok = false;
    if base == 8 && s.len() >= 2 && s[0] == b'0' && matches!(s[1], b'o' | b'O') {
        s = &s[2..];
        underscore_ok = true;
    }
    let mut n: i128 = 0;
    let mut digits = 0;
    let mut after_underscore = false;
    for &c in s {
        if c == b'_' {
            if after_underscore || !(underscore_ok || digits > 0) {
                return None;
            }
            after_underscore = true;
            continue;
        }
        let d = match c {
            b'0'..=b'9' if c - b'0' < base => c - b'0',
            _ => return None,
        };
        n = n
            .saturating_mul(i128::from(base))
            .saturating_add(i128::from(d));
        digits += 1;
        after_underscore = false;
    }
    if digits == 0 || after_underscore {
        return None;
    }
    Some(if neg { -n } else { n })
}

/// The records of a pax header's data as CPython 3.11's `_proc_pax`
/// parses them: from offset 0, `(\d+) ([^=]+)=` at each position, the
/// value up to the record's length minus its newline, the next record at
/// the position plus the length; the first position that does not match
/// ends the list. `None` for a zero length (`tarfile` raises). Later
/// CPython versions check the framing and raise where this goes on: they
/// see no more members than this walk.
fn pax_records(buf: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos < buf.len() {
        let digits = buf[pos..].iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 || buf.get(pos + digits) != Some(&b' ') {
            break;
        }
        let key_start = pos + digits + 1;
        let Some(eq) = memchr::memchr(b'=', &buf[key_start..]) else {
            break;
        };
        if eq == 0 {
            break;
        }
        let key_end = key_start + eq;
        let mut length = 0usize;
        for &d in &buf[pos..pos + digits] {
            length = length
                .saturating_mul(10)
                .saturating_add(usize::from(d - b'0'));
        }
        if length == 0 {
            return None;
        }
        let start = (key_end + 1).min(buf.len());
        let stop = (pos.saturating_add(length) - 1).min(buf.len());
        let value = if start < stop {
            &buf[start..stop]
        } else {
            &[][..]
        };
        out.push((&buf[key_start..key_end], value));
        pos = pos.saturating_add(length);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_int_rules() {
        assert_eq!(nti(b"0000644\0"), Some(0o644));
        assert_eq!(nti(b" 17 \0\0\0\0"), Some(0o17));
        assert_eq!(nti(b"\0\0\0\0\0\0\0\0"), Some(0));
        assert_eq!(nti(b"0o1_7\0\0\0"), Some(0o17));
        assert_eq!(nti(b"1__7\0\0\0\0"), None);
        assert_eq!(nti(b"8\0\0\0\0\0\0\0"), None);
        assert_eq!(nti(b"\x80\0\0\0\0\0\0\x01"), Some(1));
        assert_eq!(nti(b"\xff\xff\xff\xff\xff\xff\xff\xff"), Some(-1));
        assert_eq!(pax_size(b" 1_000\n"), Ok(1000));
        assert_eq!(pax_size(b"x"), Ok(0));
        assert!(pax_size(b"-5").is_err());
    }

    #[test]
    fn pax_records_like_cpython() {
        let r = pax_records(b"12 path=abc\n11 size=42\n\0\0\0").unwrap_or_default();
        assert_eq!(r, vec![(&b"path"[..], &b"abc"[..]), (b"size", b"42")]);
        assert!(pax_records(b"0 path=x\n").is_none());
    }

    #[test]
    fn basename_of_long_names() {
        assert_eq!(BaseName::of(b"./storages"), Some("storages"));
        assert_eq!(BaseName::of(b"a/b/pickle//"), Some("pickle"));
        assert_eq!(BaseName::of(b"storagesx"), None);
        assert_eq!(BaseName::of(b"tensors\0junk"), Some("tensors"));
    }
}
