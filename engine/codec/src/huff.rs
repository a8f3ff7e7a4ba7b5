//! Canonical, length-limited Huffman coding of byte planes, four interleaved
//! streams, table-driven decoding (several symbols per table look-up).
//!
//! The byte format is specified in `FORMAT.md` ("Huffman plane payload").
//! Bit order is LSB-first: the first bit of a stream is bit 0 of its first
//! byte, and each code is written most-significant code bit first (as in
//! DEFLATE), so the encoder emits bit-reversed canonical codes.

use crate::CodecError;

/// Longest code length, in bits. Also the decoder's table index width.
pub const MAX_LEN: u32 = 11;
const TABLE_SIZE: usize = 1 << MAX_LEN;
const TABLE_MASK: u64 = (TABLE_SIZE as u64) - 1;
/// Number of interleaved streams a plane is split into.
pub const STREAMS: usize = 4;
/// Bytes of the three stream-length fields.
const JUMP_LEN: usize = 4 * (STREAMS - 1);

/// Segment `k` of `n` symbols: `[min(k*s, n), min((k+1)*s, n))` with
/// `s = ceil(n / 4)`.
#[inline]
pub fn segment(n: usize, k: usize) -> (usize, usize) {
    let s = n.div_ceil(STREAMS);
    ((k * s).min(n), ((k + 1) * s).min(n))
}

/// Histogram of `data` (four sub-histograms to avoid store-to-load stalls).
pub fn histogram(data: &[u8], out: &mut [u32; 256]) {
    let mut h = [[0u32; 256]; 4];
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h[0][c[0] as usize] += 1;
        h[1][c[1] as usize] += 1;
        h[2][c[2] as usize] += 1;
        h[3][c[3] as usize] += 1;
    }
    for &b in chunks.remainder() {
        h[0][b as usize] += 1;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = h[0][i] + h[1][i] + h[2][i] + h[3][i];
    }
}

/// Code lengths (0 = symbol absent) of a length-limited Huffman code for
/// `counts`. Returns the number of symbols present. When two or more symbols
/// are present the lengths form a complete prefix code (Kraft sum exactly 1)
/// with no length above [`MAX_LEN`].
pub fn code_lengths(counts: &[u32; 256], lens: &mut [u8; 256]) -> usize {
    *lens = [0; 256];
    // (count, symbol), ascending by count then symbol: deterministic.
    let mut syms: Vec<(u32, u8)> = counts
        .iter()
        .enumerate()
        .filter(|(_, &c)| c != 0)
        .map(|(s, &c)| (c, s as u8))
        .collect();
    let n = syms.len();
    if n < 2 {
        if let Some(&(_, s)) = syms.first() {
            lens[s as usize] = 1;
        }
        return n;
    }
    syms.sort_unstable();
    // Moffat & Katajainen's in-place minimum-redundancy code calculation.
    let mut a: Vec<u32> = syms.iter().map(|&(c, _)| c).collect();
    {
        let (mut s, mut r) = (0usize, 0usize);
        for t in 0..n - 1 {
            let mut sum;
            if s >= n || (r < t && a[r] < a[s]) {
                sum = a[r];
                a[r] = t as u32;
                r += 1;
            } else {
                sum = a[s];
                s += 1;
            }
            if s >= n || (r < t && a[r] < a[s]) {
                sum += a[r];
                a[r] = t as u32;
                r += 1;
            } else {
                sum += a[s];
                s += 1;
            }
            a[t] = sum;
        }
        a[n - 2] = 0;
        for t in (0..n - 2).rev() {
            a[t] = a[a[t] as usize] + 1;
        }
        let (mut avail, mut used, mut depth) = (1i64, 0i64, 0u32);
        let mut r = n as isize - 2;
        let mut next = n as isize - 1;
        while avail > 0 {
            while r >= 0 && a[r as usize] == depth {
                used += 1;
                r -= 1;
            }
            while avail > used {
                a[next as usize] = depth;
                next -= 1;
                avail -= 1;
            }
            avail = 2 * used;
            depth += 1;
            used = 0;
        }
    }
    // a[i] is now the length of syms[i] (ascending count => non-increasing
    // length). Limit to MAX_LEN keeping the code complete.
    let target: u64 = 1 << MAX_LEN;
    let unit = |l: u32| -> u64 { 1u64 << (MAX_LEN - l) };
    for l in a.iter_mut() {
        if *l > MAX_LEN {
            *l = MAX_LEN;
        }
    }
    let mut kraft: u64 = a.iter().map(|&l| unit(l)).sum();
    while kraft > target {
        // Lengthen the rarest symbol among those with the longest length
        // below MAX_LEN (the cheapest reduction of the Kraft sum).
        let best = (0..n)
            .filter(|&i| a[i] < MAX_LEN)
            .max_by_key(|&i| (a[i], std::cmp::Reverse(i)))
            .expect("an over-full code has a length below the limit");
        kraft -= unit(a[best] + 1);
        a[best] += 1;
    }
    while kraft < target {
        // Shorten the most frequent symbol whose shortening still fits.
        let gap = target - kraft;
        let best = (0..n)
            .rev()
            .find(|&i| a[i] > 1 && unit(a[i]) <= gap)
            .expect("an incomplete code has a symbol that can be shortened");
        kraft += unit(a[best]);
        a[best] -= 1;
    }
    for (i, &(_, s)) in syms.iter().enumerate() {
        lens[s as usize] = a[i] as u8;
    }
    n
}

