//! Round trips through the encoder and decoder, and the encoder's choices
//! on typical data.

use proptest::prelude::*;
use tessera_codec::testvec::{normal_bf16, normal_f16, normal_f32, splitmix64};
use tessera_codec::{
    planes_info, CodecError, Decoder, DtypeHint, Encoder, EncoderOptions, Hint, Method, MAX_RAW_LEN,
};

const HINTS: [DtypeHint; 7] = [
    DtypeHint::Unknown,
    DtypeHint::Bf16,
    DtypeHint::F16,
    DtypeHint::F32,
    DtypeHint::I8,
    DtypeHint::Quantized,
    DtypeHint::Incompressible,
];

/// Encodes `raw` with `hint`, decodes it, checks equality and the size
/// rule; returns the method and stored length.
fn check(enc: &mut Encoder, dec: &mut Decoder, raw: &[u8], hint: Hint) -> (Method, usize) {
    let e = enc.encode(raw, hint).expect("encode");
    let (method, stored) = (e.method, e.bytes.to_vec());
    if method == Method::None {
        assert_eq!(stored, raw);
    } else {
        let limit = (raw.len() as f64 * 0.95).floor() as usize;
        assert!(
            stored.len() <= limit,
            "{method:?} {} of {}",
            stored.len(),
            raw.len()
        );
    }
    let mut out = Vec::new();
    dec.decode(method.code(), &stored, raw.len(), &mut out)
        .unwrap_or_else(|e| panic!("{method:?} with {hint:?} does not decode: {e}"));
    assert_eq!(out, raw, "{method:?} with {hint:?}");
    assert!(dec.scratch_capacity() <= raw.len());
    (method, stored.len())
}

fn codec() -> (Encoder, Decoder) {
    (
        Encoder::new(EncoderOptions::default()).unwrap(),
        Decoder::new().unwrap(),
    )
}

fn random(n: usize, seed: u64) -> Vec<u8> {
    let mut s = seed;
    (0..n).map(|_| splitmix64(&mut s) as u8).collect()
}

/// All hints, with unknown and every explicit phase, and every forced method.
fn check_all(raw: &[u8]) {
    let (mut enc, mut dec) = codec();
    for dtype in HINTS {
        for phase in [None, Some(0), Some(1), Some(2), Some(3)] {
            check(&mut enc, &mut dec, raw, Hint { dtype, phase });
        }
    }
    for m in Method::ALL {
        for (dtype, phase) in [
            (DtypeHint::Unknown, None),
            (DtypeHint::Bf16, None),
            (DtypeHint::F32, None),
            (DtypeHint::F32, Some(3)),
        ] {
            let e = enc
                .encode_with(raw, m, Hint { dtype, phase })
                .expect("encode_with");
            assert_eq!(e.method, m);
            let stored = e.bytes.to_vec();
            let mut out = Vec::new();
            dec.decode(m.code(), &stored, raw.len(), &mut out)
                .unwrap_or_else(|e| panic!("forced {m:?}/{dtype:?}: {e}"));
            assert_eq!(out, raw, "forced {m:?}/{dtype:?}");
        }
    }
}

