//! Deterministic synthetic ML model generator.
//!
//! Produces [safetensors](https://huggingface.co/docs/safetensors) files of
//! realistic-looking tensors (normally distributed weights stored as BF16,
//! F16, F32 or per-row quantized I8) together with derived versions of a model
//! (fine-tunes, inserted tensors, int8 quantization, byte-identical forks), so
//! that the deduplication behaviour of the engine can be measured in the
//! `tessera demo` command, in tests and in benchmarks.
//!
//! Everything here is a pure function of its seeds: the content of a tensor
//! depends only on `(seed, dtype, shape, mean, std)` of its [`TensorSpec`], never
//! on its name or on its position in the file. Two versions of a model that
//! share a tensor spec therefore share that tensor's bytes exactly, wherever it
//! sits in the file.
//!
//! Data is generated lazily in blocks of at most [`BLOCK_BYTES`], so arbitrarily
//! large models can be streamed with bounded memory ([`ModelSpec::write_to`],
//! [`ModelSpec::reader`]).

#![warn(missing_docs)]

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

/// Largest block of tensor data generated at once (bytes).
pub const BLOCK_BYTES: usize = 1 << 20;

/// Number of values generated per inner batch (kept on the stack).
const SCRATCH_ELEMS: usize = 2048;

const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// Standard deviation of ordinary weight matrices in [`ModelSpec::base`].
pub const WEIGHT_STD: f32 = 0.02;
/// Standard deviation of norm weights (around a mean of 1.0) in [`ModelSpec::base`].
pub const NORM_STD: f32 = 0.04;

// ---------------------------------------------------------------------------
// RNG
// ---------------------------------------------------------------------------

/// The SplitMix64 generator (Steele, Lea & Flood), as used for test vectors
/// across the project.
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

#[inline(always)]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl SplitMix64 {
    /// A generator whose first output is `mix(seed + 0x9E3779B97F4A7C15)`.
    pub fn new(seed: u64) -> Self {
        SplitMix64 { state: seed }
    }

    /// Next 64-bit output.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(GAMMA);
        mix64(self.state)
    }

    /// Fill `buf` with `next_u64().to_le_bytes()` in sequence; the last word
    /// is truncated if `buf.len()` is not a multiple of 8.
    pub fn fill_bytes(&mut self, buf: &mut [u8]) {
        let mut chunks = buf.chunks_exact_mut(8);
        for c in &mut chunks {
            c.copy_from_slice(&self.next_u64().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let w = self.next_u64().to_le_bytes();
            let n = rest.len();
            rest.copy_from_slice(&w[..n]);
        }
    }

    /// A value in `0..n` (0 when `n` is 0); modulo bias is irrelevant here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64().checked_rem(n).unwrap_or(0)
    }

    /// A uniform `f64` in `[0, 1)` (53 random bits).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// `n` incompressible bytes: the stream of `SplitMix64::new(seed)`.
pub fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    SplitMix64::new(seed).fill_bytes(&mut out);
    out
}

/// Derive a new 64-bit seed from two inputs (order-sensitive).
fn derive_seed(a: u64, b: u64) -> u64 {
    mix64(a ^ mix64(b ^ 0x5EED_5EED_C0FF_EE00).wrapping_add(GAMMA))
}

// ---------------------------------------------------------------------------
// Float conversions
// ---------------------------------------------------------------------------

/// Convert an `f32` to bfloat16 bits (round to nearest, ties to even; NaN stays NaN).
#[inline(always)]
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((b >> 16) as u16) | 0x0040;
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

/// Convert bfloat16 bits to `f32` (exact).
#[inline]
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// Convert an `f32` to IEEE 754 binary16 bits (round to nearest, ties to even,
/// including subnormals; overflow gives infinity; NaN stays NaN).
///
/// Branch-free so that it vectorizes: the normal range is rounded with integer
/// arithmetic, the subnormal range by letting the FPU round `|x| + 0.5` (whose
/// ulp is 2^-24, the f16 subnormal step).
#[inline(always)]
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = (bits >> 16) & 0x8000;
    let a = bits & 0x7FFF_FFFF;
    // Rebias the exponent (127 -> 15) after rounding away the low 13 bits;
    // anything at or beyond 65520 saturates to infinity (0x7C00).
    let normal =
        ((a.wrapping_add(0x0FFF + ((a >> 13) & 1)) >> 13).wrapping_sub(112 << 10)).min(0x7C00);
    let subnormal = (f32::from_bits(a) + 0.5)
        .to_bits()
        .wrapping_sub(0x3F00_0000);
    let nan = 0x7E00 | ((a >> 13) & 0x03FF);
    let h = if a > 0x7F80_0000 {
        nan
    } else if a >= 0x3880_0000 {
        normal
    } else {
        subnormal
    };
    (sign | h) as u16
}

/// Convert IEEE 754 binary16 bits to `f32` (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1F) as u32;
    let man = (h & 0x03FF) as u32;
    let bits = match exp {
        0 => {
            if man == 0 {
                sign
            } else {
                // Subnormal: man * 2^-24.
                let v = man as f32 * (1.0 / 16_777_216.0);
                return if sign != 0 { -v } else { v };
            }
        }
        0x1F => sign | 0x7F80_0000 | (man << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (man << 13),
    };
    f32::from_bits(bits)
}

// ---------------------------------------------------------------------------
// Normal variates
// ---------------------------------------------------------------------------

/// Natural logarithm for normal positive `a`, accurate to ~1e-7 relative.
#[inline(always)]
fn fast_ln(a: f32) -> f32 {
    let bits = a.to_bits();
    let mut e = ((bits >> 23) as i32 - 127) as f32;
    let mut m = f32::from_bits((bits & 0x007F_FFFF) | 0x3F80_0000); // [1, 2)
    let big = m > std::f32::consts::SQRT_2;
    m = if big { m * 0.5 } else { m };
    e = if big { e + 1.0 } else { e };
    // ln m = 2 atanh(t), t = (m-1)/(m+1), |t| <= 0.1716
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let p = 1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0)));
    e * std::f32::consts::LN_2 + 2.0 * t * p
}

/// Word `k` (0-based) of the stream of `SplitMix64::new(seed)`.
#[inline(always)]
fn stream_word(seed: u64, k: u64) -> u64 {
    mix64(seed.wrapping_add(k.wrapping_add(1).wrapping_mul(GAMMA)))
}

/// Two standard normal variates from one 64-bit random word `(hi << 32) | lo`.
///
/// Box–Muller with a polynomial `ln` and `sin`/`cos` (accurate to a few f32
/// ulps). The radius uses the top 24 bits of `hi` (so |value| <= ~5.77), the
/// angle the top 24 bits of `lo` plus a quadrant from the low 2 bits of `hi`.
/// Only u32/i32/f32 arithmetic, branch-free, so batches auto-vectorize.
#[inline(always)]
fn pair_from_word(hi: u32, lo: u32) -> (f32, f32) {
    const INV_2_24: f32 = 1.0 / 16_777_216.0;
    // Both integers are < 2^25, so the i32 -> f32 conversions are exact.
    let u1 = (((hi >> 8) + 1) as i32) as f32 * INV_2_24; // (0, 1]
    let f = ((lo >> 8) as i32) as f32 * INV_2_24; // [0, 1)
    let r = (-2.0 * fast_ln(u1)).max(0.0).sqrt();
    let t = (f - 0.5) * std::f32::consts::FRAC_PI_2; // [-pi/4, pi/4)
    let t2 = t * t;
    let s = t * (1.0 + t2 * (-1.0 / 6.0 + t2 * (1.0 / 120.0 + t2 * (-1.0 / 5040.0))));
    let c = 1.0 + t2 * (-0.5 + t2 * (1.0 / 24.0 + t2 * (-1.0 / 720.0 + t2 * (1.0 / 40320.0))));
    // Rotate (c, s) by quadrant * 90 degrees, so the angle is uniform on the
    // whole circle: quadrant bit 0 rotates by 90 degrees, bit 1 by 180.
    let swap = hi & 1 == 1;
    let neg = (hi & 2) << 30; // sign bit mask
    let x = if swap { -s } else { c };
    let y = if swap { c } else { s };
    (
        f32::from_bits((r * x).to_bits() ^ neg),
        f32::from_bits((r * y).to_bits() ^ neg),
    )
}

