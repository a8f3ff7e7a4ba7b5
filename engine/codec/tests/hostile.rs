//! Hostile stored bytes: truncated, bit-flipped, garbage, lying headers.
//! The decoder must return an error or, at worst, other bytes of the right
//! length; never panic, never hold more than the raw length.

use proptest::prelude::*;
use tessera_codec::testvec::{normal_bf16, normal_f32, splitmix64};
use tessera_codec::{planes_info, CodecError, Decoder, DtypeHint, Encoder, EncoderOptions, Method};

/// Decodes and checks the contract; returns whether it succeeded.
fn decode_checked(dec: &mut Decoder, method: u8, stored: &[u8], raw_len: usize) -> bool {
    let mut out = Vec::new();
    let r = dec.decode(method, stored, raw_len, &mut out);
    // The caller's buffer and the scratch never exceed the raw length (the
    // zstd method reserves exactly raw_len; the others build exactly it).
    assert!(out.capacity() <= raw_len.max(if method == 0 { stored.len() } else { 0 }));
    assert!(dec.scratch_capacity() <= raw_len.max(previous_max()));
    match r {
        Ok(()) => {
            assert_eq!(out.len(), raw_len);
            true
        }
        Err(e) => {
            // Errors render.
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

/// Largest raw length decoded in these tests with a shared decoder (the
/// scratch buffer is kept between calls).
fn previous_max() -> usize {
    64 * 1024
}

/// Valid encodings of various kinds: (method, stored, raw).
fn samples() -> Vec<(Method, Vec<u8>, Vec<u8>)> {
    let mut enc = Encoder::new(EncoderOptions::default()).unwrap();
    let mut v = Vec::new();
    let mut push = |enc: &mut Encoder, raw: Vec<u8>, hint: DtypeHint| {
        let e = enc.encode(&raw, hint).unwrap();
        let (m, s) = (e.method, e.bytes.to_vec());
        v.push((m, s, raw));
    };
    // Huffman planes, bf16 with a phase and a tail.
    push(
        &mut enc,
        normal_bf16(1500, 1)[1..2998].to_vec(),
        DtypeHint::Bf16,
    );
    // f32: four planes.
    push(&mut enc, normal_f32(700, 2)[3..].to_vec(), DtypeHint::F32);
    // Constant and Huffman planes (f32 upcast from bf16).
    let bf = normal_bf16(600, 3);
    push(
        &mut enc,
        bf.chunks(2).flat_map(|c| [0, 0, c[0], c[1]]).collect(),
        DtypeHint::F32,
    );
    // A zstd plane: a skewed plane with runs.
    let mut s = 4u64;
    let runs: Vec<u8> = (0..3000)
        .flat_map(|i| {
            let x = if (i / 50) % 2 == 0 {
                0u16
            } else {
                splitmix64(&mut s) as u16
            };
            x.to_le_bytes()
        })
        .collect();
    push(&mut enc, runs, DtypeHint::Bf16);
    // Whole-chunk zstd.
    push(
        &mut enc,
        b"some text, some text, more text ".repeat(60),
        DtypeHint::Unknown,
    );
    let modes: Vec<Vec<u8>> = v
        .iter()
        .filter(|(m, ..)| *m == Method::FloatPlanes)
        .map(|(_, s, _)| planes_info(s).unwrap().modes)
        .collect();
    let all: Vec<u8> = modes.concat();
    for mode in 0..4u8 {
        assert!(
            all.contains(&mode),
            "samples cover plane mode {mode}: {modes:?}"
        );
    }
    assert!(v.iter().any(|(m, ..)| *m == Method::Zstd));
    v
}

#[test]
fn samples_roundtrip() {
    let mut dec = Decoder::new().unwrap();
    for (m, s, raw) in samples() {
        let mut out = Vec::new();
        dec.decode(m.code(), &s, raw.len(), &mut out).unwrap();
        assert_eq!(out, raw);
    }
}

#[test]
fn every_truncation_is_an_error() {
    let mut dec = Decoder::new().unwrap();
    for (m, s, raw) in samples() {
        for cut in 0..s.len() {
            assert!(
                !decode_checked(&mut dec, m.code(), &s[..cut], raw.len()),
                "{m:?} truncated to {cut} of {} decoded",
                s.len()
            );
        }
    }
}

#[test]
fn trailing_bytes_are_an_error() {
    let mut dec = Decoder::new().unwrap();
    for (m, s, raw) in samples() {
        let mut longer = s.clone();
        longer.push(0);
        assert!(
            !decode_checked(&mut dec, m.code(), &longer, raw.len()),
            "{m:?}"
        );
    }
}

#[test]
fn bit_flips_never_panic() {
    let mut dec = Decoder::new().unwrap();
    for (m, s, raw) in samples() {
        let mut errors = 0;
        let mut flips = 0;
        let step = (s.len() / 400).max(1);
        for i in (0..s.len()).step_by(step) {
            for bit in 0..8 {
                let mut bad = s.clone();
                bad[i] ^= 1 << bit;
                flips += 1;
                if !decode_checked(&mut dec, m.code(), &bad, raw.len()) {
                    errors += 1;
                }
            }
        }
        // Headers, tables and lengths are checked: many flips are caught
        // (raw plane bytes are not checked here; the engine's hash is).
        assert!(errors > 0, "{m:?}: no flip of {flips} detected");
    }
}

#[test]
fn wrong_raw_length_and_method_are_errors() {
    let mut dec = Decoder::new().unwrap();
    for (m, s, raw) in samples() {
        for len in [0, raw.len() - 1, raw.len() + 1, 1 << 24] {
            assert!(
                !decode_checked(&mut dec, m.code(), &s, len),
                "{m:?} as {len}"
            );
        }
        let mut out = Vec::new();
        assert_eq!(
            dec.decode(9, &s, raw.len(), &mut out),
            Err(CodecError::UnknownMethod(9))
        );
        // Another method's decoder on these bytes.
        for other in Method::ALL {
            if other != m {
                decode_checked(&mut dec, other.code(), &s, raw.len());
            }
        }
    }
}

#[test]
fn lying_headers_are_errors() {
    let mut dec = Decoder::new().unwrap();
    let (_, s, raw) = samples().into_iter().next().unwrap();
    let cases: Vec<(usize, u8)> = vec![
        (0, 3),     // width 3
        (0, 8),     // width 8
        (1, 2),     // unknown transform
        (2, 2),     // phase == width
        (3, 1),     // flags
        (8 + 1, 7), // plane mode 7 (after the one phase byte)
    ];
    for (at, v) in cases {
        let mut bad = s.clone();
        bad[at] = v;
        assert!(
            !decode_checked(&mut dec, 2, &bad, raw.len()),
            "byte {at} = {v}"
        );
    }
    // Width 1 with the rotation.
    let mut bad = s.clone();
    bad[0] = 1;
    bad[1] = 1;
    assert!(!decode_checked(&mut dec, 2, &bad, raw.len()));
    // A huge plane payload length.
    let info = planes_info(&s).unwrap();
    assert_eq!(info.modes, vec![0, 2]);
    let n = (raw.len() - 1) / 2;
    let at = 8 + 1 + 1 + n + 1;
    let mut bad = s.clone();
    bad[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    assert_eq!(
        dec.decode(2, &bad, raw.len(), &mut Vec::new()),
        Err(CodecError::Truncated)
    );
    // A raw length far above the stored bytes: no allocation by the claim.
    let mut out = Vec::new();
    let mut claim = s.clone();
    claim[4..8].copy_from_slice(&(16u32 << 20).to_le_bytes());
    assert!(dec.decode(2, &claim, 16 << 20, &mut out).is_err());
    assert!(out.capacity() <= 16 << 20);
}

#[test]
fn tiny_constant_chunk_may_claim_the_maximum() {
    // 8-byte header + two constant planes describe 16 MiB of zeros: valid,
    // and decoding allocates exactly the raw length.
    let raw_len = 16usize << 20;
    let mut s = vec![2u8, 1, 0, 0];
    s.extend_from_slice(&(raw_len as u32).to_le_bytes());
    s.extend_from_slice(&[1, 0, 1, 0]);
    let mut dec = Decoder::new().unwrap();
    let mut out = Vec::new();
    dec.decode(2, &s, raw_len, &mut out).unwrap();
    assert_eq!(out.len(), raw_len);
    assert!(out.iter().all(|&b| b == 0));
    assert!(out.capacity() == raw_len);
    assert!(dec.scratch_capacity() <= raw_len);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn garbage_never_panics(method in 0u8..4, raw_len in 0usize..5000,
                            data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut dec = Decoder::new().unwrap();
        decode_checked(&mut dec, method, &data, raw_len);
    }

    #[test]
    fn garbage_after_a_valid_header_never_panics(
        width in prop_oneof![Just(1u8), Just(2u8), Just(4u8)],
        transform in 0u8..2, phase in 0u8..4, raw_len in 0usize..3000,
        modes in proptest::collection::vec(0u8..4, 4),
        body in proptest::collection::vec(any::<u8>(), 0..800),
    ) {
        // A well-formed header and plane modes, then arbitrary bytes: this
        // reaches the Huffman and zstd plane decoders.
        let mut s = vec![width, transform, phase % width, 0];
        s.extend_from_slice(&(raw_len as u32).to_le_bytes());
        s.extend(std::iter::repeat_n(0u8, (phase % width) as usize));
        let mut rest = body.as_slice();
        for &m in &modes[..width as usize] {
            s.push(m);
            if m >= 2 {
                let take = rest.len().min(rest.first().copied().unwrap_or(0) as usize * 3);
                s.extend_from_slice(&(take as u32).to_le_bytes());
                s.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
            } else if m == 1 {
                s.push(rest.first().copied().unwrap_or(0));
            } else {
                s.extend_from_slice(rest);
                rest = &[];
            }
        }
        let mut dec = Decoder::new().unwrap();
        decode_checked(&mut dec, 2, &s, raw_len);
    }

    #[test]
    fn corrupted_huffman_streams_never_panic(seed in any::<u64>(), hits in 1usize..20) {
        let mut dec = Decoder::new().unwrap();
        let (m, s, raw) = samples().into_iter().next().unwrap();
        let mut bad = s.clone();
        let mut st = seed;
        for _ in 0..hits {
            let i = 8 + (splitmix64(&mut st) as usize % (bad.len() - 8));
            bad[i] = splitmix64(&mut st) as u8;
        }
        decode_checked(&mut dec, m.code(), &bad, raw.len());
    }
}
