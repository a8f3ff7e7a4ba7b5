//! The cargo-fuzz entry point on a few seeds (run with `--features fuzzing`).

use tessera_codec::testvec::{normal_bf16, splitmix64};

#[test]
fn fuzz_decode_accepts_seeds() {
    let mut seeds: Vec<Vec<u8>> = vec![vec![], vec![2], vec![2, 0, 0, 0]];
    // Valid stored chunks behind a (method, raw length) prefix.
    let raw = normal_bf16(700, 1);
    let mut enc = tessera_codec::Encoder::new(Default::default()).unwrap();
    let e = enc.encode(&raw, tessera_codec::DtypeHint::Bf16).unwrap();
    let mut s = vec![e.method.code()];
    s.extend_from_slice(&(raw.len() as u32).to_le_bytes()[..3]);
    s.extend_from_slice(e.bytes);
    seeds.push(s.clone());
    let mut st = 3u64;
    for _ in 0..200 {
        let mut bad = s.clone();
        let i = splitmix64(&mut st) as usize % bad.len();
        bad[i] ^= 1 << (splitmix64(&mut st) % 8);
        seeds.push(bad);
    }
    for seed in &seeds {
        tessera_codec::fuzz_decode(seed);
    }
    assert_eq!(seeds.len(), 204);
}