/// The pair of standard normal variates number `k` of the stream seeded with `seed`.
#[inline(always)]
fn normal_pair(seed: u64, k: u64) -> (f32, f32) {
    let z = stream_word(seed, k);
    pair_from_word((z >> 32) as u32, z as u32)
}

/// Pairs generated per inner batch in [`fill_normals`].
const PAIR_BATCH: usize = 512;

/// Fill `out` with standard normal values number `start..start+out.len()` of
/// the stream seeded with `seed`. Values `2k` and `2k+1` come from pair `k`.
fn fill_normals(seed: u64, start: u64, out: &mut [f32]) {
    let mut e = start;
    let mut skip = 0;
    if e % 2 == 1 {
        if let Some(first) = out.first_mut() {
            *first = normal_pair(seed, e / 2).1;
            skip = 1;
            e += 1;
        }
    }
    let body = &mut out[skip..];
    let k0 = e / 2;
    let npairs = (body.len() / 2) as u64;
    let mut hi = [0u32; PAIR_BATCH];
    let mut lo = [0u32; PAIR_BATCH];
    let mut xs = [0f32; PAIR_BATCH];
    let mut ys = [0f32; PAIR_BATCH];
    let mut k = k0;
    let mut batches = body.chunks_exact_mut(2 * PAIR_BATCH);
    for chunk in &mut batches {
        normal_batch(seed, k, &mut hi, &mut lo, &mut xs, &mut ys, chunk);
        k += PAIR_BATCH as u64;
    }
    let rest = batches.into_remainder();
    let m = rest.len() / 2;
    normal_batch(
        seed,
        k,
        &mut hi[..m],
        &mut lo[..m],
        &mut xs[..m],
        &mut ys[..m],
        &mut rest[..2 * m],
    );
    if let Some(last) = rest.get_mut(2 * m) {
        *last = normal_pair(seed, k0 + npairs).0;
    }
}

/// Generate `hi.len()` pairs starting at pair `k` into `out` (interleaved).
/// All slices have matching lengths (`out` twice as long).
#[inline(always)]
fn normal_batch(
    seed: u64,
    k: u64,
    hi: &mut [u32],
    lo: &mut [u32],
    xs: &mut [f32],
    ys: &mut [f32],
    out: &mut [f32],
) {
    // Word k is mix64(seed + (k + 1) * GAMMA); step the state by additions.
    let mut state = seed.wrapping_add(k.wrapping_mul(GAMMA));
    for (h, l) in hi.iter_mut().zip(lo.iter_mut()) {
        state = state.wrapping_add(GAMMA);
        let z = mix64(state);
        *h = (z >> 32) as u32;
        *l = z as u32;
    }
    for (((x, y), &h), &l) in xs
        .iter_mut()
        .zip(ys.iter_mut())
        .zip(hi.iter())
        .zip(lo.iter())
    {
        let (a, b) = pair_from_word(h, l);
        *x = a;
        *y = b;
    }
    for ((p, &x), &y) in out.chunks_exact_mut(2).zip(xs.iter()).zip(ys.iter()) {
        p[0] = x;
        p[1] = y;
    }
}

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/// Element type of a tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    /// bfloat16 (the upper half of an f32), 2 bytes.
    BF16,
    /// IEEE 754 binary16, 2 bytes.
    F16,
    /// IEEE 754 binary32, 4 bytes.
    F32,
    /// Signed 8-bit integer (quantized weights), 1 byte.
    I8,
}

impl DType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::BF16 | DType::F16 => 2,
            DType::F32 => 4,
            DType::I8 => 1,
        }
    }

    /// The safetensors name: "BF16", "F16", "F32" or "I8".
    pub fn name(self) -> &'static str {
        match self {
            DType::BF16 => "BF16",
            DType::F16 => "F16",
            DType::F32 => "F32",
            DType::I8 => "I8",
        }
    }

    /// Inverse of [`DType::name`] (case-insensitive).
    pub fn parse(s: &str) -> Option<DType> {
        match s.to_ascii_uppercase().as_str() {
            "BF16" => Some(DType::BF16),
            "F16" => Some(DType::F16),
            "F32" => Some(DType::F32),
            "I8" => Some(DType::I8),
            _ => None,
        }
    }
}

/// One tensor of a synthetic model.
///
/// Its content is a pure function of `(seed, dtype, shape, mean, std)`: the
/// values `mean + std * n_i`, where `n_i` is the i-th standard normal variate
/// of the stream seeded by `seed`, converted to `dtype`. For `I8` the values are
/// quantized as if with scale `3 * std / 127`: `clamp(round(x / scale), -127, 127)`
/// (all zeros if `std <= 0`). The name and the position in the file do not
/// influence the bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Tensor name (the key in the safetensors header).
    pub name: String,
    /// Element type.
    pub dtype: DType,
    /// Dimensions (row-major); empty for a scalar.
    pub shape: Vec<u64>,
    /// Seed of the value stream; the only source of randomness.
    pub seed: u64,
    /// Standard deviation of the values.
    pub std: f32,
    /// Mean of the distribution (0.0 for ordinary weights, 1.0 for norm weights).
    pub mean: f32,
}

impl TensorSpec {
    /// A tensor of `normal(0, std)` values.
    pub fn new(
        name: impl Into<String>,
        dtype: DType,
        shape: Vec<u64>,
        seed: u64,
        std: f32,
    ) -> Self {
        TensorSpec {
            name: name.into(),
            dtype,
            shape,
            seed,
            std,
            mean: 0.0,
        }
    }

    /// Number of elements (product of the shape; 1 for a scalar).
    pub fn numel(&self) -> u64 {
        self.shape
            .iter()
            .fold(1u64, |acc, &d| acc.saturating_mul(d))
    }

    /// Size of the tensor's data in bytes.
    pub fn byte_len(&self) -> u64 {
        self.numel().saturating_mul(self.dtype.size() as u64)
    }

    /// Write the encoding of elements `first_elem..` into `out`, filling
    /// `out.len() / dtype.size()` elements (clipped at the end of the tensor).
    /// Returns the number of bytes written. Works in bounded stack memory.
    pub fn fill_elems(&self, first_elem: u64, out: &mut [u8]) -> usize {
        let size = self.dtype.size();
        let avail = self.numel().saturating_sub(first_elem);
        let n = ((out.len() / size) as u64).min(avail) as usize;
        let out = &mut out[..n * size];
        let mut scratch = [0f32; SCRATCH_ELEMS];
        let mut e = first_elem;
        for chunk in out.chunks_mut(SCRATCH_ELEMS * size) {
            let m = chunk.len() / size;
            let vals = &mut scratch[..m];
            fill_normals(self.seed, e, vals);
            encode(self.dtype, self.mean, self.std, vals, chunk);
            e += m as u64;
        }
        n * size
    }

    /// The whole tensor's bytes (convenience for small tensors and tests).
    pub fn data(&self) -> Vec<u8> {
        let len = usize::try_from(self.byte_len()).unwrap_or(usize::MAX);
        let mut v = vec![0u8; len];
        let mut done = 0usize;
        let mut elem = 0u64;
        let size = self.dtype.size();
        while done < len {
            let end = (done + BLOCK_BYTES).min(len);
            let w = self.fill_elems(elem, &mut v[done..end]);
            if w == 0 {
                break;
            }
            done += w;
            elem += (w / size) as u64;
        }
        v
    }
}

/// Encode standard normal values `vals` as `dtype` values of the given mean
/// and std into `out` (`out.len() == vals.len() * dtype.size()`).
#[inline]
fn encode(dtype: DType, mean: f32, std: f32, vals: &[f32], out: &mut [u8]) {
    match dtype {
        DType::BF16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(vals) {
                let h = f32_to_bf16(mean + std * v);
                o[0] = h as u8;
                o[1] = (h >> 8) as u8;
            }
        }
        DType::F16 => {
            for (o, &v) in out.chunks_exact_mut(2).zip(vals) {
                let h = f32_to_f16(mean + std * v);
                o[0] = h as u8;
                o[1] = (h >> 8) as u8;
            }
        }
        DType::F32 => {
            for (o, &v) in out.chunks_exact_mut(4).zip(vals) {
                o.copy_from_slice(&(mean + std * v).to_le_bytes());
            }
        }
        DType::I8 => {
            if std > 0.0 {
                // x / scale with scale = 3 * std / 127.
                let offset = mean * 127.0 / (3.0 * std);
                const K: f32 = 127.0 / 3.0;
                for (o, &v) in out.iter_mut().zip(vals) {
                    let q = (offset + v * K).clamp(-127.0, 127.0);
                    // Round half away from zero; `as` truncates toward zero.
                    let r = q + 0.5f32.copysign(q);
                    *o = (r as i32) as i8 as u8;
                }
            } else {
                out.fill(0);
            }
        }
    }
}

