//! TFLite: a FlatBuffer whose file identifier `TFL3` sits at offset 4.
//!
//! The root `Model` table is usually near the start of the file, with its
//! small vectors and strings right after it; some converters put the
//! vtable and vectors at the very end instead. The sniffer keeps a bounded
//! prefix and a bounded tail of the stream and reads the root table's
//! scalar fields and vector lengths from them when they lie inside;
//! anything elsewhere is simply left unknown.

use crate::info::TfliteHeader;

pub(crate) const IDENT: &[u8; 4] = b"TFL3";

/// The parts of the file kept: its first bytes and its last bytes.
pub(crate) struct Buf<'a> {
    pub prefix: &'a [u8],
    pub tail: &'a [u8],
    /// Absolute offset of `tail[0]`.
    pub tail_start: usize,
}

impl<'a> Buf<'a> {
    fn get(&self, at: usize, len: usize) -> Option<&'a [u8]> {
        let end = at.checked_add(len)?;
        if let Some(b) = self.prefix.get(at..end) {
            return Some(b);
        }
        let rel = at.checked_sub(self.tail_start)?;
        self.tail.get(rel..rel.checked_add(len)?)
    }
    fn u16(&self, at: usize) -> Option<u16> {
        Some(u16::from_le_bytes(self.get(at, 2)?.try_into().ok()?))
    }
    fn u32(&self, at: usize) -> Option<u32> {
        Some(u32::from_le_bytes(self.get(at, 4)?.try_into().ok()?))
    }
    fn i32(&self, at: usize) -> Option<i32> {
        self.u32(at).map(|v| v as i32)
    }

    /// Position of field `n`'s value within the table at `table`.
    fn field(&self, table: usize, n: usize) -> Option<usize> {
        let vt = (table as i64).checked_sub(i64::from(self.i32(table)?))?;
        let vt = usize::try_from(vt).ok()?;
        let vt_len = usize::from(self.u16(vt)?);
        let slot = 4 + 2 * n;
        if slot + 2 > vt_len {
            return None;
        }
        let off = usize::from(self.u16(vt + slot)?);
        (off != 0).then(|| table + off)
    }

    /// Follows a uoffset stored at `at`.
    fn deref(&self, at: usize) -> Option<usize> {
        at.checked_add(self.u32(at)? as usize)
    }

    fn vec_len(&self, table: usize, n: usize) -> Option<u32> {
        let v = self.deref(self.field(table, n)?)?;
        self.u32(v)
    }
}

/// The first place the root table points at that lies at or past the end of
/// the file (`total_len` bytes), by name: the file was cut short, or is
/// damaged. Only what the kept parts let it read is checked.
pub(crate) fn points_past_end(b: &Buf<'_>, total_len: u64) -> Option<(&'static str, u64)> {
    let root = b.u32(0)? as usize;
    let vt = (root as i64).checked_sub(i64::from(b.i32(root)?))?;
    if vt >= 0 && vt as u64 >= total_len {
        return Some(("vtable", vt as u64));
    }
    let fields = [
        (1, "operator_codes"),
        (2, "subgraphs"),
        (3, "description"),
        (4, "buffers"),
    ];
    fields.into_iter().find_map(|(n, name)| {
        let f = b.field(root, n)?;
        let target = f as u64 + u64::from(b.u32(f)?);
        (target >= total_len).then_some((name, target))
    })
}

/// Reads what it can of the Model table from the kept parts of the file.
pub(crate) fn parse(b: &Buf<'_>, max_string: usize) -> TfliteHeader {
    let Some(root) = b.u32(0).map(|r| r as usize) else {
        return TfliteHeader::default();
    };
    let description = b.field(root, 3).and_then(|f| b.deref(f)).and_then(|s| {
        let n = b.u32(s)? as usize;
        let bytes = b.get(s.checked_add(4)?, n)?;
        Some(crate::clip(&String::from_utf8_lossy(bytes), max_string))
    });
    TfliteHeader {
        version: b.field(root, 0).and_then(|f| b.u32(f)),
        operator_codes: b.vec_len(root, 1),
        subgraphs: b.vec_len(root, 2),
        description,
        buffers: b.vec_len(root, 4),
    }
}
