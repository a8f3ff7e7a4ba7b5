//! Cheap statistics on samples of a chunk: which layout (element width,
//! phase, transform) to try, and whether trying anything is worth it.

/// Bytes per sample window.
const WINDOW: usize = 1024;
/// Number of windows; chunks up to `WINDOWS * WINDOW * 2` are sampled whole.
const WINDOWS: usize = 4;

/// Calls `f` with up to [`WINDOWS`] windows of `data`, spread evenly; each
/// window starts at a multiple of 4 so byte positions modulo 4 are kept.
pub fn for_each_window(data: &[u8], mut f: impl FnMut(&[u8])) {
    if data.len() <= 2 * WINDOWS * WINDOW {
        f(data);
        return;
    }
    let span = data.len() - WINDOW;
    for i in 0..WINDOWS {
        let at = (span * i / (WINDOWS - 1)) & !3;
        f(&data[at..at + WINDOW]);
    }
}

/// log2(x) for x >= 1, absolute error below 2e-5; branch-free so the loops
/// over 256 counts vectorize.
#[inline(always)]
fn log2_approx(x: f32) -> f32 {
    let bits = x.to_bits();
    let e = ((bits >> 23) as i32 - 127) as f32;
    let m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000); // [1, 2)
                                                                // log2(m) = 2/ln2 * atanh(s), s = (m-1)/(m+1) in [0, 1/3).
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let p = s * (1.0 + s2 * (1.0 / 3.0 + s2 * (1.0 / 5.0 + s2 * (1.0 / 7.0 + s2 * (1.0 / 9.0)))));
    e + p * core::f32::consts::LOG2_E * 2.0
}

/// Estimated order-0 entropy, in bits (total, capped at 8 bits a symbol),
/// of the source a sampled histogram came from: the plug-in entropy plus
/// the Miller–Madow correction `(K - 1) / (2 ln 2)` bits for `K` distinct
/// symbols, without which small samples of random bytes look compressible
/// (1 KiB of uniform bytes reads as ~7.8 bits a byte).
pub fn entropy_bits(h: &[u32; 256]) -> f64 {
    // Eight independent partial sums so the loop vectorizes (a single float
    // accumulator would force a serial chain).
    let mut acc = [0f32; 8];
    let mut cnt = [0u32; 8];
    let mut distinct = [0u32; 8];
    for c in h.chunks_exact(8) {
        for j in 0..8 {
            let cf = c[j] as f32;
            acc[j] += cf * log2_approx(cf.max(1.0));
            cnt[j] += c[j];
            distinct[j] += (c[j] != 0) as u32;
        }
    }
    let n: u64 = cnt.iter().map(|&c| c as u64).sum();
    if n == 0 {
        return 0.0;
    }
    let k: u32 = distinct.iter().sum();
    let s: f64 = acc.iter().map(|&a| a as f64).sum();
    let nf = n as f64;
    let bits = nf * nf.log2() - s + (k.saturating_sub(1)) as f64 / (2.0 * core::f64::consts::LN_2);
    bits.clamp(0.0, 8.0 * nf)
}

/// Sum of the squared symbol probabilities (chance two random symbols are equal).
pub fn collision(h: &[u32; 256]) -> f64 {
    let n: u64 = h.iter().map(|&c| c as u64).sum();
    if n == 0 {
        return 1.0;
    }
    let s: f64 = h.iter().map(|&c| (c as f64) * (c as f64)).sum();
    s / (n as f64 * n as f64)
}

/// Sample statistics of one byte string (a plane or a whole chunk).
pub struct ByteStats {
    /// Histogram of the sampled bytes.
    pub hist: [u32; 256],
    /// Sampled bytes.
    pub n: usize,
    /// Sampled adjacent pairs that are equal.
    pub equal_pairs: usize,
    /// Sampled adjacent pairs.
    pub pairs: usize,
}

impl ByteStats {
    pub fn sample(data: &[u8]) -> ByteStats {
        let mut st = ByteStats {
            hist: [0; 256],
            n: 0,
            equal_pairs: 0,
            pairs: 0,
        };
        for_each_window(data, |w| {
            let mut h = [0u32; 256];
            crate::huff::histogram(w, &mut h);
            for (a, b) in st.hist.iter_mut().zip(h.iter()) {
                *a += b;
            }
            st.n += w.len();
            st.equal_pairs += w
                .iter()
                .zip(w.iter().skip(1))
                .map(|(a, b)| (a == b) as usize)
                .sum::<usize>();
            st.pairs += w.len().saturating_sub(1);
        });
        st
    }

