//! The cargo-fuzz entry point on mutated valid chunks (run with
//! `--features fuzzing`; `TESSERA_CODEC_MUTATIONS=1000000` for a long run).

use tessera_codec::testvec::{normal_bf16, normal_f16, normal_f32, splitmix64};
use tessera_codec::{fuzz_decode, planes_info, DtypeHint, Encoder, Method};

/// Valid stored chunks behind fuzz_decode's (method, raw length) prefix,
/// covering every method and plane mode.
fn seeds() -> Vec<Vec<u8>> {
    let inputs: Vec<(Vec<u8>, DtypeHint)> = vec![
        (normal_bf16(900, 1)[1..].to_vec(), DtypeHint::Bf16),
        (normal_f32(500, 2)[3..].to_vec(), DtypeHint::F32),
        (normal_f16(800, 3), DtypeHint::F16),
        (
            normal_bf16(600, 3)
                .chunks(2)
                .flat_map(|c| [0, 0, c[0], c[1]])
                .collect(),
            DtypeHint::F32,
        ),
        (b"abcabcabd text text ".repeat(50), DtypeHint::Unknown),
        (
            (0..3000u32)
                .flat_map(|i| {
                    let v = if (i / 40) % 2 == 0 {
                        0u16
                    } else {
                        (i as u16).wrapping_mul(7919)
                    };
                    v.to_le_bytes()
                })
                .collect(),
            DtypeHint::Bf16,
        ),
    ];
    let mut enc = Encoder::new(Default::default()).unwrap();
    let mut modes = Vec::new();
    let mut methods = Vec::new();
    let mut out = Vec::new();
    for (raw, hint) in &inputs {
        let e = enc.encode(raw, *hint).unwrap();
        methods.push(e.method);
        modes.extend(planes_info(e.bytes).map(|i| i.modes).unwrap_or_default());
        let mut s = vec![e.method.code()];
        s.extend_from_slice(&(raw.len() as u32).to_le_bytes()[..3]);
        s.extend_from_slice(e.bytes);
        out.push(s);
    }
    for m in 0..4u8 {
        assert!(modes.contains(&m), "seeds cover plane mode {m}");
    }
    assert!(methods.contains(&Method::Zstd) && methods.contains(&Method::FloatPlanes));
    out
}

#[test]
fn fuzz_decode_survives_mutations() {
    let seeds = seeds();
    for s in &seeds {
        fuzz_decode(s);
    }
    fuzz_decode(&[]);
    fuzz_decode(&[2, 0, 0, 0]);
    let iters: usize = std::env::var("TESSERA_CODEC_MUTATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3000);
    let mut st = 42u64;
    for it in 0..iters {
        let mut d = seeds[it % seeds.len()].clone();
        for _ in 0..1 + splitmix64(&mut st) % 8 {
            let r = splitmix64(&mut st);
            let i = (r >> 8) as usize % d.len();
            match r % 4 {
                0 => d[i] ^= 1 << ((r >> 40) % 8),
                1 => d[i] = (r >> 32) as u8,
                2 => d.truncate(i.max(4)),
                _ => d.insert(i.max(4).min(d.len()), (r >> 32) as u8),
            }
        }
        fuzz_decode(&d);
    }
}