/// Escape `s` as the contents of a JSON string literal (without the quotes).
fn json_escape_into(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(c as usize) >> 4] as char);
                out.push(HEX[(c as usize) & 0xF] as char);
            }
            c => out.push(c),
        }
    }
}

fn json_string(out: &mut String, s: &str) {
    out.push('"');
    json_escape_into(out, s);
    out.push('"');
}

/// A synthetic model: an ordered list of tensors plus safetensors metadata.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Tensors in file order.
    pub tensors: Vec<TensorSpec>,
    /// `__metadata__` entries, in order (omitted from the header if empty).
    pub metadata: Vec<(String, String)>,
}

/// Architecture dimensions chosen by [`ModelSpec::base`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseDims {
    /// Hidden size `h` (a multiple of 8).
    pub hidden: u64,
    /// MLP width (`3h`).
    pub intermediate: u64,
    /// Number of transformer layers.
    pub layers: u64,
    /// Vocabulary size (rows of the embedding and lm_head).
    pub vocab: u64,
}

impl BaseDims {
    /// The dimensions [`ModelSpec::base`] uses for `target_bytes` of `dtype`.
    ///
    /// Per layer: q/k/v/o `[h, h]`, gate/up `[3h, h]`, down `[h, 3h]`, two norms
    /// `[h]`; plus embedding and lm_head `[vocab, h]` and a final norm. The layer
    /// count grows with log2 of the size (2 at 16 KiB, 8 at 1 MiB, ~21 at
    /// 8 GiB of bf16), the hidden size is a multiple of 8 chosen so the layers
    /// take most of the budget, and the vocabulary absorbs the remainder.
    pub fn for_target(target_bytes: u64, dtype: DType) -> BaseDims {
        let params = (target_bytes / dtype.size() as u64).max(1);
        let layers = u64::from((params / 2048).max(1).ilog2()).clamp(2, 48);
        let denom = 13 * layers + 8;
        let h_exact = ((params / denom) as f64).sqrt();
        let hidden = (((h_exact / 8.0).floor() as u64) * 8).max(8);
        let per_layer = 13 * hidden * hidden + 2 * hidden;
        let rest = params
            .saturating_sub(layers * per_layer)
            .saturating_sub(hidden);
        let vocab = ((rest + hidden) / (2 * hidden)).max(8);
        BaseDims {
            hidden,
            intermediate: 3 * hidden,
            layers,
            vocab,
        }
    }
}

impl ModelSpec {
    /// A transformer-like (Llama-style) base model of about `target_bytes`
    /// total, deterministic from `seed`. See [`BaseDims::for_target`] for the
    /// shapes. Norm weights have mean 1.0 and std [`NORM_STD`]; every other
    /// tensor mean 0.0 and std [`WEIGHT_STD`]. Every tensor gets its own seed.
    pub fn base(seed: u64, target_bytes: u64, dtype: DType) -> ModelSpec {
        let d = BaseDims::for_target(target_bytes, dtype);
        let (h, inter) = (d.hidden, d.intermediate);
        let mut rng = SplitMix64::new(derive_seed(seed, 0xBA5E));
        let mut tensors = Vec::with_capacity((d.layers * 9 + 3) as usize);
        let weight = |name: String, shape: Vec<u64>, rng: &mut SplitMix64| {
            TensorSpec::new(name, dtype, shape, rng.next_u64(), WEIGHT_STD)
        };
        let norm = |name: String, rng: &mut SplitMix64| TensorSpec {
            mean: 1.0,
            ..TensorSpec::new(name, dtype, vec![h], rng.next_u64(), NORM_STD)
        };
        tensors.push(weight(
            "model.embed_tokens.weight".into(),
            vec![d.vocab, h],
            &mut rng,
        ));
        for i in 0..d.layers {
            let p = format!("model.layers.{i}");
            tensors.push(norm(format!("{p}.input_layernorm.weight"), &mut rng));
            for proj in ["q", "k", "v", "o"] {
                tensors.push(weight(
                    format!("{p}.self_attn.{proj}_proj.weight"),
                    vec![h, h],
                    &mut rng,
                ));
            }
            tensors.push(norm(
                format!("{p}.post_attention_layernorm.weight"),
                &mut rng,
            ));
            tensors.push(weight(
                format!("{p}.mlp.gate_proj.weight"),
                vec![inter, h],
                &mut rng,
            ));
            tensors.push(weight(
                format!("{p}.mlp.up_proj.weight"),
                vec![inter, h],
                &mut rng,
            ));
            tensors.push(weight(
                format!("{p}.mlp.down_proj.weight"),
                vec![h, inter],
                &mut rng,
            ));
        }
        tensors.push(norm("model.norm.weight".into(), &mut rng));
        tensors.push(weight("lm_head.weight".into(), vec![d.vocab, h], &mut rng));
        ModelSpec {
            tensors,
            metadata: vec![
                ("format".into(), "pt".into()),
                ("generator".into(), "tessera-synth".into()),
            ],
        }
    }

    /// Fine-tune: rewrites about `fraction` of the tensors (at least one and,
    /// when there are two or more tensors, never all), chosen deterministically
    /// from `seed` and spread evenly through the file. The chosen tensors get a
    /// new seed (new content; same name, shape, dtype, mean, std and position).
    /// Returns the new spec and the names of the changed tensors, in file order.
    pub fn finetune(&self, seed: u64, fraction: f64) -> (ModelSpec, Vec<String>) {
        let n = self.tensors.len();
        let mut out = self.clone();
        if n == 0 {
            return (out, Vec::new());
        }
        let want = if fraction.is_finite() {
            (fraction * n as f64).round().max(0.0) as usize
        } else {
            1
        };
        let k = want.clamp(1, (n - 1).max(1));
        let mut rng = SplitMix64::new(derive_seed(seed, 0xF1E7));
        let u = rng.next_f64();
        let mut chosen = vec![false; n];
        for j in 0..k {
            let idx = ((j as f64 + u) * n as f64 / k as f64) as usize;
            chosen[idx.min(n - 1)] = true;
        }
        let mut changed = Vec::with_capacity(k);
        for (t, &c) in out.tensors.iter_mut().zip(&chosen) {
            if c {
                let mut s = derive_seed(seed, t.seed);
                if s == t.seed {
                    s = s.wrapping_add(GAMMA);
                }
                t.seed = s;
                changed.push(t.name.clone());
            }
        }
        (out, changed)
    }

    /// Insert a new 2-D tensor of about `bytes` bytes (content from `seed`,
    /// mean 0, std [`WEIGHT_STD`], dtype of the first tensor or BF16 for an
    /// empty model) at index `len / 2` of the tensor list: the header grows and
    /// every later tensor's offset shifts. Its width is the second dimension of
    /// the first 2-D tensor (64 if none). If `name` is already taken, a suffix
    /// `_1`, `_2`, ... is appended so the header stays valid.
    pub fn insert_tensor(&self, seed: u64, name: &str, bytes: u64) -> ModelSpec {
        let dtype = self.tensors.first().map_or(DType::BF16, |t| t.dtype);
        let width = self
            .tensors
            .iter()
            .find(|t| t.shape.len() == 2)
            .map_or(64, |t| t.shape[1].max(1));
        let numel = (bytes / dtype.size() as u64).max(1);
        let cols = width.min(numel);
        let rows = (numel.saturating_add(cols / 2) / cols).max(1);
        let mut unique = name.to_string();
        let mut i = 0u64;
        while self.tensors.iter().any(|t| t.name == unique) {
            i += 1;
            unique = format!("{name}_{i}");
        }
        let t = TensorSpec::new(
            unique,
            dtype,
            vec![rows, cols],
            derive_seed(seed, 0x1A5E),
            WEIGHT_STD,
        );
        let mut out = self.clone();
        let at = out.tensors.len() / 2;
        out.tensors.insert(at, t);
        out
    }