    /// Estimated bits per byte of an order-0 entropy coder.
    pub fn bits_per_byte(&self) -> f64 {
        if self.n == 0 {
            return 8.0;
        }
        entropy_bits(&self.hist) / self.n as f64
    }

    /// Whether equal neighbours are clearly more frequent than chance:
    /// runs, which an LZ coder (zstd) exploits and an order-0 coder does not.
    pub fn has_runs(&self) -> bool {
        if self.pairs < 64 {
            return false;
        }
        let observed = self.equal_pairs as f64 / self.pairs as f64;
        observed > collision(&self.hist) + 0.05
    }
}

/// Fraction of sampled positions whose next 4 bytes already occurred
/// within the same window (found through a small hash table): a cheap
/// proxy for what an LZ coder finds.
pub fn match_fraction(data: &[u8]) -> f64 {
    let mut hits = 0usize;
    let mut total = 0usize;
    let mut table = [u16::MAX; 1 << MATCH_HASH_BITS];
    let mut windows = 0;
    for_each_window(data, |w| {
        // Two windows (at the start and a third in) are enough to see text
        // or repeated values; positions fit in u16 (windows <= 8 KiB).
        windows += 1;
        if windows > 2 {
            return;
        }
        table.fill(u16::MAX);
        let mut i = 0;
        while i + 4 <= w.len() {
            let v = u32::from_le_bytes([w[i], w[i + 1], w[i + 2], w[i + 3]]);
            let h = (v.wrapping_mul(0x9E37_79B1) >> (32 - MATCH_HASH_BITS)) as usize;
            let prev = table[h];
            table[h] = i as u16;
            total += 1;
            if prev != u16::MAX {
                let p = prev as usize;
                if w[p..p + 4] == w[i..i + 4] {
                    hits += 1;
                    i += 4;
                    continue;
                }
            }
            i += 1;
        }
    });
    if total == 0 {
        0.0
    } else {
        hits as f64 * 4.0 / (total as f64 + hits as f64 * 3.0)
    }
}

/// Hash table size (log2) of [`match_fraction`].
const MATCH_HASH_BITS: u32 = 11;

/// Estimated order-0 cost, in bits per element, of the byte planes of
/// elements of `width` (2 or 4) bytes at `phase`, rotated left by one bit
/// when `rotate`, over the sample windows. Planes are capped at 8 bits.
pub fn layout_bits(data: &[u8], width: usize, phase: usize, rotate: bool) -> f64 {
    let mut h = [[0u32; 256]; 4];
    let mut n = 0usize;
    for_each_window(data, |w| {
        // Windows start at multiples of 4, so skipping `phase` bytes aligns
        // them with the elements.
        let w = &w[phase.min(w.len())..];
        if width == 2 {
            for c in w.chunks_exact(2) {
                let mut v = u16::from_le_bytes([c[0], c[1]]);
                if rotate {
                    v = v.rotate_left(1);
                }
                h[0][(v & 0xFF) as usize] += 1;
                h[1][(v >> 8) as usize] += 1;
            }
            n += w.len() / 2;
        } else {
            for c in w.chunks_exact(4) {
                let mut v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                if rotate {
                    v = v.rotate_left(1);
                }
                for (k, hk) in h.iter_mut().enumerate() {
                    hk[((v >> (8 * k)) & 0xFF) as usize] += 1;
                }
            }
            n += w.len() / 4;
        }
    });
    if n == 0 {
        return 8.0 * width as f64;
    }
    h[..width].iter().map(entropy_bits).sum::<f64>() / n as f64
}

/// Histograms of the sampled bytes by position modulo 4.
pub fn position_stats(data: &[u8]) -> [[u32; 256]; 4] {
    let mut h = [[0u32; 256]; 4];
    for_each_window(data, |w| {
        let mut c = w.chunks_exact(4);
        for q in &mut c {
            h[0][q[0] as usize] += 1;
            h[1][q[1] as usize] += 1;
            h[2][q[2] as usize] += 1;
            h[3][q[3] as usize] += 1;
        }
        for (j, &b) in c.remainder().iter().enumerate() {
            h[j][b as usize] += 1;
        }
    });
    h
}

/// Sum of two histograms.
pub fn add(a: &[u32; 256], b: &[u32; 256]) -> [u32; 256] {
    let mut s = [0u32; 256];
    for i in 0..256 {
        s[i] = a[i] + b[i];
    }
    s
}