fn floats(kind: u8, n: usize, seed: u64) -> Vec<u8> {
    match kind % 3 {
        0 => normal_bf16(n, seed),
        1 => normal_f16(n, seed),
        _ => normal_f32(n, seed),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_roundtrip(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
        check_all(&data);
    }

    #[test]
    fn constant_bytes_roundtrip(b in any::<u8>(), n in 0usize..20_000) {
        check_all(&vec![b; n]);
    }

    #[test]
    fn float_like_roundtrip(kind in 0u8..3, n in 0usize..12_000, seed in any::<u64>(),
                            skip in 0usize..4, cut in 0usize..4) {
        // A window that starts and ends mid-element, as content-defined
        // chunks do.
        let data = floats(kind, n, seed);
        let end = data.len().saturating_sub(cut).max(skip.min(data.len()));
        check_all(&data[skip.min(data.len())..end]);
    }

    #[test]
    fn small_alphabets_roundtrip(n in 0usize..30_000, k in 1u64..40, seed in any::<u64>()) {
        // Few distinct values, skewed: long Huffman codes, zstd planes, runs.
        let mut s = seed;
        let data: Vec<u8> = (0..n)
            .map(|_| (splitmix64(&mut s) % k).trailing_zeros() as u8 ^ (k as u8))
            .collect();
        check_all(&data);
    }

    #[test]
    fn mixed_content_roundtrip(seed in any::<u64>(), a in 0usize..3000, b in 0usize..3000) {
        // Text, then bf16, then random bytes: a chunk across a header and
        // tensors of different kinds.
        let mut data = br#"{"model.embed_tokens.weight":{"dtype":"BF16","shape":[32,64]}}"#.repeat(a / 60 + 1);
        data.extend(normal_bf16(b, seed));
        data.extend(random(a, seed));
        check_all(&data);
    }
}

#[test]
fn bf16_weights_compress_below_070() {
    let (mut enc, mut dec) = codec();
    let raw = normal_bf16(32 * 1024, 1);
    for hint in [Hint::new(DtypeHint::Bf16), Hint::new(DtypeHint::Unknown)] {
        let (m, len) = check(&mut enc, &mut dec, &raw, hint);
        assert_eq!(m, Method::FloatPlanes);
        assert!((len as f64) < 0.70 * raw.len() as f64, "{hint:?}: {len}");
    }
    // Starting mid-element: the phase is found from the sample or given.
    let odd = &raw[1..raw.len() - 1];
    for hint in [
        Hint::new(DtypeHint::Bf16),
        Hint::new(DtypeHint::Unknown),
        Hint::at_offset(DtypeHint::Bf16, 1),
    ] {
        let e = enc.encode(odd, hint).unwrap();
        let info = planes_info(e.bytes).expect("planes");
        assert_eq!(
            (info.width, info.transform, info.phase),
            (2, 1, 1),
            "{hint:?}"
        );
        assert!((e.bytes.len() as f64) < 0.70 * odd.len() as f64);
        let stored = e.bytes.to_vec();
        let mut out = Vec::new();
        dec.decode(2, &stored, odd.len(), &mut out).unwrap();
        assert_eq!(out, odd);
        // One coded plane is decoded inside the output: no scratch at all.
        let mut fresh = Decoder::new().unwrap();
        fresh.decode(2, &stored, odd.len(), &mut out).unwrap();
        assert_eq!(out, odd);
        assert_eq!(fresh.scratch_capacity(), 0);
        assert_eq!(out.capacity(), odd.len());
    }
}

#[test]
fn f32_and_f16_are_recognized() {
    let (mut enc, mut dec) = codec();
    let f32s = normal_f32(16 * 1024, 2);
    for hint in [DtypeHint::F32, DtypeHint::Unknown] {
        let e = enc.encode(&f32s[2..], hint).unwrap();
        let info = planes_info(e.bytes).expect("planes");
        // Phases 0 and 2 both put the exponent in a whole byte after the
        // rotation, and cost the same.
        assert_eq!(info.width, 4, "{hint:?}");
        assert!((e.bytes.len() as f64) < 0.86 * f32s.len() as f64);
        check(&mut enc, &mut dec, &f32s[2..], hint.into());
    }
    let f16s = normal_f16(32 * 1024, 3);
    let (m, len) = check(&mut enc, &mut dec, &f16s, DtypeHint::F16.into());
    assert_eq!(m, Method::FloatPlanes);
    assert!((len as f64) < 0.90 * f16s.len() as f64, "{len}");
}

#[test]
fn f32_holding_bf16_values_uses_constant_planes() {
    // f32 tensors upcast from bf16: the two low bytes are always zero.
    let (mut enc, mut dec) = codec();
    let bf = normal_bf16(16 * 1024, 4);
    let raw: Vec<u8> = bf.chunks(2).flat_map(|c| [0, 0, c[0], c[1]]).collect();
    let e = enc.encode(&raw, DtypeHint::F32).unwrap();
    let info = planes_info(e.bytes).expect("planes");
    // Rotated, the zero bytes become the sign plane (one bit an element)
    // and a constant plane.
    assert!(info.modes.contains(&1), "{info:?}");
    assert!(e.bytes.len() < raw.len() * 36 / 100, "{}", e.bytes.len());
    check(&mut enc, &mut dec, &raw, DtypeHint::F32.into());
    check(&mut enc, &mut dec, &raw, DtypeHint::Unknown.into());
}

#[test]
fn incompressible_data_is_stored_raw() {
    let (mut enc, mut dec) = codec();
    let noise = random(64 * 1024, 9);
    for dtype in HINTS {
        let (m, _) = check(&mut enc, &mut dec, &noise, dtype.into());
        assert_eq!(m, Method::None, "{dtype:?}");
    }
    // Block-quantized-like data: a random f16 scale and 16 random nibble
    // bytes per 18-byte block (GGUF Q4_0).
    let mut s = 5u64;
    let q: Vec<u8> = (0..3641)
        .flat_map(|_| {
            let mut b = f32_to_f16_bits(0.001 + (splitmix64(&mut s) % 1000) as f32 * 1e-5).to_vec();
            b.extend((0..16).map(|_| splitmix64(&mut s) as u8));
            b
        })
        .collect();
    for dtype in [DtypeHint::Unknown, DtypeHint::Quantized] {
        let (m, _) = check(&mut enc, &mut dec, &q, dtype.into());
        assert_eq!(m, Method::None, "{dtype:?}");
    }
}

fn f32_to_f16_bits(x: f32) -> [u8; 2] {
    tessera_codec::testvec::f32_to_f16(x).to_le_bytes()
}

#[test]
fn text_and_zeros_go_to_zstd_or_tiny_planes() {
    let (mut enc, mut dec) = codec();
    let text = br#"{"__metadata__":{"format":"pt"},"layers.0.weight":{"dtype":"BF16","shape":[4096,4096],"data_offsets":[0,33554432]}}"#.repeat(200);
    let (m, len) = check(&mut enc, &mut dec, &text, DtypeHint::Unknown.into());
    assert_eq!(m, Method::Zstd);
    assert!(len < text.len() / 10);
    let zeros = vec![0u8; 64 * 1024];
    for dtype in HINTS {
        let (m, len) = check(&mut enc, &mut dec, &zeros, dtype.into());
        if dtype != DtypeHint::Incompressible {
            assert_ne!(m, Method::None, "{dtype:?}");
            assert!(len < 100, "{dtype:?}: {len}");
        }
    }
}

#[test]
fn int8_weights_use_one_plane() {
    let (mut enc, mut dec) = codec();
    // Per-row quantized normal weights: values concentrate near zero.
    let raw: Vec<u8> = tessera_codec::testvec::normal_f32_values(64 * 1024, 6, 1.0)
        .into_iter()
        .map(|x| (x * 127.0 / 3.0).round().clamp(-127.0, 127.0) as i8 as u8)
        .collect();
    for dtype in [DtypeHint::I8, DtypeHint::Unknown] {
        let (m, len) = check(&mut enc, &mut dec, &raw, dtype.into());
        assert_ne!(m, Method::None, "{dtype:?}");
        assert!((len as f64) < 0.95 * raw.len() as f64, "{dtype:?}: {len}");
    }
}

#[test]
fn min_savings_is_respected() {
    let raw = normal_bf16(32 * 1024, 8);
    let mut enc = Encoder::new(EncoderOptions {
        min_savings: 0.5,
        ..EncoderOptions::default()
    })
    .unwrap();
    assert_eq!(
        enc.encode(&raw, DtypeHint::Bf16).unwrap().method,
        Method::None
    );
    let mut enc = Encoder::new(EncoderOptions {
        min_savings: 0.2,
        ..EncoderOptions::default()
    })
    .unwrap();
    assert_eq!(
        enc.encode(&raw, DtypeHint::Bf16).unwrap().method,
        Method::FloatPlanes
    );
}

#[test]
fn limits_and_codes() {
    let (mut enc, mut dec) = codec();
    let big = vec![0u8; MAX_RAW_LEN + 1];
    assert_eq!(
        enc.encode(&big, DtypeHint::Unknown).unwrap_err(),
        CodecError::TooLarge {
            len: MAX_RAW_LEN + 1
        }
    );
    let mut out = Vec::new();
    assert_eq!(
        dec.decode(0, &[], MAX_RAW_LEN + 1, &mut out),
        Err(CodecError::TooLarge {
            len: MAX_RAW_LEN + 1
        })
    );
    assert_eq!(
        dec.decode(3, &[], 0, &mut out),
        Err(CodecError::UnknownMethod(3))
    );
    for m in Method::ALL {
        assert_eq!(Method::from_code(m.code()), Some(m));
    }
    assert_eq!(
        [
            Method::None.code(),
            Method::Zstd.code(),
            Method::FloatPlanes.code()
        ],
        [0, 1, 2]
    );
    assert_eq!(Method::from_code(3), None);
    // Chunks at the size limit still encode and decode.
    let raw = normal_bf16(MAX_RAW_LEN / 2, 10);
    let (m, len) = check(&mut enc, &mut dec, &raw, DtypeHint::Unknown.into());
    assert_eq!(m, Method::FloatPlanes);
    assert!((len as f64) < 0.70 * raw.len() as f64);
}

#[test]
fn zstd_method_is_a_plain_zstd_frame() {
    // Byte-compatible with what the engine stores today.
    let (mut enc, _) = codec();
    let text = b"tessera chunk ".repeat(1000);
    let e = enc.encode(&text, DtypeHint::Unknown).unwrap();
    assert_eq!(e.method, Method::Zstd);
    let back = zstd::bulk::decompress(e.bytes, text.len()).unwrap();
    assert_eq!(back, text);
    // And frames written by zstd itself decode.
    let frame = zstd::bulk::compress(&text, 19).unwrap();
    let mut out = Vec::new();
    Decoder::new()
        .unwrap()
        .decode(1, &frame, text.len(), &mut out)
        .unwrap();
    assert_eq!(out, text);
}

#[test]
fn hints_from_headers() {
    assert_eq!(DtypeHint::from_safetensors("BF16"), DtypeHint::Bf16);
    assert_eq!(DtypeHint::from_safetensors("F32"), DtypeHint::F32);
    assert_eq!(DtypeHint::from_safetensors("I64"), DtypeHint::Unknown);
    assert_eq!(DtypeHint::from_gguf_type(0), DtypeHint::F32);
    assert_eq!(DtypeHint::from_gguf_type(1), DtypeHint::F16);
    assert_eq!(DtypeHint::from_gguf_type(30), DtypeHint::Bf16);
    assert_eq!(DtypeHint::from_gguf_type(2), DtypeHint::Quantized);
    assert_eq!(DtypeHint::from_gguf_type(12), DtypeHint::Quantized);
    assert_eq!(Hint::at_offset(DtypeHint::Bf16, 7).phase, Some(1));
    assert_eq!(Hint::at_offset(DtypeHint::F32, 7).phase, Some(1));
    assert_eq!(Hint::at_offset(DtypeHint::F32, 8).phase, Some(0));
    assert_eq!(Hint::at_offset(DtypeHint::F32, 5).phase, Some(3));
    assert_eq!(Hint::at_offset(DtypeHint::I8, 5).phase, None);
}

#[test]
fn repetitive_floats_take_the_smaller_of_planes_and_zstd() {
    // f16 weights with 16 distinct values in runs, as weight-clustered
    // models store them: long repeats, which zstd finds.
    let (mut enc, mut dec) = codec();
    let centers: Vec<[u8; 2]> = (0..16)
        .map(|i| tessera_codec::testvec::f32_to_f16((i as f32 - 7.5) * 0.01).to_le_bytes())
        .collect();
    let mut s = 11u64;
    let mut raw = Vec::new();
    while raw.len() < 64 * 1024 {
        let r = splitmix64(&mut s);
        for _ in 0..1 + r % 6 {
            raw.extend_from_slice(&centers[(r >> 8) as usize % 16]);
        }
    }
    let whole = zstd::bulk::compress(&raw, 3).unwrap().len();
    let (m, len) = check(&mut enc, &mut dec, &raw, DtypeHint::Unknown.into());
    assert_ne!(m, Method::None);
    assert!(len <= whole, "{m:?}: {len} > zstd {whole}");
    let (_, hinted) = check(&mut enc, &mut dec, &raw, DtypeHint::F16.into());
    assert!(hinted < raw.len() / 2, "{hinted}");
}

#[test]
fn tiny_chunks_roundtrip() {
    // Shorter than an element, than the phase, than the minimum coded size.
    for n in 0..=40 {
        check_all(&random(n, n as u64));
        check_all(&vec![0u8; n]);
        check_all(&normal_f32(n / 4 + 1, 1)[..n]);
    }
}