    /// Quantized variant: every 2-D tensor (not already I8) becomes I8 with the
    /// same name, shape, seed, mean and std (so its content is the per-row
    /// quantization of the original values, scale `3 * std / 127`), followed by
    /// an F32 tensor `"{name}.scale"` of shape `[rows]` (values around that
    /// scale, 10% spread). Other tensors (1-D norms, ...) are kept unchanged so
    /// their bytes can be shared with the original. Adds the metadata entry
    /// `("quantization", "int8-per-row")`.
    pub fn quantize_int8(&self) -> ModelSpec {
        let mut tensors = Vec::with_capacity(self.tensors.len() * 2);
        for t in &self.tensors {
            if t.shape.len() == 2 && t.dtype != DType::I8 {
                tensors.push(TensorSpec {
                    dtype: DType::I8,
                    ..t.clone()
                });
                let scale = 3.0 * t.std / 127.0;
                tensors.push(TensorSpec {
                    name: format!("{}.scale", t.name),
                    dtype: DType::F32,
                    shape: vec![t.shape[0]],
                    seed: derive_seed(t.seed, 0x5CA1E),
                    std: scale * 0.1,
                    mean: scale,
                });
            } else {
                tensors.push(t.clone());
            }
        }
        let mut metadata = self.metadata.clone();
        metadata.retain(|(k, _)| k != "quantization");
        metadata.push(("quantization".into(), "int8-per-row".into()));
        ModelSpec { tensors, metadata }
    }

    /// The padded JSON header text (without the 8-byte length prefix).
    fn header_json(&self) -> String {
        let mut s = String::with_capacity(64 + self.tensors.len() * 96);
        s.push('{');
        let mut first = true;
        if !self.metadata.is_empty() {
            s.push_str("\"__metadata__\":{");
            for (i, (k, v)) in self.metadata.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                json_string(&mut s, k);
                s.push(':');
                json_string(&mut s, v);
            }
            s.push('}');
            first = false;
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            if !first {
                s.push(',');
            }
            first = false;
            json_string(&mut s, &t.name);
            s.push_str(":{\"dtype\":\"");
            s.push_str(t.dtype.name());
            s.push_str("\",\"shape\":[");
            for (i, d) in t.shape.iter().enumerate() {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&d.to_string());
            }
            let end = offset.saturating_add(t.byte_len());
            s.push_str("],\"data_offsets\":[");
            s.push_str(&offset.to_string());
            s.push(',');
            s.push_str(&end.to_string());
            s.push_str("]}");
            offset = end;
        }
        s.push('}');
        while !s.len().is_multiple_of(8) {
            s.push(' ');
        }
        s
    }

    /// The 8-byte little-endian header length followed by the JSON header,
    /// padded with spaces so that the data section starts at a multiple of 8.
    pub fn header_bytes(&self) -> Vec<u8> {
        let json = self.header_json();
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }

    /// Size of the data section in bytes.
    pub fn data_len(&self) -> u64 {
        self.tensors
            .iter()
            .fold(0u64, |acc, t| acc.saturating_add(t.byte_len()))
    }

    /// Exact file size: header plus data.
    pub fn total_len(&self) -> u64 {
        (8 + self.header_json().len() as u64).saturating_add(self.data_len())
    }

    /// Stream the whole file to `w`, generating tensor data in blocks of at
    /// most [`BLOCK_BYTES`]. Returns the number of bytes written.
    pub fn write_to<W: Write>(&self, w: &mut W) -> io::Result<u64> {
        let header = self.header_bytes();
        w.write_all(&header)?;
        let mut written = header.len() as u64;
        let max_tensor = self.tensors.iter().map(|t| t.byte_len()).max().unwrap_or(0);
        let mut buf = vec![0u8; (max_tensor.min(BLOCK_BYTES as u64)) as usize];
        for t in &self.tensors {
            let size = t.dtype.size();
            let per_block = (BLOCK_BYTES / size) as u64;
            let numel = t.numel();
            let mut e = 0u64;
            while e < numel {
                let n = (numel - e).min(per_block) as usize;
                let chunk = &mut buf[..n * size];
                t.fill_elems(e, chunk);
                w.write_all(chunk)?;
                written += chunk.len() as u64;
                e += n as u64;
            }
        }
        Ok(written)
    }

    /// A [`Read`] (and [`Seek`]) yielding the same bytes as [`ModelSpec::write_to`],
    /// generated lazily with a buffer of at most [`BLOCK_BYTES`].
    pub fn reader(&self) -> ModelReader {
        ModelReader::new(self)
    }

    /// Absolute byte range `[start, end)` of each tensor's data within the
    /// file, in file order.
    pub fn tensor_ranges(&self) -> Vec<(String, Range<u64>)> {
        let mut pos = 8 + self.header_json().len() as u64;
        self.tensors
            .iter()
            .map(|t| {
                let start = pos;
                pos = pos.saturating_add(t.byte_len());
                (t.name.clone(), start..pos)
            })
            .collect()
    }

    /// The whole file in memory (convenience for small models and tests).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(usize::try_from(self.total_len()).unwrap_or(0));
        // Writing into a Vec cannot fail.
        let _ = self.write_to(&mut v);
        v
    }
}

/// Lazily generated safetensors bytes of a [`ModelSpec`]; see [`ModelSpec::reader`].
#[derive(Debug, Clone)]
pub struct ModelReader {
    tensors: Vec<TensorSpec>,
    header: Vec<u8>,
    /// Absolute start offset of each tensor's data.
    starts: Vec<u64>,
    total: u64,
    pos: u64,
    buf: Vec<u8>,
    buf_len: usize,
    buf_start: u64,
}

impl ModelReader {
    fn new(spec: &ModelSpec) -> ModelReader {
        let header = spec.header_bytes();
        let mut starts = Vec::with_capacity(spec.tensors.len());
        let mut pos = header.len() as u64;
        for t in &spec.tensors {
            starts.push(pos);
            pos = pos.saturating_add(t.byte_len());
        }
        ModelReader {
            tensors: spec.tensors.clone(),
            header,
            starts,
            total: pos,
            pos: 0,
            buf: Vec::new(),
            buf_len: 0,
            buf_start: 0,
        }
    }

    /// Total length of the file.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// True if the file is empty (never: the header is always present).
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Regenerate the buffer so that it covers `pos` (which lies in the data section).
    fn refill(&mut self, pos: u64) {
        let idx = self.starts.partition_point(|&s| s <= pos).saturating_sub(1);
        let t = &self.tensors[idx];
        let size = t.dtype.size();
        let per_block = (BLOCK_BYTES / size) as u64;
        let elem = (pos - self.starts[idx]) / size as u64;
        let first = elem - elem % per_block;
        let n = (t.numel() - first).min(per_block) as usize;
        if self.buf.len() < n * size {
            self.buf.resize(n * size, 0);
        }
        self.buf_len = t.fill_elems(first, &mut self.buf[..n * size]);
        self.buf_start = self.starts[idx] + first * size as u64;
    }
}