/// Canonical codes (as in DEFLATE) for `lens`, bit-reversed for LSB-first
/// output. Entry: `reversed_code | len << 16`.
fn encode_table(lens: &[u8; 256]) -> [u32; 256] {
    let mut bl_count = [0u32; MAX_LEN as usize + 1];
    for &l in lens.iter() {
        bl_count[l as usize] += 1;
    }
    bl_count[0] = 0;
    let mut next = [0u32; MAX_LEN as usize + 2];
    let mut code = 0u32;
    for l in 1..=MAX_LEN as usize {
        code = (code + bl_count[l - 1]) << 1;
        next[l] = code;
    }
    let mut t = [0u32; 256];
    for s in 0..256 {
        let l = lens[s] as u32;
        if l != 0 {
            let c = next[l as usize];
            next[l as usize] += 1;
            t[s] = (c.reverse_bits() >> (32 - l)) | (l << 16);
        }
    }
    t
}

/// Exact payload size of [`encode`] for a plane with histogram `counts`
/// and lengths `lens` (upper bound: per-stream padding counted as 1 byte).
pub fn payload_size_bound(counts: &[u32; 256], lens: &[u8; 256]) -> usize {
    let bits: u64 = counts
        .iter()
        .zip(lens.iter())
        .map(|(&c, &l)| c as u64 * l as u64)
        .sum();
    table_desc_len(lens) + JUMP_LEN + (bits as usize).div_ceil(8) + STREAMS
}

fn table_desc_len(lens: &[u8; 256]) -> usize {
    let first = lens.iter().position(|&l| l != 0).unwrap_or(0);
    let last = lens.iter().rposition(|&l| l != 0).unwrap_or(0);
    2 + (last - first + 1).div_ceil(2)
}

/// Reusable encoder state: the two-symbol code table.
#[derive(Default)]
pub struct EncodeTables {
    /// Entry for the symbol pair `(a, b)` at `a | b << 8`: `a`'s code bits
    /// then `b`'s (LSB-first) in bits 0..22, their total length from bit 24.
    /// Only pairs of symbols present in the current plane are valid.
    pairs: Vec<u32>,
}

/// Alphabets of up to this many symbols are coded two symbols per table
/// look-up (byte-plane exponents: a few dozen). Building the pair table
/// costs one entry per pair of present symbols, which for larger alphabets
/// (int8 weights: all 256) outweighs what it saves.
const PAIR_MAX_SYMBOLS: usize = 64;

impl EncodeTables {
    /// Fills the pair entries of the symbols `present` from `table`.
    fn build(&mut self, table: &[u32; 256], present: &[u8]) -> &[u32; 1 << 16] {
        if self.pairs.len() != 1 << 16 {
            self.pairs = vec![0; 1 << 16];
        }
        for &a in present {
            let ea = table[a as usize];
            let (ca, la) = (ea & 0xFFFF, ea >> 16);
            let row = &mut self.pairs[(a as usize)..];
            for &b in present {
                let eb = table[b as usize];
                let (cb, lb) = (eb & 0xFFFF, eb >> 16);
                row[(b as usize) << 8] = (ca | cb << la) | (la + lb) << 24;
            }
        }
        self.pairs
            .as_slice()
            .try_into()
            .expect("the pair table has 65536 entries")
    }
}

/// Appends the Huffman payload of `plane` (table description, stream
/// lengths, four streams) to `out`. `lens` must come from [`code_lengths`]
/// with at least two symbols, for a histogram covering every byte of `plane`.
pub fn encode(plane: &[u8], lens: &[u8; 256], tables: &mut EncodeTables, out: &mut Vec<u8>) {
    let first = lens.iter().position(|&l| l != 0).unwrap_or(0);
    let last = lens.iter().rposition(|&l| l != 0).unwrap_or(0);
    out.push(first as u8);
    out.push(last as u8);
    for pair in lens[first..=last].chunks(2) {
        let hi = pair.get(1).copied().unwrap_or(0);
        out.push(pair[0] | (hi << 4));
    }
    let table = encode_table(lens);
    let mut present = [0u8; 256];
    let mut count = 0;
    for (s, &l) in lens.iter().enumerate() {
        if l != 0 {
            present[count] = s as u8;
            count += 1;
        }
    }
    let pairs = (count <= PAIR_MAX_SYMBOLS).then(|| tables.build(&table, &present[..count]));
    let jump = out.len();
    out.extend_from_slice(&[0u8; JUMP_LEN]);
    let n = plane.len();
    for k in 0..STREAMS {
        let (a, b) = segment(n, k);
        let start = out.len();
        encode_stream(&plane[a..b], &table, pairs, out);
        if k < STREAMS - 1 {
            let len = (out.len() - start) as u32;
            out[jump + 4 * k..jump + 4 * k + 4].copy_from_slice(&len.to_le_bytes());
        }
    }
}

