//! Runs the fuzz entry point over every builder's output and deterministic
//! mutations of it (bit flips, truncations, splices), and over random
//! bytes behind each format's magic. `fuzz_sniff` panics on a split
//! dependence or a broken invariant; so does any panic inside the sniffer.

mod common;

use common::*;
use proptest::prelude::*;
use tessera_model::fuzz_sniff;

fn seeds() -> Vec<Vec<u8>> {
    let f32s = |n: usize| -> Vec<u8> { (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect() };
    let mut v = Vec::new();
    v.push(
        safetensors(
            &[
                StTensor {
                    name: "a",
                    dtype: "F32",
                    shape: vec![2, 2],
                    data: f32s(4),
                },
                StTensor {
                    name: "b",
                    dtype: "I8",
                    shape: vec![3],
                    data: vec![1, 2, 3],
                },
            ],
            &[("format", "pt")],
        )
        .0,
    );
    v.push(
        gguf(
            3,
            &[
                ("general.name", Gv::Str("t")),
                ("tokenizer.ggml.tokens", Gv::ArrStr(vec!["a", "b"])),
                ("general.alignment", Gv::U32(32)),
            ],
            &[
                GTensor {
                    name: "w",
                    dims: vec![32, 2],
                    ty: 8,
                    len: 68,
                },
                GTensor {
                    name: "n",
                    dims: vec![4],
                    ty: 0,
                    len: 16,
                },
            ],
            32,
        )
        .0,
    );
    let a = npy("<f4", &[4], &f32s(4));
    let o = npy("|O", &[1], b"\x80\x03]q\x00K\x01a.");
    v.push(a.clone());
    v.push(o.clone());
    v.push(
        zip(&[
            ZMember::stored("a.npy", a.clone()),
            ZMember::deflated("o.npy", o.clone()),
        ])
        .0,
    );
    v.push(
        zip(&[
            ZMember {
                descriptor: true,
                ..ZMember::stored("a.npy", a)
            },
            ZMember {
                descriptor: true,
                ..ZMember::deflated("o.npy", o)
            },
        ])
        .0,
    );
    v.push(
        zip(&[
            ZMember::stored("archive/data.pkl", torch_state_dict_pickle()),
            ZMember::stored("archive/data/0", f32s(6)),
            ZMember::stored("archive/version", b"3\n".to_vec()),
        ])
        .0,
    );
    v.push(torch_state_dict_pickle());
    v.push(b"cos\nsystem\n(S'id'\ntR.".to_vec());
    v.push(b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93h\x00h\x01\x93)R.".to_vec());
    v.push(tflite(3, "desc", 64));
    v.push(onnx(&[("w", vec![2, 2])]).0);
    v
}

/// xorshift, to mutate deterministically.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn seeds_and_mutations() {
    let seeds = seeds();
    // TESSERA_MODEL_FUZZ_ITERS=N runs N mutations per seed (default 200).
    let iters: usize = std::env::var("TESSERA_MODEL_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let mut rng = Rng(0x5eed_1234_abcd_ef01 ^ iters as u64);
    let mut runs = 0;
    for seed in &seeds {
        fuzz_sniff(seed);
        runs += 1;
        for _ in 0..iters {
            let mut m = seed.clone();
            match rng.below(4) {
                0 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(m.len());
                        m[i] ^= 1 << rng.below(8);
                    }
                }
                1 => m.truncate(rng.below(m.len())),
                2 => {
                    let i = rng.below(m.len());
                    let v = [0u8, 0xff, 0x7f, 0x80][rng.below(4)];
                    m.splice(i..i, std::iter::repeat_n(v, 1 + rng.below(9)));
                }
                _ => {
                    // splice a piece of another seed in
                    let other = &seeds[rng.below(seeds.len())];
                    let a = rng.below(other.len());
                    let b = (a + rng.below(64)).min(other.len());
                    let i = rng.below(m.len());
                    m.splice(i..i, other[a..b].iter().copied());
                }
            }
            fuzz_sniff(&m);
            runs += 1;
        }
    }
    assert_eq!(runs, seeds.len() * (iters + 1));
}

const MAGICS: &[&[u8]] = &[
    b"GGUF\x03\x00\x00\x00",
    b"\x93NUMPY\x01\x00",
    b"PK\x03\x04",
    b"\x80\x04",
    b"\x80\x02",
    b"\x08\x08\x12",
    b"\x10\x00\x00\x00TFL3",
    b"\x40\x00\x00\x00\x00\x00\x00\x00{",
    b"(",
    b"c",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn random_bytes_behind_magics(magic in 0..MAGICS.len(), tail in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut data = MAGICS[magic].to_vec();
        data.extend_from_slice(&tail);
        fuzz_sniff(&data);
    }
}

/// Every input in the fuzz corpus — including the crashes the fuzzer found
/// and that were fixed (`regress-*`) — passes the entry point's checks.
#[test]
fn fuzz_corpus_and_regressions() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/model");
    let mut runs = 0;
    let mut regressions = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz corpus directory") {
        let path = entry.expect("corpus entry").path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        // cargo-fuzz leaves `.tmp*` directories behind in a local corpus.
        if !path.is_file() || name.as_deref().is_some_and(|n| n.starts_with('.')) {
            continue;
        }
        let data = std::fs::read(&path).expect("corpus file");
        if name.as_deref().is_some_and(|n| n.starts_with("regress-")) {
            regressions += 1;
        }
        fuzz_sniff(&data);
        runs += 1;
    }
    assert!(
        runs > 0 && regressions > 0,
        "corpus {dir:?} holds no regression inputs"
    );
}
