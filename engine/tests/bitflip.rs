//! Bit-flip property test: flip a random bit in a random pack or recipe
//! file. Every flip in stored chunk bytes is detected by reads and by
//! `verify`, naming the damaged chunk; flips elsewhere are detected by
//! `verify` naming the pack or file; no read ever returns wrong bytes and
//! nothing panics. `TESSERA_BITFLIP_CASES` (default 24) and
//! `TESSERA_BITFLIP_SEED` control the run.

mod common;

use std::path::{Path, PathBuf};

use common::{copy_tree, noise};
use tessera::storage::{DirStore, ReadMode};
use tessera::testing::PackReader;
use tessera::testing::PACK_HEADER_LEN;
use tessera::VerifyOptions;
use tessera::{ChunkParams, Error, FileId, PackId, Store, StoreOptions};

fn opts() -> StoreOptions {
    StoreOptions {
        create: true,
        pack_target_bytes: 256 * 1024,
        chunking: Some(ChunkParams {
            min: 2048,
            avg: 8192,
            max: 32768,
            normalization: 1,
        }),
        ..Default::default()
    }
}

fn files_under(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for sub in std::fs::read_dir(dir).expect("dir").flatten() {
        for f in std::fs::read_dir(sub.path()).expect("dir").flatten() {
            if f.path().extension().is_some_and(|e| e == ext) {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

/// What a byte offset of a pack is.
#[derive(Debug)]
enum Region {
    Header,
    ChunkHeader(tessera::ChunkId),
    ChunkData(tessera::ChunkId),
    Footer,
}

fn region(pack: &Path, offset: u64) -> Region {
    let id = PackId::from_hex(pack.file_stem().and_then(|s| s.to_str()).expect("name"))
        .expect("pack id");
    let storage = DirStore::new(
        pack.parent()
            .and_then(Path::parent)
            .and_then(Path::parent)
            .expect("root"),
        ReadMode::Pread,
    );
    let r = PackReader::open(&storage, id).expect("intact pack");
    if offset < PACK_HEADER_LEN as u64 {
        return Region::Header;
    }
    for i in 0..r.chunk_count() {
        let e = r.entry(i).expect("entry");
        if offset >= e.offset && offset < e.data_offset() {
            return Region::ChunkHeader(e.id);
        }
        if offset >= e.data_offset() && offset < e.offset + e.record_len() {
            return Region::ChunkData(e.id);
        }
    }
    Region::Footer
}

#[test]
fn random_bit_flips_are_detected_and_never_yield_wrong_bytes() {
    let cases: usize = std::env::var("TESSERA_BITFLIP_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    let seed: u64 = std::env::var("TESSERA_BITFLIP_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0xB17F11);
    println!("bit-flip: {cases} cases, TESSERA_BITFLIP_SEED={seed}");
    let template = tempfile::tempdir().expect("tempdir");
    let tdir = template.path().join("store");
    let mut files: Vec<(FileId, Vec<u8>)> = Vec::new();
    {
        let store = Store::open(&tdir, opts()).expect("open");
        let shared = noise(150_000, 1);
        for i in 0..6u64 {
            let mut d = noise(20_000 + 40_000 * i as usize, 10 + i);
            d.extend_from_slice(&shared);
            // Some compressible bytes, so zstd chunks are covered too.
            d.extend((0..30_000u32).map(|k| (k % 7) as u8));
            let rep = store
                .put_bytes(&d, &[&format!("bf/f@v1:{i}")])
                .expect("put");
            files.push((rep.file_id, d));
        }
    }
    let mut rng = tessera_synth::SplitMix64::new(seed);
    let mut rnd = |n: u64| rng.below(n);
    let (mut data_flips, mut other_flips) = (0, 0);
    for case in 0..cases {
        let work = tempfile::tempdir().expect("tempdir");
        let dir = work.path().join("store");
        copy_tree(&tdir, &dir);
        let packs = files_under(&dir.join("packs"), "pack");
        let recipes = files_under(&dir.join("recipes"), "recipe");
        let in_recipe = rnd(5) == 0;
        let target = if in_recipe {
            recipes[rnd(recipes.len() as u64) as usize].clone()
        } else {
            packs[rnd(packs.len() as u64) as usize].clone()
        };
        let mut bytes = std::fs::read(&target).expect("read");
        let bit = rnd(bytes.len() as u64 * 8);
        let what = if in_recipe {
            None
        } else {
            Some(region(&target, bit / 8))
        };
        bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
        std::fs::write(&target, &bytes).expect("write");
        let ctx = format!("case {case}: bit {bit} of {} ({what:?})", target.display());

        let store = Store::open(
            &dir,
            StoreOptions {
                create: false,
                ..opts()
            },
        )
        .expect("open");
        // No read returns wrong bytes; errors are typed corruption errors.
        let mut failed_reads = Vec::new();
        for (id, data) in &files {
            match store.read(id).and_then(|r| r.read_all()) {
                Ok(back) => assert!(back == *data, "{ctx}: file {id} read back WRONG BYTES"),
                Err(e) => {
                    assert!(
                        e.is_corruption() || matches!(e, Error::UnsupportedVersion { .. }),
                        "{ctx}: unexpected error {e}"
                    );
                    failed_reads.push(e.to_string());
                }
            }
        }
        let v = store.verify(VerifyOptions::default()).expect("verify runs");
        assert!(!v.is_clean(), "{ctx}: verify missed the flip");
        let problems = format!("{:?}", v.problems);
        match what {
            Some(Region::ChunkData(c)) | Some(Region::ChunkHeader(c)) => {
                data_flips += 1;
                assert!(
                    problems.contains(&format!("chunk {c}")),
                    "{ctx}: verify does not name chunk {c}: {problems}"
                );
                assert!(!failed_reads.is_empty(), "{ctx}: no read noticed");
                assert!(
                    failed_reads.iter().all(|m| m.contains(&c.to_hex())),
                    "{ctx}: reads did not name chunk {c}: {failed_reads:?}"
                );
            }
            Some(_) => {
                other_flips += 1;
                let name = target.file_stem().and_then(|s| s.to_str()).expect("stem");
                assert!(
                    problems.contains(name),
                    "{ctx}: verify does not name the pack: {problems}"
                );
            }
            None => {
                other_flips += 1;
                let name = target.file_stem().and_then(|s| s.to_str()).expect("stem");
                assert!(
                    problems.contains(name),
                    "{ctx}: verify does not name the file: {problems}"
                );
            }
        }
    }
    println!("bit-flip: {data_flips} flips in chunk records, {other_flips} elsewhere: all detected, no wrong bytes");
    assert!(data_flips > 0);
}
