//! Deterministic float data for tests, benchmarks and the test vectors of
//! `FORMAT.md` ("Test vectors" there defines the generator normatively).

/// SplitMix64: `state += 0x9E3779B97F4A7C15`, then mix. Returns the next
/// output and advances `state`.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `n` approximately normal values (mean 0, standard deviation `std`),
/// computed in f64: the sum of 12 uniforms `(next >> 11) * 2^-53` minus 6,
/// times `std`; then rounded to f32 (round to nearest, ties to even).
pub fn normal_f32_values(n: usize, seed: u64, std: f64) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            let mut z = 0.0f64;
            for _ in 0..12 {
                z += (splitmix64(&mut s) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
            }
            ((z - 6.0) * std) as f32
        })
        .collect()
}

/// f32 to bfloat16 bits, round to nearest, ties to even (no NaN handling:
/// the generator never produces NaN).
pub fn f32_to_bf16(x: f32) -> u16 {
    let b = x.to_bits();
    (b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16) as u16
}

/// f32 to IEEE binary16 bits, round to nearest, ties to even, including
/// subnormals; overflow to infinity (no NaN handling).
pub fn f32_to_f16(x: f32) -> u16 {
    let sign = ((x.to_bits() >> 16) & 0x8000) as u16;
    let a = x.abs();
    if a >= 65520.0 {
        return sign | 0x7C00;
    }
    if a < 6.103_515_6e-5 {
        // Subnormal (or rounds up to the smallest normal, whose encoding
        // 0x0400 follows on): units of 2^-24.
        return sign | (a * 16_777_216.0).round_ties_even() as u16;
    }
    let b = a.to_bits();
    let r = b + 0x0FFF + ((b >> 13) & 1);
    sign | ((r >> 13) - (112 << 10)) as u16
}

/// `n` bf16 values (little-endian bytes) with standard deviation 0.02: the
/// generator of the `FORMAT.md` test vectors.
pub fn normal_bf16(n: usize, seed: u64) -> Vec<u8> {
    normal_f32_values(n, seed, 0.02)
        .into_iter()
        .flat_map(|x| f32_to_bf16(x).to_le_bytes())
        .collect()
}

/// `n` f16 values (little-endian bytes) with standard deviation 0.02.
pub fn normal_f16(n: usize, seed: u64) -> Vec<u8> {
    normal_f32_values(n, seed, 0.02)
        .into_iter()
        .flat_map(|x| f32_to_f16(x).to_le_bytes())
        .collect()
}

/// `n` f32 values (little-endian bytes) with standard deviation 0.02.
pub fn normal_f32(n: usize, seed: u64) -> Vec<u8> {
    normal_f32_values(n, seed, 0.02)
        .into_iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}