impl Read for ModelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() || self.pos >= self.total {
            return Ok(0);
        }
        let hlen = self.header.len() as u64;
        if self.pos < hlen {
            let from = self.pos as usize;
            let n = out.len().min(self.header.len() - from);
            out[..n].copy_from_slice(&self.header[from..from + n]);
            self.pos += n as u64;
            return Ok(n);
        }
        let in_buf = self.pos >= self.buf_start && self.pos < self.buf_start + self.buf_len as u64;
        if !in_buf {
            self.refill(self.pos);
        }
        let off = (self.pos - self.buf_start) as usize;
        let n = out.len().min(self.buf_len - off);
        out[..n].copy_from_slice(&self.buf[off..off + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for ModelReader {
    fn seek(&mut self, from: SeekFrom) -> io::Result<u64> {
        let target = match from {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.total.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match target {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "invalid seek to a negative or overflowing position",
            )),
        }
    }
}

// ---------------------------------------------------------------------------
// Demo repository
// ---------------------------------------------------------------------------

/// One version of a model repository.
#[derive(Debug, Clone, PartialEq)]
pub struct RepoVersion {
    /// Repository name, e.g. "acme/llm-base".
    pub repo: String,
    /// Revision, "v1".."v5".
    pub rev: String,
    /// Large generated files (safetensors), by file name.
    pub files: Vec<(String, ModelSpec)>,
    /// Small files with literal contents ("config.json", "tokenizer.json").
    pub small_files: Vec<(String, Vec<u8>)>,
    /// Human-readable description of how this version relates to the others.
    pub note: String,
}

/// Name of the main weights file in every [`demo_repo`] version.
pub const DEMO_MODEL_FILE: &str = "model.safetensors";

/// A deterministic model repository in five versions:
///
/// * v1 (`acme/llm-base`): base model `model.safetensors` of ~`model_bytes`
///   (BF16), plus `config.json` and `tokenizer.json`;
/// * v2 (`acme/llm-base`): fine-tune of v1, 10% of the tensors rewritten;
/// * v3 (`acme/llm-base`): v2 with a new tensor (~1/32 of the model) inserted
///   mid-file;
/// * v4 (`acme/llm-base`): int8 quantized variant of v1 (config gains a
///   `quantization_config`);
/// * v5 (`acme/llm-fork`): byte-identical copy of v2 (all files) under
///   another repository name.
///
/// `tokenizer.json` is identical in all versions; `config.json` is identical in
/// v1, v2, v3 and v5.
pub fn demo_repo(seed: u64, model_bytes: u64) -> Vec<RepoVersion> {
    let dtype = DType::BF16;
    let dims = BaseDims::for_target(model_bytes, dtype);
    let v1 = ModelSpec::base(seed, model_bytes, dtype);
    let (v2, changed) = v1.finetune(derive_seed(seed, 2), 0.10);
    let inserted_name = "model.adapter.lora_A.weight";
    let v3 = v2.insert_tensor(
        derive_seed(seed, 3),
        inserted_name,
        (model_bytes / 32).max(1024),
    );
    let v4 = v1.quantize_int8();

    let tokenizer = tokenizer_json(seed).into_bytes();
    let config = config_json(&dims, false).into_bytes();
    let config_q = config_json(&dims, true).into_bytes();
    let small = |cfg: &Vec<u8>| {
        vec![
            ("config.json".to_string(), cfg.clone()),
            ("tokenizer.json".to_string(), tokenizer.clone()),
        ]
    };
    let version =
        |repo: &str, rev: &str, spec: &ModelSpec, cfg: &Vec<u8>, note: String| RepoVersion {
            repo: repo.to_string(),
            rev: rev.to_string(),
            files: vec![(DEMO_MODEL_FILE.to_string(), spec.clone())],
            small_files: small(cfg),
            note,
        };
    let n = v1.tensors.len();
    vec![
        version(
            "acme/llm-base",
            "v1",
            &v1,
            &config,
            format!(
                "base model: {n} tensors, hidden {}, {} layers",
                dims.hidden, dims.layers
            ),
        ),
        version(
            "acme/llm-base",
            "v2",
            &v2,
            &config,
            format!(
                "fine-tune of v1: {} of {n} tensors rewritten",
                changed.len()
            ),
        ),
        version(
            "acme/llm-base",
            "v3",
            &v3,
            &config,
            format!("v2 with tensor {inserted_name} inserted mid-file (later offsets shift)"),
        ),
        version(
            "acme/llm-base",
            "v4",
            &v4,
            &config_q,
            "int8 per-row quantization of v1 (norms unchanged)".to_string(),
        ),
        version(
            "acme/llm-fork",
            "v5",
            &v2,
            &config,
            "byte-identical copy of acme/llm-base v2 under another name".to_string(),
        ),
    ]
}

fn config_json(d: &BaseDims, quantized: bool) -> String {
    let heads = (d.hidden / 64).max(1);
    let mut s = String::new();
    s.push_str("{\n");
    s.push_str("  \"architectures\": [\n    \"LlamaForCausalLM\"\n  ],\n");
    s.push_str("  \"attention_bias\": false,\n");
    s.push_str("  \"attention_dropout\": 0.0,\n");
    s.push_str("  \"bos_token_id\": 1,\n");
    s.push_str("  \"eos_token_id\": 2,\n");
    s.push_str("  \"hidden_act\": \"silu\",\n");
    s.push_str(&format!("  \"hidden_size\": {},\n", d.hidden));
    s.push_str("  \"initializer_range\": 0.02,\n");
    s.push_str(&format!("  \"intermediate_size\": {},\n", d.intermediate));
    s.push_str("  \"max_position_embeddings\": 4096,\n");
    s.push_str("  \"model_type\": \"llama\",\n");
    s.push_str(&format!("  \"num_attention_heads\": {heads},\n"));
    s.push_str(&format!("  \"num_hidden_layers\": {},\n", d.layers));
    s.push_str(&format!("  \"num_key_value_heads\": {heads},\n"));
    s.push_str("  \"pretraining_tp\": 1,\n");
    if quantized {
        s.push_str("  \"quantization_config\": {\n");
        s.push_str("    \"bits\": 8,\n");
        s.push_str("    \"group\": \"per-row\",\n");
        s.push_str("    \"quant_method\": \"absmax\",\n");
        s.push_str("    \"scale_suffix\": \".scale\"\n");
        s.push_str("  },\n");
    }
    s.push_str("  \"rms_norm_eps\": 1e-05,\n");
    s.push_str("  \"rope_scaling\": null,\n");
    s.push_str("  \"rope_theta\": 10000.0,\n");
    s.push_str("  \"tie_word_embeddings\": false,\n");
    s.push_str("  \"torch_dtype\": \"bfloat16\",\n");
    s.push_str("  \"transformers_version\": \"4.40.0\",\n");
    s.push_str("  \"use_cache\": true,\n");
    s.push_str(&format!("  \"vocab_size\": {}\n", d.vocab));
    s.push_str("}\n");
    s
}

/// A small BPE-style tokenizer.json (~8 KiB) with pseudo-words derived from `seed`.
fn tokenizer_json(seed: u64) -> String {
    const SPECIAL: [&str; 3] = ["<unk>", "<s>", "</s>"];
    const LETTERS: &[u8] = b"etaoinshrdlcumwfgypbvkjxqz";
    let mut rng = SplitMix64::new(derive_seed(seed, 0x70CE));
    let mut words: Vec<String> = Vec::new();
    // Single characters first, then pseudo-words of 2..=7 letters, some with a
    // leading-space marker as in byte-level BPE vocabularies.
    for &c in LETTERS {
        words.push((c as char).to_string());
    }
    while words.len() < 360 {
        let r = rng.next_u64();
        let len = 2 + (r % 6) as usize;
        let mut w = String::new();
        if (r >> 8).is_multiple_of(3) {
            w.push('\u{0120}'); // "Ġ"
        }
        let mut bits = r >> 16;
        for _ in 0..len {
            // Skewed towards frequent letters.
            let i = ((bits & 0x1F) as usize * (bits as usize >> 5 & 0x1F)) / 40;
            w.push(LETTERS[i.min(LETTERS.len() - 1)] as char);
            bits = bits.rotate_right(10);
        }
        if !words.contains(&w) {
            words.push(w);
        }
    }
    let mut s = String::new();
    s.push_str("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n");
    s.push_str("  \"added_tokens\": [\n");
    for (i, t) in SPECIAL.iter().enumerate() {
        s.push_str(&format!(
            "    {{\n      \"id\": {i},\n      \"content\": \"{t}\",\n      \"single_word\": false,\n      \"lstrip\": false,\n      \"rstrip\": false,\n      \"normalized\": false,\n      \"special\": true\n    }}{}\n",
            if i + 1 < SPECIAL.len() { "," } else { "" }
        ));
    }
    s.push_str("  ],\n  \"normalizer\": null,\n");
    s.push_str("  \"pre_tokenizer\": {\n    \"type\": \"ByteLevel\",\n    \"add_prefix_space\": false,\n    \"trim_offsets\": true,\n    \"use_regex\": true\n  },\n");
    s.push_str(
        "  \"post_processor\": null,\n  \"decoder\": {\n    \"type\": \"ByteLevel\"\n  },\n",
    );
    s.push_str("  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": \"<unk>\",\n    \"vocab\": {\n");
    let total = SPECIAL.len() + words.len();
    for (i, w) in SPECIAL
        .iter()
        .map(|s| s.to_string())
        .chain(words.iter().cloned())
        .enumerate()
    {
        s.push_str("      ");
        json_string(&mut s, &w);
        s.push_str(&format!(": {i}{}\n", if i + 1 < total { "," } else { "" }));
    }
    s.push_str("    },\n    \"merges\": [\n");
    let merges: Vec<&String> = words
        .iter()
        .filter(|w| w.chars().count() >= 3)
        .take(160)
        .collect();
    for (i, w) in merges.iter().enumerate() {
        // Split each multi-letter word into a plausible (left, right) merge.
        let cut = w
            .char_indices()
            .nth(w.chars().count() / 2)
            .map_or(0, |(b, _)| b);
        let (l, r) = w.split_at(cut);
        let mut pair = String::new();
        pair.push_str(l);
        pair.push(' ');
        pair.push_str(r);
        s.push_str("      ");
        json_string(&mut s, &pair);
        s.push_str(if i + 1 < merges.len() { ",\n" } else { "\n" });
    }
    s.push_str("    ]\n  }\n}\n");
    s
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    /// Straightforward branchy reference for [`f32_to_f16`].
    fn f32_to_f16_reference(x: f32) -> u16 {
        let b = x.to_bits();
        let sign = ((b >> 16) & 0x8000) as u16;
        let exp = ((b >> 23) & 0xFF) as i32;
        let man = b & 0x007F_FFFF;
        if exp == 0xFF {
            // Inf or NaN.
            return sign | 0x7C00 | if man != 0 { 0x0200 } else { 0 };
        }
        let e = exp - 127 + 15;
        if e >= 0x1F {
            return sign | 0x7C00;
        }
        if e <= 0 {
            // Result is subnormal (or zero) in f16. f32 subnormals are far below
            // the f16 range and end up here with a shift > 24.
            let shift = (14 - e) as u32;
            if shift > 24 {
                return sign;
            }
            let m = man | 0x0080_0000;
            let mut k = m >> shift;
            let rem = m & ((1u32 << shift) - 1);
            let half = 1u32 << (shift - 1);
            if rem > half || (rem == half && (k & 1) == 1) {
                k += 1;
            }
            return sign | k as u16;
        }
        let mut h = ((e as u32) << 10) | (man >> 13);
        let rem = man & 0x1FFF;
        if rem > 0x1000 || (rem == 0x1000 && (h & 1) == 1) {
            // A carry into the exponent is correct (up to infinity).
            h += 1;
        }
        sign | h as u16
    }

    fn parse_header(bytes: &[u8]) -> (serde_json::Value, usize) {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let text = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        (serde_json::from_str(text).unwrap(), 8 + n)
    }

    fn read_all(mut r: impl Read, chunk: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; chunk];
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    fn tensor_bytes<'a>(spec: &ModelSpec, file: &'a [u8]) -> Vec<(String, &'a [u8])> {
        spec.tensor_ranges()
            .into_iter()
            .map(|(n, r)| (n, &file[r.start as usize..r.end as usize]))
            .collect()
    }

    #[test]
    fn splitmix_reference() {
        // Reference outputs of SplitMix64 with seed 0 / 1234567.
        let mut r = SplitMix64::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        let mut r = SplitMix64::new(1234567);
        assert_eq!(r.next_u64(), 6457827717110365317);
        assert_eq!(r.next_u64(), 3203168211198807973);
        let mut a = SplitMix64::new(9);
        let mut buf = [0u8; 13];
        a.fill_bytes(&mut buf);
        let mut b = SplitMix64::new(9);
        assert_eq!(buf[..8], b.next_u64().to_le_bytes());
        assert_eq!(buf[8..], b.next_u64().to_le_bytes()[..5]);
        // normal_pair uses word k of the stream.
        let mut c = SplitMix64::new(77);
        let w0 = c.next_u64();
        let w1 = c.next_u64();
        assert_eq!(mix64(77u64.wrapping_add(GAMMA)), w0);
        assert_eq!(mix64(77u64.wrapping_add(2u64.wrapping_mul(GAMMA))), w1);
    }

    #[test]
    fn float_conversions() {
        assert_eq!(f32_to_f16(1.0), 0x3C00);
        assert_eq!(f32_to_f16(-2.0), 0xC000);
        assert_eq!(f32_to_f16(0.5), 0x3800);
        assert_eq!(f32_to_f16(65504.0), 0x7BFF);
        assert_eq!(f32_to_f16(65520.0), 0x7C00);
        assert_eq!(f32_to_f16(1e10), 0x7C00);
        assert_eq!(f32_to_f16(0.1), 0x2E66);
        assert_eq!(f32_to_f16(2f32.powi(-24)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-25)), 0x0000); // tie -> even
        assert_eq!(f32_to_f16(1.5 * 2f32.powi(-25)), 0x0001);
        assert_eq!(f32_to_f16(2f32.powi(-14)), 0x0400);
        assert_eq!(f32_to_f16(1e-30), 0);
        assert_eq!(f32_to_f16(f32::from_bits(1)), 0);
        assert_eq!(f32_to_f16(f32::INFINITY), 0x7C00);
        assert!(f16_to_f32(f32_to_f16(f32::NAN)).is_nan());
        // 1 + 2^-11 is a tie between 1 and 1 + 2^-10: rounds to even (1.0).
        assert_eq!(f32_to_f16(1.0 + 2f32.powi(-11)), 0x3C00);
        assert_eq!(f32_to_f16(1.0 + 3.0 * 2f32.powi(-11)), 0x3C02);
        // Agreement with the reference on a dense sample of f32 bit patterns.
        let mut rng = SplitMix64::new(5);
        for i in 0..2_000_000u32 {
            let bits = if i < 1_000_000 {
                rng.next_u64() as u32
            } else {
                ((i - 1_000_000) << 12) ^ (i & 0xFFF)
            };
            let x = f32::from_bits(bits);
            let (fast, reference) = (f32_to_f16(x), f32_to_f16_reference(x));
            if x.is_nan() {
                assert!(
                    fast & 0x7C00 == 0x7C00
                        && fast & 0x3FF != 0
                        && fast & 0x8000 == reference & 0x8000
                );
            } else {
                assert_eq!(fast, reference, "{bits:#x}");
            }
        }
        // Round trip of every finite f16.
        for h in 0u16..=0xFFFF {
            let f = f16_to_f32(h);
            if f.is_nan() {
                continue;
            }
            assert_eq!(f32_to_f16(f), h, "{h:#x}");
        }
        assert_eq!(f32_to_bf16(1.0), 0x3F80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8000)), 0x3F80); // tie -> even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F81_8000)), 0x3F82); // tie -> even
        assert_eq!(f32_to_bf16(f32::from_bits(0x3F80_8001)), 0x3F81);
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        assert_eq!(bf16_to_f32(0xC000), -2.0);
    }

    #[test]
    fn header_and_streams_agree() {
        let spec = ModelSpec::base(1, 256 << 10, DType::BF16);
        let bytes = spec.to_bytes();
        assert_eq!(bytes.len() as u64, spec.total_len());
        let (json, data_start) = parse_header(&bytes);
        assert_eq!(data_start % 8, 0);
        assert_eq!(&bytes[..data_start], &spec.header_bytes()[..]);
        let obj = json.as_object().unwrap();
        assert_eq!(obj["__metadata__"]["format"], "pt");
        // Key order in the header text follows the spec order.
        let text = std::str::from_utf8(&bytes[8..data_start]).unwrap();
        let mut last = 0;
        for t in &spec.tensors {
            let p = text.find(&format!("\"{}\":", t.name)).unwrap();
            assert!(p > last);
            last = p;
        }
        let mut expect = 0u64;
        let ranges = spec.tensor_ranges();
        for (t, (name, r)) in spec.tensors.iter().zip(&ranges) {
            assert_eq!(&t.name, name);
            let e = &obj[&t.name];
            assert_eq!(e["dtype"], t.dtype.name());
            let shape: Vec<u64> = e["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(shape, t.shape);
            let offs = e["data_offsets"].as_array().unwrap();
            let (b, en) = (offs[0].as_u64().unwrap(), offs[1].as_u64().unwrap());
            assert_eq!(b, expect);
            assert_eq!(en - b, t.byte_len());
            assert_eq!(r.start, data_start as u64 + b);
            assert_eq!(r.end, data_start as u64 + en);
            expect = en;
        }
        assert_eq!(data_start as u64 + expect, spec.total_len());
        // Tensor data in the file equals TensorSpec::data.
        for (t, (_, d)) in spec.tensors.iter().zip(tensor_bytes(&spec, &bytes)) {
            assert_eq!(t.data(), d);
        }

        // Reader, with odd-sized reads, gives the same bytes.
        assert_eq!(read_all(spec.reader(), 777), bytes);
        assert_eq!(read_all(spec.reader(), 1 << 16), bytes);
        assert_eq!(spec.reader().len(), spec.total_len());

        // Seeking into the middle of a tensor.
        let mut r = spec.reader();
        let mid = spec.total_len() / 2 + 3;
        r.seek(SeekFrom::Start(mid)).unwrap();
        let tail = read_all(&mut r, 1000);
        assert_eq!(tail, &bytes[mid as usize..]);
        assert!(r
            .seek(SeekFrom::Current(-(spec.total_len() as i64) - 1))
            .is_err());

        // Deterministic, seed-sensitive.
        assert_eq!(ModelSpec::base(1, 256 << 10, DType::BF16).to_bytes(), bytes);
        let other = ModelSpec::base(2, 256 << 10, DType::BF16).to_bytes();
        assert_eq!(other.len(), bytes.len());
        assert_ne!(other, bytes);
        let ranges2 = ModelSpec::base(2, 256 << 10, DType::BF16).tensor_ranges();
        for ((_, a), (_, b)) in ranges.iter().zip(&ranges2) {
            assert_ne!(
                &bytes[a.start as usize..a.end as usize],
                &other[b.start as usize..b.end as usize]
            );
        }
    }

    #[test]
    fn escaping_and_block_boundaries() {
        let spec = ModelSpec {
            tensors: vec![
                TensorSpec::new("we\"ird\\name\n\u{1}é", DType::F16, vec![3, 5], 7, 1.0),
                TensorSpec::new("scalar", DType::F32, vec![], 8, 1.0),
                TensorSpec::new("empty", DType::BF16, vec![0, 4], 9, 1.0),
                // Larger than one block, odd element count.
                TensorSpec::new(
                    "big",
                    DType::BF16,
                    vec![(BLOCK_BYTES as u64 / 2) + 1001],
                    10,
                    0.02,
                ),
                TensorSpec::new("q", DType::I8, vec![3, 1001], 11, 0.02),
            ],
            metadata: vec![("k\"ey".into(), "va\\lue".into())],
        };
        let bytes = spec.to_bytes();
        let (json, start) = parse_header(&bytes);
        assert_eq!(start % 8, 0);
        assert!(json.get("we\"ird\\name\n\u{1}é").is_some());
        assert_eq!(json["__metadata__"]["k\"ey"], "va\\lue");
        assert_eq!(
            json["scalar"]["data_offsets"][1].as_u64().unwrap()
                - json["scalar"]["data_offsets"][0].as_u64().unwrap(),
            4
        );
        assert_eq!(read_all(spec.reader(), 4097), bytes);
        assert_eq!(bytes.len() as u64, spec.total_len());
        // Values at any element offset are independent of how generation is chunked.
        let t = &spec.tensors[3];
        let full = t.data();
        for &(e, n) in &[
            (0u64, 1usize),
            (1, 1),
            (1, 2),
            (3, 7),
            (524_287, 5),
            (524_288 + 1000, 1),
        ] {
            let mut b = vec![0u8; n * 2];
            let w = t.fill_elems(e, &mut b);
            assert_eq!(w, b.len().min((t.byte_len() - e * 2) as usize));
            assert_eq!(&b[..w], &full[(e * 2) as usize..(e * 2) as usize + w]);
        }
    }

    #[test]
    fn values_look_normal() {
        let t = TensorSpec::new("w", DType::BF16, vec![256, 512], 42, 0.02);
        let d = t.data();
        let vals: Vec<f64> = d
            .chunks_exact(2)
            .map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])) as f64)
            .collect();
        let n = vals.len() as f64;
        let mean = vals.iter().sum::<f64>() / n;
        let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let std = var.sqrt();
        assert!(mean.abs() < 0.0005, "mean {mean}");
        assert!((std - 0.02).abs() < 0.0005, "std {std}");
        // Fraction within one sigma ~ 68.3%, within two ~ 95.4%.
        let w1 = vals.iter().filter(|v| v.abs() < 0.02).count() as f64 / n;
        let w2 = vals.iter().filter(|v| v.abs() < 0.04).count() as f64 / n;
        assert!((w1 - 0.6827).abs() < 0.01, "{w1}");
        assert!((w2 - 0.9545).abs() < 0.005, "{w2}");
        // Kurtosis ~ 3.
        let k = vals.iter().map(|v| ((v - mean) / std).powi(4)).sum::<f64>() / n;
        assert!((k - 3.0).abs() < 0.1, "kurtosis {k}");

        // Norm weights centred on 1.
        let spec = ModelSpec::base(3, 1 << 20, DType::F32);
        let norm = spec
            .tensors
            .iter()
            .find(|t| t.name == "model.norm.weight")
            .unwrap();
        let d = norm.data();
        let vals: Vec<f32> = d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let mean = vals.iter().sum::<f32>() / vals.len() as f32;
        assert!((mean - 1.0).abs() < 0.02, "norm mean {mean}");

        // F16 and I8 encodings are consistent with the F32 values.
        let base = TensorSpec::new("x", DType::F32, vec![4096], 5, 0.5);
        let f32s: Vec<f32> = base
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let h = TensorSpec {
            dtype: DType::F16,
            ..base.clone()
        }
        .data();
        let q = TensorSpec {
            dtype: DType::I8,
            ..base.clone()
        }
        .data();
        let scale = 3.0 * 0.5 / 127.0;
        for (i, &x) in f32s.iter().enumerate() {
            let hv = f16_to_f32(u16::from_le_bytes([h[2 * i], h[2 * i + 1]]));
            assert!((hv - x).abs() <= x.abs() * 1e-3 + 1e-7);
            let qv = q[i] as i8 as f32;
            let expect = (x / scale).clamp(-127.0, 127.0);
            assert!((qv - expect).abs() <= 0.5 + 1e-3, "{qv} vs {expect}");
        }
    }

    #[test]
    fn finetune_changes_exactly_the_chosen_tensors() {
        let base = ModelSpec::base(10, 1 << 20, DType::BF16);
        let (ft, changed) = base.finetune(99, 0.1);
        let n = base.tensors.len();
        let expect = (0.1 * n as f64).round() as usize;
        assert_eq!(changed.len(), expect);
        assert_eq!(ft.total_len(), base.total_len());
        let a = base.to_bytes();
        let b = ft.to_bytes();
        assert_eq!(base.header_bytes(), ft.header_bytes());
        let (ta, tb) = (tensor_bytes(&base, &a), tensor_bytes(&ft, &b));
        let mut idx = Vec::new();
        for (i, ((na, da), (nb, db))) in ta.iter().zip(&tb).enumerate() {
            assert_eq!(na, nb);
            if changed.contains(na) {
                assert_ne!(da, db, "{na} should differ");
                idx.push(i);
            } else {
                assert_eq!(da, db, "{na} should be identical");
            }
        }
        // Spread through the file: not all in one half.
        assert!(idx.iter().any(|&i| i < n / 2) && idx.iter().any(|&i| i >= n / 2));
        // Deterministic; different seeds choose differently or change content differently.
        assert_eq!(base.finetune(99, 0.1), (ft.clone(), changed.clone()));
        assert_ne!(base.finetune(100, 0.1).0, ft);
        // Bounds: at least one, never all.
        assert_eq!(base.finetune(1, 0.0).1.len(), 1);
        assert_eq!(base.finetune(1, 1.0).1.len(), n - 1);
        assert_eq!(base.finetune(1, f64::NAN).1.len(), 1);
    }

    #[test]
    fn insert_tensor_shifts_but_keeps_data() {
        let base = ModelSpec::base(4, 1 << 20, DType::BF16);
        let ins = base.insert_tensor(5, "model.extra.weight", 20_000);
        assert_eq!(ins.tensors.len(), base.tensors.len() + 1);
        let new_t = &ins.tensors[base.tensors.len() / 2];
        assert_eq!(new_t.name, "model.extra.weight");
        assert!((new_t.byte_len() as f64 - 20_000.0).abs() < 20_000.0 * 0.05);
        assert!(ins.header_bytes().len() > base.header_bytes().len());
        let a = base.to_bytes();
        let b = ins.to_bytes();
        assert_eq!(b.len() as u64, ins.total_len());
        let ta = tensor_bytes(&base, &a);
        let tb: std::collections::HashMap<String, &[u8]> =
            tensor_bytes(&ins, &b).into_iter().collect();
        for (name, d) in &ta {
            assert_eq!(tb[name], *d, "{name}");
        }
        let ra = base.tensor_ranges();
        let rb = ins.tensor_ranges();
        assert!(rb.last().unwrap().1.start > ra.last().unwrap().1.start);
        // A duplicate name gets a suffix.
        let again = ins.insert_tensor(6, "model.extra.weight", 100);
        assert!(again
            .tensors
            .iter()
            .any(|t| t.name == "model.extra.weight_1"));
        parse_header(&again.header_bytes());
    }

    #[test]
    fn quantize_keeps_norms() {
        let base = ModelSpec::base(6, 512 << 10, DType::BF16);
        let q = base.quantize_int8();
        let a = base.to_bytes();
        let b = q.to_bytes();
        assert_eq!(b.len() as u64, q.total_len());
        let (json, _) = parse_header(&b);
        let ta: std::collections::HashMap<String, &[u8]> =
            tensor_bytes(&base, &a).into_iter().collect();
        let tb: std::collections::HashMap<String, &[u8]> =
            tensor_bytes(&q, &b).into_iter().collect();
        let mut norms = 0;
        let mut i8s = 0;
        for t in &base.tensors {
            if t.shape.len() == 1 {
                assert_eq!(ta[&t.name], tb[&t.name]);
                norms += 1;
            } else {
                assert_eq!(json[&t.name]["dtype"], "I8");
                assert_eq!(tb[&t.name].len() as u64, t.numel());
                let s = format!("{}.scale", t.name);
                assert_eq!(json[&s]["dtype"], "F32");
                assert_eq!(json[&s]["shape"][0].as_u64().unwrap(), t.shape[0]);
                i8s += 1;
            }
        }
        assert!(norms > 0 && i8s > 0);
        assert_eq!(q.tensors.len(), base.tensors.len() + i8s);
        assert!(q.total_len() < base.total_len() * 6 / 10);
        // Quantization of the same underlying values: signs agree with the original.
        let t = &base.tensors[1..]
            .iter()
            .find(|t| t.shape.len() == 2)
            .unwrap()
            .name;
        let orig = ta[t];
        let quant = tb[t];
        let mut agree = 0;
        for (i, &qv) in quant.iter().enumerate().take(2000) {
            let x = bf16_to_f32(u16::from_le_bytes([orig[2 * i], orig[2 * i + 1]]));
            let qv = qv as i8;
            if qv == 0 || (qv > 0) == (x > 0.0) {
                agree += 1;
            }
        }
        assert_eq!(agree, 2000);
        assert_eq!(q.metadata.last().unwrap().0, "quantization");
    }

    #[test]
    fn base_sizes() {
        for dtype in [DType::BF16, DType::F32, DType::F16, DType::I8] {
            let small = ModelSpec::base(1, 16 << 10, dtype);
            assert!(small.tensors.len() >= 10);
            let total = small.total_len() as f64;
            assert!(total > 12_000.0 && total < 24_000.0, "{total}");
            assert_eq!(small.to_bytes().len() as u64, small.total_len());
            for target in [1u64 << 20, 3 << 20, 64 << 20, 1 << 30, 8 << 30] {
                let s = ModelSpec::base(1, target, dtype);
                let total = s.total_len() as f64;
                assert!(
                    (total / target as f64 - 1.0).abs() < 0.03,
                    "{dtype:?} {target}: {total}"
                );
                assert!(s.tensors.len() >= 20);
                assert!(s.tensors.iter().all(|t| t.dtype == dtype));
                let names: std::collections::HashSet<&str> =
                    s.tensors.iter().map(|t| t.name.as_str()).collect();
                assert_eq!(names.len(), s.tensors.len());
                let seeds: std::collections::HashSet<u64> =
                    s.tensors.iter().map(|t| t.seed).collect();
                assert_eq!(seeds.len(), s.tensors.len());
            }
        }
        let big = ModelSpec::base(1, 4 << 30, DType::BF16);
        let largest = big.tensors.iter().map(|t| t.byte_len()).max().unwrap();
        assert!(largest > 8 << 20);
        // Degenerate targets do not panic.
        assert!(ModelSpec::base(1, 0, DType::BF16).total_len() > 0);
        assert!(ModelSpec::base(1, 100, DType::I8).total_len() > 0);
        let named = ModelSpec::base(0, 1 << 20, DType::BF16);
        let names: Vec<&str> = named.tensors.iter().map(|t| t.name.as_str()).collect();
        for expected in [
            "model.embed_tokens.weight",
            "model.layers.0.self_attn.q_proj.weight",
            "model.layers.0.self_attn.k_proj.weight",
            "model.layers.0.self_attn.v_proj.weight",
            "model.layers.0.self_attn.o_proj.weight",
            "model.layers.0.mlp.gate_proj.weight",
            "model.layers.0.mlp.up_proj.weight",
            "model.layers.0.mlp.down_proj.weight",
            "model.layers.0.input_layernorm.weight",
            "model.norm.weight",
            "lm_head.weight",
        ] {
            assert!(names.contains(&expected), "{expected}");
        }
    }

    #[test]
    fn demo_repo_relationships() {
        let vs = demo_repo(7, 1 << 20);
        assert_eq!(vs.len(), 5);
        let revs: Vec<&str> = vs.iter().map(|v| v.rev.as_str()).collect();
        assert_eq!(revs, ["v1", "v2", "v3", "v4", "v5"]);
        assert_eq!(vs[0].repo, "acme/llm-base");
        assert_ne!(vs[4].repo, vs[1].repo);
        let model = |i: usize| &vs[i].files[0].1;
        for v in &vs {
            assert_eq!(v.files.len(), 1);
            assert_eq!(v.files[0].0, DEMO_MODEL_FILE);
            let names: Vec<&str> = v.small_files.iter().map(|(n, _)| n.as_str()).collect();
            assert_eq!(names, ["config.json", "tokenizer.json"]);
            for (n, c) in &v.small_files {
                let parsed: serde_json::Value =
                    serde_json::from_slice(c).unwrap_or_else(|e| panic!("{n}: {e}"));
                assert!(parsed.is_object());
            }
            assert_eq!(v.small_files[1].1, vs[0].small_files[1].1);
            assert!(!v.note.is_empty());
        }
        let tok = &vs[0].small_files[1].1;
        assert!(tok.len() > 4096 && tok.len() < 32 * 1024, "{}", tok.len());
        assert!(vs[0].small_files[0].1.len() > 500);
        assert_eq!(vs[1].small_files, vs[0].small_files);
        assert_ne!(vs[3].small_files[0].1, vs[0].small_files[0].1);
        // v2 is a fine-tune of v1: same layout, some tensors differ.
        let (m1, m2, m3, m4, m5) = (model(0), model(1), model(2), model(3), model(4));
        assert_eq!(m1.header_bytes(), m2.header_bytes());
        let diff = m1
            .tensors
            .iter()
            .zip(&m2.tensors)
            .filter(|(a, b)| a.seed != b.seed)
            .count();
        assert!(diff >= 1 && diff < m1.tensors.len() / 5);
        // v3 = v2 + one tensor.
        assert_eq!(m3.tensors.len(), m2.tensors.len() + 1);
        assert!(m2.tensors.iter().all(|t| m3.tensors.contains(t)));
        // v4 = int8 of v1.
        assert_eq!(m4, &m1.quantize_int8());
        // v5 bytes == v2 bytes.
        assert_eq!(m5.to_bytes(), m2.to_bytes());
        assert_eq!(vs[4].small_files, vs[1].small_files);
        // Deterministic.
        assert_eq!(demo_repo(7, 1 << 20), vs);
        assert_ne!(demo_repo(8, 1 << 20)[0].files[0].1, vs[0].files[0].1);
    }
}
