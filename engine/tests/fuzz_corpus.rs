//! Replays the committed fuzz corpus (fuzz/corpus/<target>/*) through the
//! same entry points the cargo-fuzz targets use, plus every single-byte
//! truncation and a spread of bit flips of each seed, as ordinary tests.
//! TESSERA_BLESS=1 regenerates the seed files from a real store.

use std::path::{Path, PathBuf};

use tessera::testing::fuzz as fuzzing;
use tessera::Store;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

fn files(dir: &Path) -> Vec<Vec<u8>> {
    let mut out: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| (e.path(), std::fs::read(e.path()).expect("read corpus file")))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out.into_iter().map(|(_, b)| b).collect()
}

/// Seeds made from a real store with tiny chunks, so packs are small.
fn bless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), fuzzing::tiny_chunk_options()).expect("open");
    let text: Vec<u8> = (0..3000u32)
        .map(|i| b"tessera fuzz seed "[(i % 18) as usize])
        .collect();
    let mut noise = vec![0u8; 2000];
    tessera_synth::SplitMix64::new(5).fill_bytes(&mut noise);
    let mut data = text.clone();
    data.extend_from_slice(&noise);
    let rep = store
        .put_bytes(&data, &["fuzz/seed@v1:data.bin"])
        .expect("put");
    let walk = |sub: &str| -> Vec<PathBuf> {
        let mut v = Vec::new();
        for d in std::fs::read_dir(dir.path().join(sub))
            .expect("dir")
            .flatten()
        {
            for f in std::fs::read_dir(d.path()).expect("dir").flatten() {
                v.push(f.path());
            }
        }
        v
    };
    let write = |target: &str, name: &str, bytes: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join(name), bytes).expect("write seed");
    };
    for (i, p) in walk("packs").iter().enumerate() {
        write(
            "pack",
            &format!("seed-pack-{i}"),
            &std::fs::read(p).expect("pack"),
        );
    }
    let recipe =
        std::fs::read(dir.path().join(tessera::testing::recipe_key(&rep.file_id))).expect("recipe");
    let mut r = rep.file_id.0.to_vec();
    r.extend_from_slice(&recipe);
    write("recipe", "seed-recipe", &r);
    write(
        "headers",
        "seed-config",
        &std::fs::read(dir.path().join("tessera.store")).expect("config"),
    );
    for (i, p) in walk("refs").iter().enumerate() {
        write(
            "headers",
            &format!("seed-ref-{i}"),
            &std::fs::read(p).expect("ref"),
        );
    }
    let pack = std::fs::read(&walk("packs")[0]).expect("pack");
    write("headers", "seed-chunk-header", &pack[16..16 + 52]);
    write("headers", "seed-trailer", &pack[pack.len() - 56..]);
    // Index values straight from sled.
    drop(store);
    let db = sled::Config::new()
        .path(dir.path().join("index"))
        .segment_size(tessera::testing::INDEX_SEGMENT_BYTES)
        .open()
        .expect("sled");
    for (tree, name) in [
        ("chunks", "seed-chunk-location"),
        ("packs", "seed-pack-info"),
    ] {
        if let Some(Ok((_, v))) = db.open_tree(tree).expect("tree").iter().next() {
            write("index_values", name, &v);
        }
    }
    // A whole store: config, pack, recipe, ref, each with a u16 length prefix.
    let mut whole = Vec::new();
    let config = std::fs::read(dir.path().join("tessera.store")).expect("config");
    let reff = std::fs::read(&walk("refs")[0]).expect("ref");
    for part in [&config[..], &pack[..], &recipe[..], &reff[..]] {
        whole.extend_from_slice(&(part.len() as u16).to_le_bytes());
        whole.extend_from_slice(part);
    }
    write("store", "seed-store", &whole);
}

fn replay(target: &str, f: &dyn Fn(&[u8])) {
    replay_with(target, f, 200, 500);
}

fn replay_with(target: &str, f: &dyn Fn(&[u8]), truncations: usize, flips: usize) {
    let seeds = files(&corpus_dir(target));
    assert!(!seeds.is_empty(), "fuzz/corpus/{target} has no seed files");
    let mut runs = 0usize;
    for seed in &seeds {
        f(seed);
        for n in (0..seed.len()).step_by((seed.len() / truncations).max(1)) {
            f(&seed[..n]);
            runs += 1;
        }
        let step = (seed.len() * 8 / flips).max(1);
        for bit in (0..seed.len() * 8).step_by(step) {
            let mut m = seed.clone();
            m[bit / 8] ^= 1 << (bit % 8);
            f(&m);
            runs += 1;
        }
    }
    assert!(runs > seeds.len());
}

#[test]
fn fuzz_corpus_replays_without_panics() {
    if std::env::var_os("TESSERA_BLESS").is_some() {
        bless();
    }
    replay("pack", &fuzzing::pack);
    replay("recipe", &fuzzing::recipe);
    replay("headers", &fuzzing::headers);
    replay("index_values", &fuzzing::index_values);
    replay("model", &tessera_model::fuzz_sniff);
    replay_with("codec", &tessera_codec::fuzz_decode, 50, 100);
    // Each store input costs a directory and a sled database: fewer variants.
    replay_with(
        "store",
        &|d: &[u8]| {
            let dir = tempfile::tempdir().expect("tempdir");
            fuzzing::store_files(dir.path(), d);
        },
        2,
        6,
    );
}