/// One stream's bit accumulator: codes are added LSB-first, and whole
/// bytes are stored with one 8-byte write.
struct Bits<'a> {
    buf: &'a mut [u8],
    pos: usize,
    bits: u64,
    n: u32,
}

impl Bits<'_> {
    #[inline(always)]
    fn put(&mut self, code: u64, len: u32) {
        self.bits |= code << self.n;
        self.n += len;
    }

    #[inline(always)]
    fn flush(&mut self) {
        self.buf[self.pos..self.pos + 8].copy_from_slice(&self.bits.to_le_bytes());
        self.pos += (self.n >> 3) as usize;
        self.bits >>= self.n & !7;
        self.n &= 7;
    }
}

/// Appends one stream's codes for `syms`: two symbols per look-up from
/// `pairs` when given (same output), else one from `table`.
fn encode_stream(
    syms: &[u8],
    table: &[u32; 256],
    pairs: Option<&[u32; 1 << 16]>,
    out: &mut Vec<u8>,
) {
    let start = out.len();
    // Worst case MAX_LEN bits per symbol, plus 8 bytes for the last
    // whole-word store.
    let max = (syms.len() * MAX_LEN as usize).div_ceil(8) + 8;
    out.resize(start + max, 0);
    let mut w = Bits {
        buf: &mut out[start..],
        pos: 0,
        bits: 0,
        n: 0,
    };
    let one = |w: &mut Bits, s: u8| {
        let e = table[s as usize];
        w.put((e & 0xFFFF) as u64, e >> 16);
    };
    let rest = match pairs {
        Some(pairs) => {
            // Two pairs (at most 44 bits) fit above the at most 7 bits
            // left over.
            let (quads, rest) = syms.as_chunks::<4>();
            for &[a, b, c, d] in quads {
                for e in [
                    pairs[u16::from_le_bytes([a, b]) as usize],
                    pairs[u16::from_le_bytes([c, d]) as usize],
                ] {
                    w.put((e & 0xFF_FFFF) as u64, e >> 24);
                }
                w.flush();
            }
            rest
        }
        None => {
            // 5 codes of at most 11 bits fit above the at most 7 bits left
            // over.
            let (groups, rest) = syms.as_chunks::<5>();
            for g in groups {
                for &s in g {
                    one(&mut w, s);
                }
                w.flush();
            }
            rest
        }
    };
    // At most 4 codes: they fit with what is left over.
    for &s in rest {
        one(&mut w, s);
    }
    w.buf[w.pos..w.pos + 8].copy_from_slice(&w.bits.to_le_bytes());
    let len = w.pos + (w.n as usize).div_ceil(8);
    out.truncate(start + len);
}

/// Decoding tables for one code, reusable across planes.
pub struct DecodeTables {
    /// Single symbol: `symbol | len << 8`, indexed by the next 11 bits.
    single: Vec<u16>,
    /// Up to three symbols: bytes 0..=2 the symbols, bits 24..=27 the total
    /// length, bits 28..=29 the number of symbols.
    multi: Vec<u32>,
    /// The code lengths the tables were last built for (a cache key).
    lens: [u8; 256],
    valid: bool,
    /// Whether codes are long enough (mean 6 bits or more: int8 weights at
    /// ~7) that a look-up rarely yields more than one symbol: the fast loop
    /// then decodes one symbol per look-up from `single`, with fewer
    /// operations each.
    single_mode: bool,
}

impl Default for DecodeTables {
    fn default() -> Self {
        DecodeTables {
            single: vec![0; TABLE_SIZE],
            multi: vec![0; TABLE_SIZE],
            lens: [0; 256],
            valid: false,
            single_mode: false,
        }
    }
}

impl DecodeTables {
    /// Builds the tables for `lens` (which must form a complete code with
    /// lengths at most [`MAX_LEN`]); reuses them when unchanged.
    fn build(&mut self, lens: &[u8; 256]) {
        if self.valid && self.lens == *lens {
            return;
        }
        let enc = encode_table(lens);
        for (s, &e) in enc.iter().enumerate() {
            let l = e >> 16;
            if l == 0 {
                continue;
            }
            let code = (e & 0xFFFF) as usize;
            let entry = s as u16 | (l as u16) << 8;
            let step = 1usize << l;
            let mut i = code;
            while i < TABLE_SIZE {
                self.single[i] = entry;
                i += step;
            }
        }
        let single = &self.single;
        for (i, m) in self.multi.iter_mut().enumerate() {
            let e0 = single[i] as u32;
            let mut bits = e0 >> 8;
            let mut syms = e0 & 0xFF;
            let mut count = 1u32;
            let e1 = single[i >> bits] as u32;
            let l1 = e1 >> 8;
            if bits + l1 <= MAX_LEN {
                syms |= (e1 & 0xFF) << 8;
                let e2 = single[i >> (bits + l1)] as u32;
                bits += l1;
                count = 2;
                let l2 = e2 >> 8;
                if bits + l2 <= MAX_LEN {
                    syms |= (e2 & 0xFF) << 16;
                    bits += l2;
                    count = 3;
                }
            }
            *m = syms | bits << 24 | count << 28;
        }
        self.lens = *lens;
        self.valid = true;
        // The code's own idea of the mean length: sum of l * 2^-l.
        let mean: u64 = lens
            .iter()
            .filter(|&&l| l != 0)
            .map(|&l| (l as u64) << (MAX_LEN - l as u32))
            .sum();
        self.single_mode = mean >= SINGLE_MODE_MEAN_BITS * TABLE_SIZE as u64;
    }
}

/// Mean code length (bits, under the code's implied distribution) from
/// which the one-symbol fast loop is used.
const SINGLE_MODE_MEAN_BITS: u64 = 6;

/// Reads the table description at the start of `payload`: fills `lens`,
/// checks the code is canonical-valid (complete, lengths ≤ 11, first and
/// last listed symbols present) and returns the bytes consumed.
fn read_table(payload: &[u8], lens: &mut [u8; 256]) -> Result<usize, CodecError> {
    let (&first, &last) = match payload {
        [a, b, ..] => (a, b),
        _ => return Err(CodecError::Truncated),
    };
    if last <= first {
        return Err(CodecError::Corrupt(
            "huffman table: last symbol not above first",
        ));
    }
    let count = (last - first) as usize + 1;
    let nbytes = count.div_ceil(2);
    let desc = payload.get(2..2 + nbytes).ok_or(CodecError::Truncated)?;
    *lens = [0; 256];
    for i in 0..count {
        let b = desc[i / 2];
        lens[first as usize + i] = if i % 2 == 0 { b & 15 } else { b >> 4 };
    }
    if count % 2 == 1 && desc[nbytes - 1] >> 4 != 0 {
        return Err(CodecError::Corrupt(
            "huffman table: padding nibble not zero",
        ));
    }
    if lens[first as usize] == 0 || lens[last as usize] == 0 {
        return Err(CodecError::Corrupt(
            "huffman table: first or last symbol absent",
        ));
    }
    let mut kraft = 0u64;
    for &l in lens.iter() {
        if l as u32 > MAX_LEN {
            return Err(CodecError::Corrupt("huffman table: code length above 11"));
        }
        if l != 0 {
            kraft += 1 << (MAX_LEN - l as u32);
        }
    }
    if kraft != TABLE_SIZE as u64 {
        return Err(CodecError::Corrupt("huffman table: code not complete"));
    }
    Ok(2 + nbytes)
}

/// The 64 bits of `payload` starting at bit `pos` (LSB-first). Needs
/// `pos / 8 + 8 <= payload.len()`; returns zeros otherwise (never reached
/// by the fast loop, whose bounds are computed up front).
#[inline(always)]
fn peek_fast(payload: &[u8], pos: usize) -> u64 {
    let at = pos >> 3;
    match payload.get(at..at + 8) {
        Some(w) => u64::from_le_bytes(w.try_into().unwrap_or([0; 8])) >> (pos & 7),
        None => 0,
    }
}

/// The next 57 or more bits at bit `pos` of the stream ending at byte
/// `end`, reading zeros past its end.
fn peek_careful(payload: &[u8], end: usize, pos: usize) -> u64 {
    let at = pos >> 3;
    let mut w = [0u8; 8];
    for (i, b) in w.iter_mut().enumerate() {
        if at + i < end {
            *b = payload[at + i];
        }
    }
    u64::from_le_bytes(w) >> (pos & 7)
}

/// Rounds of the fast loop that stay within a stream's bytes and its
/// output segment: each round reads 8 bytes at the current position and
/// consumes at most 55 bits, and writes at most 16 bytes and advances at
/// most 15.
#[inline]
fn safe_rounds(bitpos: usize, end: usize, o: usize, oend: usize) -> usize {
    let end_bits = end * 8;
    let by_input = if end_bits >= bitpos + 64 {
        (end_bits - 64 - bitpos) / 55 + 1
    } else {
        0
    };
    let by_output = if oend >= o + 16 {
        (oend - o - 16) / 15 + 1
    } else {
        0
    };
    by_input.min(by_output)
}

/// Rounds of the one-symbol fast loop that stay within a stream's bytes
/// and its output segment: each round reads 8 bytes at the current
/// position, consumes at most 55 bits and writes exactly 5 bytes.
#[inline]
fn safe_rounds_single(bitpos: usize, end: usize, o: usize, oend: usize) -> usize {
    let end_bits = end * 8;
    let by_input = if end_bits >= bitpos + 64 {
        (end_bits - 64 - bitpos) / 55 + 1
    } else {
        0
    };
    by_input.min(oend.saturating_sub(o) / 5)
}

/// The one-symbol fast loop (see [`DecodeTables::single_mode`]): rounds of
/// one 64-bit load and 5 look-ups per stream, the four streams
/// interleaved; returns the streams' bit and output positions after it.
#[allow(clippy::type_complexity)]
fn fast_single(
    payload: &[u8],
    single: &[u16; TABLE_SIZE],
    segs: [&mut [u8]; STREAMS],
    pos: [usize; STREAMS],
    op: [usize; STREAMS],
    end: [usize; STREAMS],
) -> ([usize; STREAMS], [usize; STREAMS]) {
    let [s0, s1, s2, s3] = segs;
    let [mut b0, mut b1, mut b2, mut b3] = pos;
    let [mut o0, mut o1, mut o2, mut o3] = op;
    loop {
        let rounds = safe_rounds_single(b0, end[0], o0, s0.len())
            .min(safe_rounds_single(b1, end[1], o1, s1.len()))
            .min(safe_rounds_single(b2, end[2], o2, s2.len()))
            .min(safe_rounds_single(b3, end[3], o3, s3.len()));
        if rounds == 0 {
            break;
        }
        for _ in 0..rounds {
            fn window(s: &mut [u8], o: usize) -> Option<&mut [u8; 5]> {
                s.get_mut(o..o + 5)?.try_into().ok()
            }
            let (Some(d0), Some(d1), Some(d2), Some(d3)) = (
                window(s0, o0),
                window(s1, o1),
                window(s2, o2),
                window(s3, o3),
            ) else {
                break;
            };
            let mut w = [
                peek_fast(payload, b0),
                peek_fast(payload, b1),
                peek_fast(payload, b2),
                peek_fast(payload, b3),
            ];
            let mut used = [0usize; 4];
            let d: [&mut [u8; 5]; 4] = [d0, d1, d2, d3];
            // Position-major, stream-minor: the four streams' look-ups are
            // independent, so they overlap.
            #[allow(clippy::needless_range_loop)]
            for j in 0..5 {
                for k in 0..4 {
                    let e = single[(w[k] & TABLE_MASK) as usize];
                    d[k][j] = e as u8;
                    let l = e >> 8;
                    w[k] >>= l;
                    used[k] += l as usize;
                }
            }
            b0 += used[0];
            b1 += used[1];
            b2 += used[2];
            b3 += used[3];
            o0 += 5;
            o1 += 5;
            o2 += 5;
            o3 += 5;
        }
    }
    ([b0, b1, b2, b3], [o0, o1, o2, o3])
}

/// Decodes a Huffman plane payload into `out` (whose length is the number
/// of symbols). `payload` must be exactly the payload (its length given by
/// the enclosing plane record).
pub fn decode(payload: &[u8], tables: &mut DecodeTables, out: &mut [u8]) -> Result<(), CodecError> {
    let mut lens = [0u8; 256];
    let tlen = read_table(payload, &mut lens)?;
    let jump = payload
        .get(tlen..tlen + JUMP_LEN)
        .ok_or(CodecError::Truncated)?;
    let mut sizes = [0usize; STREAMS];
    let mut total = 0usize;
    for k in 0..STREAMS - 1 {
        let v = u32::from_le_bytes([
            jump[4 * k],
            jump[4 * k + 1],
            jump[4 * k + 2],
            jump[4 * k + 3],
        ]);
        sizes[k] = v as usize;
        total = total.checked_add(v as usize).ok_or(CodecError::Truncated)?;
    }
    let data_start = tlen + JUMP_LEN;
    let avail = payload.len() - data_start;
    if total > avail {
        return Err(CodecError::Corrupt(
            "huffman stream lengths exceed the payload",
        ));
    }
    sizes[STREAMS - 1] = avail - total;
    tables.build(&lens);

    let n = out.len();
    // Per stream: bit position in `payload`, its end byte, output position
    // and output end.
    let mut pos = [0usize; STREAMS];
    let mut end = [0usize; STREAMS];
    let mut op = [0usize; STREAMS];
    let mut oend = [0usize; STREAMS];
    let mut p = data_start;
    for k in 0..STREAMS {
        pos[k] = p * 8;
        p += sizes[k];
        end[k] = p;
        (op[k], oend[k]) = segment(n, k);
    }

    if tables.single_mode {
        let single: &[u16; TABLE_SIZE] = tables.single[..]
            .try_into()
            .map_err(|_| CodecError::Corrupt("huffman: table size"))?;
        let (s0, rest) = out.split_at_mut(oend[0]);
        let (s1, rest) = rest.split_at_mut(oend[1] - oend[0]);
        let (s2, s3) = rest.split_at_mut(oend[2] - oend[1]);
        let rel = [op[0], op[1] - oend[0], op[2] - oend[1], op[3] - oend[2]];
        let (p, o) = fast_single(payload, single, [s0, s1, s2, s3], pos, rel, end);
        pos = p;
        op = [o[0], o[1] + oend[0], o[2] + oend[1], o[3] + oend[2]];
        return decode_tails(payload, tables, out, pos, op, end, oend, sizes);
    }
    let multi: &[u32; TABLE_SIZE] = tables.multi[..]
        .try_into()
        .map_err(|_| CodecError::Corrupt("huffman: table size"))?;
    // Fast loop: rounds of one 64-bit load and 5 look-ups (<= 55 bits, <= 15
    // symbols) per stream, the four streams interleaved in plain locals.
    // Bounds are computed per batch of rounds; within a round each stream
    // writes into a 16-byte window of its own segment, at offsets the
    // compiler can see are below 13 (counts are masked to 2 bits).
    {
        let [mut b0, mut b1, mut b2, mut b3] = pos;
        let [mut o0, mut o1, mut o2, mut o3] = op;
        let (s0, rest) = out.split_at_mut(oend[0]);
        let (s1, rest) = rest.split_at_mut(oend[1] - oend[0]);
        let (s2, s3) = rest.split_at_mut(oend[2] - oend[1]);
        // Output positions relative to each segment.
        o1 -= oend[0];
        o2 -= oend[1];
        o3 -= oend[2];
        loop {
            let rounds = safe_rounds(b0, end[0], o0, s0.len())
                .min(safe_rounds(b1, end[1], o1, s1.len()))
                .min(safe_rounds(b2, end[2], o2, s2.len()))
                .min(safe_rounds(b3, end[3], o3, s3.len()));
            if rounds == 0 {
                break;
            }
            for _ in 0..rounds {
                fn window(s: &mut [u8], o: usize) -> Option<&mut [u8; 16]> {
                    s.get_mut(o..o + 16)?.try_into().ok()
                }
                let (Some(d0), Some(d1), Some(d2), Some(d3)) = (
                    window(s0, o0),
                    window(s1, o1),
                    window(s2, o2),
                    window(s3, o3),
                ) else {
                    break;
                };
                let mut w = [
                    peek_fast(payload, b0),
                    peek_fast(payload, b1),
                    peek_fast(payload, b2),
                    peek_fast(payload, b3),
                ];
                let mut c = [0usize; 4];
                let mut used = [0usize; 4];
                let d: [&mut [u8; 16]; 4] = [d0, d1, d2, d3];
                for _ in 0..5 {
                    for k in 0..4 {
                        let e = multi[(w[k] & TABLE_MASK) as usize];
                        d[k][c[k]..c[k] + 4].copy_from_slice(&e.to_le_bytes());
                        c[k] += ((e >> 28) & 3) as usize;
                        let l = (e >> 24) & 15;
                        w[k] >>= l;
                        used[k] += l as usize;
                    }
                }
                b0 += used[0];
                b1 += used[1];
                b2 += used[2];
                b3 += used[3];
                o0 += c[0];
                o1 += c[1];
                o2 += c[2];
                o3 += c[3];
            }
        }
        pos = [b0, b1, b2, b3];
        op = [o0, o1 + oend[0], o2 + oend[1], o3 + oend[2]];
    }
    decode_tails(payload, tables, out, pos, op, end, oend, sizes)
}

/// The careful tail of every stream, one symbol at a time, zeros past a
/// stream's end; then checks each stream ended exactly at its length.
#[allow(clippy::too_many_arguments)]
fn decode_tails(
    payload: &[u8],
    tables: &DecodeTables,
    out: &mut [u8],
    pos: [usize; STREAMS],
    op: [usize; STREAMS],
    end: [usize; STREAMS],
    oend: [usize; STREAMS],
    sizes: [usize; STREAMS],
) -> Result<(), CodecError> {
    let single = &tables.single[..TABLE_SIZE];
    for k in 0..STREAMS {
        let mut b = pos[k];
        let mut w = 0u64;
        let mut avail = 0u32;
        for o in out[op[k]..oend[k]].iter_mut() {
            if avail < MAX_LEN {
                w = peek_careful(payload, end[k], b);
                avail = 57;
            }
            let e = single[(w & TABLE_MASK) as usize];
            *o = e as u8;
            let l = (e >> 8) as u32;
            w >>= l;
            avail -= l;
            b += l as usize;
        }
        let used = b - (end[k] - sizes[k]) * 8;
        if used.div_ceil(8) != sizes[k] {
            return Err(CodecError::Corrupt(
                "huffman stream length does not match its symbols",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kraft(lens: &[u8; 256]) -> u64 {
        lens.iter()
            .filter(|&&l| l != 0)
            .map(|&l| 1u64 << (MAX_LEN - l as u32))
            .sum()
    }

    fn roundtrip(plane: &[u8]) -> usize {
        let mut hist = [0u32; 256];
        histogram(plane, &mut hist);
        let mut lens = [0u8; 256];
        assert!(code_lengths(&hist, &mut lens) >= 2);
        let mut payload = Vec::new();
        encode(plane, &lens, &mut EncodeTables::default(), &mut payload);
        assert!(payload.len() <= payload_size_bound(&hist, &lens));
        let mut tables = DecodeTables::default();
        let mut out = vec![0u8; plane.len()];
        decode(&payload, &mut tables, &mut out).expect("decodes");
        assert_eq!(out, plane);
        payload.len()
    }

    /// The payload [`encode`] must produce, one bit at a time: table
    /// description, stream lengths, then each segment's codes (bit-reversed
    /// canonical, LSB first), each stream padded to a whole byte.
    fn encode_bit_by_bit(plane: &[u8], lens: &[u8; 256]) -> Vec<u8> {
        let mut head = Vec::new();
        let first = lens.iter().position(|&l| l != 0).unwrap_or(0);
        let last = lens.iter().rposition(|&l| l != 0).unwrap_or(0);
        head.push(first as u8);
        head.push(last as u8);
        for pair in lens[first..=last].chunks(2) {
            head.push(pair[0] | (pair.get(1).copied().unwrap_or(0) << 4));
        }
        let table = encode_table(lens);
        let mut streams = Vec::new();
        for k in 0..STREAMS {
            let (a, b) = segment(plane.len(), k);
            let mut bits: Vec<bool> = Vec::new();
            for &s in &plane[a..b] {
                let e = table[s as usize];
                for i in 0..(e >> 16) {
                    bits.push((e >> i) & 1 == 1);
                }
            }
            let bytes: Vec<u8> = bits
                .chunks(8)
                .map(|c| c.iter().enumerate().map(|(i, &b)| (b as u8) << i).sum())
                .collect();
            streams.push(bytes);
        }
        for s in &streams[..STREAMS - 1] {
            head.extend_from_slice(&(s.len() as u32).to_le_bytes());
        }
        for s in streams {
            head.extend_from_slice(&s);
        }
        head
    }

    /// The code lengths for `plane`, or `None` when it holds fewer than two
    /// symbols (no Huffman code).
    fn lengths(plane: &[u8]) -> Option<[u8; 256]> {
        let mut hist = [0u32; 256];
        histogram(plane, &mut hist);
        let mut lens = [0u8; 256];
        (code_lengths(&hist, &mut lens) >= 2).then_some(lens)
    }

    /// A xorshift generator: test planes without a dependency.
    fn xorshift(mut x: u64) -> impl FnMut() -> u64 {
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        }
    }

    #[test]
    fn the_encoder_writes_the_specified_bits() {
        let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
        let mut sizes: Vec<usize> = (2..=64).collect();
        sizes.extend([
            99, 100, 101, 4095, 4096, 4097, 65_535, 65_536, 65_537, 100_003,
        ]);
        for (i, &n) in sizes.iter().enumerate() {
            // Flat (8-bit codes), skewed (short codes) and long-code planes.
            let plane: Vec<u8> = (0..n)
                .map(|_| match i % 3 {
                    0 => next() as u8,
                    1 => (next() % 5) as u8,
                    _ => (next() % 7).min(next() % 200) as u8,
                })
                .collect();
            let Some(lens) = lengths(&plane) else {
                continue;
            };
            let mut fast = vec![0xAA; 3]; // appended after existing bytes
            encode(&plane, &lens, &mut EncodeTables::default(), &mut fast);
            assert_eq!(&fast[..3], &[0xAA; 3], "n = {n}");
            assert_eq!(fast[3..], encode_bit_by_bit(&plane, &lens), "n = {n}");
            assert_eq!(roundtrip(&plane), fast.len() - 3, "n = {n}");
        }
    }

    #[test]
    fn one_encoder_state_serves_changing_alphabets_bit_exactly() {
        // The pair table is reused from plane to plane; entries of symbols
        // absent from the current plane are stale and must not be used.
        // Alphabets of 2..=64 symbols take the two-symbol path, larger ones
        // the one-symbol path; a skewed 64-symbol alphabet reaches the
        // 11-bit length limit (two pairs of 22 bits per flush).
        let mut next = xorshift(0x2545_F491_4F6C_DD1D);
        let mut tables = EncodeTables::default();
        let mut long_codes_in_pairs = false;
        for (i, k) in [2u64, 64, 256, 5, 65, 64, 3, 200, 40]
            .into_iter()
            .enumerate()
        {
            let base = (i * 37 % 190) as u64;
            let plane: Vec<u8> = (0..10_007)
                .map(|_| {
                    let v = next() % k;
                    // Geometric: symbol j about twice as rare as j - 1.
                    let skewed = (next() | 1 << 40).trailing_zeros() as u64 % k;
                    ((if i % 2 == 0 { v } else { skewed }) + base) as u8
                })
                .collect();
            let Some(lens) = lengths(&plane) else {
                continue;
            };
            let present = lens.iter().filter(|&&l| l != 0).count();
            long_codes_in_pairs |=
                present <= PAIR_MAX_SYMBOLS && lens.iter().any(|&l| l as u32 == MAX_LEN);
            let mut payload = Vec::new();
            encode(&plane, &lens, &mut tables, &mut payload);
            assert_eq!(payload, encode_bit_by_bit(&plane, &lens), "plane {i}");
        }
        assert!(
            long_codes_in_pairs,
            "no plane took the pair path with 11-bit codes"
        );
    }

    #[test]
    fn lengths_are_complete_and_limited_for_skewed_counts() {
        // Fibonacci counts give an unlimited Huffman depth of ~n.
        let mut counts = [0u32; 256];
        let (mut a, mut b) = (1u32, 1u32);
        for c in counts.iter_mut().take(30) {
            *c = a;
            (a, b) = (b, a + b);
        }
        let mut lens = [0u8; 256];
        assert_eq!(code_lengths(&counts, &mut lens), 30);
        assert_eq!(kraft(&lens), 1 << MAX_LEN);
        assert!(lens.iter().all(|&l| l as u32 <= MAX_LEN));
        assert!(lens[..30].iter().all(|&l| l > 0));
        // More frequent symbols never get longer codes.
        for i in 1..30 {
            assert!(lens[i] <= lens[i - 1], "{:?}", &lens[..30]);
        }
    }

    #[test]
    fn lengths_of_uniform_counts_are_eight_bits() {
        let counts = [100u32; 256];
        let mut lens = [0u8; 256];
        assert_eq!(code_lengths(&counts, &mut lens), 256);
        assert!(lens.iter().all(|&l| l == 8));
    }

    #[test]
    fn two_symbols_get_one_bit_each() {
        let mut counts = [0u32; 256];
        counts[3] = 1000;
        counts[200] = 1;
        let mut lens = [0u8; 256];
        assert_eq!(code_lengths(&counts, &mut lens), 2);
        assert_eq!((lens[3], lens[200]), (1, 1));
    }

    #[test]
    fn roundtrips_and_compresses_skewed_planes() {
        let mut s = 7u64;
        // Geometric-ish distribution over ~20 symbols, lengths 1..=11.
        let plane: Vec<u8> = (0..50_000)
            .map(|_| {
                let r = crate::testvec::splitmix64(&mut s);
                (r.trailing_zeros().min(19) as u8) + 100
            })
            .collect();
        let size = roundtrip(&plane);
        // Entropy is ~2 bits a symbol.
        assert!(size < plane.len() / 3, "{size}");
        for n in [2usize, 3, 5, 17, 63, 64, 65, 100, 1000, 4099] {
            roundtrip(&plane[..n]);
        }
    }

    /// Bytes of a rounded normal distribution with the given spread: ~7
    /// bits of entropy at 32 (int8 weights), ~2-3 at 2 (float exponents).
    fn normal_bytes(n: usize, spread: f64, seed: u64) -> Vec<u8> {
        let mut s = seed | 1;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let g = (0..4).map(|_| next()).sum::<f64>() - 2.0;
                (128.0 + g * spread * 1.7).round().clamp(0.0, 255.0) as u8
            })
            .collect()
    }

    #[test]
    fn long_codes_decode_one_symbol_a_look_up_and_short_ones_several() {
        for (spread, single) in [(32.0, true), (2.0, false)] {
            for n in [2, 5, 19, 20, 21, 99, 1000, 4099, 65_536, 100_003] {
                let plane = normal_bytes(n, spread, n as u64);
                let mut hist = [0u32; 256];
                histogram(&plane, &mut hist);
                let mut lens = [0u8; 256];
                if code_lengths(&hist, &mut lens) < 2 {
                    continue;
                }
                let mut payload = Vec::new();
                encode(&plane, &lens, &mut EncodeTables::default(), &mut payload);
                let mut tables = DecodeTables::default();
                let mut out = vec![0u8; plane.len()];
                decode(&payload, &mut tables, &mut out).expect("decodes");
                assert_eq!(out, plane, "spread {spread} n {n}");
                if n >= 1000 {
                    assert_eq!(tables.single_mode, single, "spread {spread} n {n}");
                }
                // A damaged payload is an error or other bytes, never a panic.
                for at in [payload.len() / 2, payload.len() - 1] {
                    let mut bad = payload.clone();
                    bad[at] ^= 0x5a;
                    let _ = decode(&bad, &mut tables, &mut out);
                }
                // So is a truncated one.
                assert!(decode(&payload[..payload.len() - 1], &mut tables, &mut out).is_err());
            }
        }
    }

    #[test]
    fn roundtrips_uniform_bytes() {
        let mut s = 1u64;
        let plane: Vec<u8> = (0..10_001)
            .map(|_| crate::testvec::splitmix64(&mut s) as u8)
            .collect();
        let size = roundtrip(&plane);
        assert!(size > plane.len(), "uniform bytes cannot shrink");
    }

    #[test]
    fn rejects_incomplete_or_overlong_tables() {
        let mut t = DecodeTables::default();
        let mut out = [0u8; 4];
        // Symbols 0..=1 with lengths 1 and 2: incomplete.
        let bad = [0u8, 1, 0x21, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            decode(&bad, &mut t, &mut out),
            Err(CodecError::Corrupt("huffman table: code not complete"))
        );
        // Length 12.
        let bad = [0u8, 1, 0x1C];
        assert!(decode(&bad, &mut t, &mut out).is_err());
        // last <= first.
        assert!(decode(&[5u8, 5, 0x11], &mut t, &mut out).is_err());
        // Truncated descriptions and jump tables.
        assert_eq!(decode(&[0u8], &mut t, &mut out), Err(CodecError::Truncated));
        assert_eq!(
            decode(&[0u8, 1, 0x11, 0], &mut t, &mut out),
            Err(CodecError::Truncated)
        );
    }

    #[test]
    fn stream_length_must_match_the_symbols() {
        let plane: Vec<u8> = (0..4000u32).map(|i| (i % 3) as u8).collect();
        let mut hist = [0u32; 256];
        histogram(&plane, &mut hist);
        let mut lens = [0u8; 256];
        code_lengths(&hist, &mut lens);
        let mut payload = Vec::new();
        encode(&plane, &lens, &mut EncodeTables::default(), &mut payload);
        let mut t = DecodeTables::default();
        let mut out = vec![0u8; plane.len()];
        // One byte more in the last stream.
        let mut longer = payload.clone();
        longer.push(0);
        assert!(decode(&longer, &mut t, &mut out).is_err());
        // One byte less.
        assert!(decode(&payload[..payload.len() - 1], &mut t, &mut out).is_err());
        // More symbols than the streams hold.
        let mut more = vec![0u8; plane.len() + 64];
        assert!(decode(&payload, &mut t, &mut more).is_err());
        decode(&payload, &mut t, &mut out).expect("intact payload decodes");
        assert_eq!(out, plane);
    }
}
