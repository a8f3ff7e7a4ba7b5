//! The ingest pipeline and the read-ahead: SHA-256 when it is computed
//! beside the pipeline, skipped (re-ingesting a stored file) or caught up
//! by reading the file again; the streaming reader's overlapped read-ahead
//! under seeks; concurrent writers whose packs seal while others append.

mod common;

use std::io::{BufRead, Read, Seek, SeekFrom};

use common::noise;
use sha2::{Digest, Sha256};
use tessera::{ChunkParams, Store, StoreOptions};

fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn small_batches() -> StoreOptions {
    StoreOptions {
        // Several batches and several packs per file.
        ingest_batch_bytes: 1 << 20,
        pack_target_bytes: 2 << 20,
        ..common::opts()
    }
}

#[test]
fn sha256_is_right_whether_computed_skipped_or_caught_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("s"), small_batches()).expect("open");
    let data = noise(9 << 20, 7);
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).expect("write input");
        p
    };
    let a = write("a", &data);
    let first = store.put_file(&a, &[]).expect("put");
    assert_eq!(first.sha256.0, sha256(&data));
    assert!(first.new_file);
    // Stored already: the SHA-256 comes from its recipe.
    let again = store.put_file(&a, &["r/again"]).expect("put again");
    assert_eq!(again.sha256, first.sha256);
    assert_eq!((again.new_chunks, again.new_bytes), (0, 0));
    // A prefix ending at a chunk boundary: every chunk is stored, but the
    // file is not, so its SHA-256 is computed by reading it again.
    let cuts = ChunkParams::default().boundaries(&data);
    let end = cuts[cuts.len() / 2].end;
    let prefix = write("prefix", &data[..end]);
    let rep = store.put_file(&prefix, &[]).expect("put prefix");
    assert_eq!(rep.new_chunks, 0);
    assert!(rep.new_file);
    assert_eq!(rep.sha256.0, sha256(&data[..end]));
    // New data late in the file: the bytes that went by before are hashed
    // by the catch-up read.
    let mut late = data.clone();
    late.extend_from_slice(&noise(3 << 20, 8));
    let late_path = write("late", &late);
    let rep = store.put_file(&late_path, &[]).expect("put late");
    assert!(rep.new_chunks > 0);
    assert_eq!(rep.sha256.0, sha256(&late));
    // The same from streams (hashed as they pass).
    let streamed = store.put("stream", &late[..], &[]).expect("put stream");
    assert_eq!(streamed.sha256, rep.sha256);
    assert_eq!(streamed.file_id, rep.file_id);
    // And every one of them reads back, and is found by its SHA-256.
    for (bytes, id) in [(&data, first.file_id), (&late, rep.file_id)] {
        let back = store.read(&id).expect("read").read_all().expect("read all");
        assert!(back == *bytes);
        let by_sha = store
            .resolve(&format!("sha256:{}", hex(&sha256(bytes))))
            .expect("resolve");
        assert_eq!(by_sha, id);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn read_ahead_survives_seeks_and_partial_reads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            read_ahead_chunks: 3,
            ..small_batches()
        },
    )
    .expect("open");
    let data = noise(5 << 20, 21);
    let id = store.put_bytes(&data, &[]).expect("put").file_id;
    let mut rng = tessera_synth::SplitMix64::new(5);
    let mut r = store.read(&id).expect("reader");
    for _ in 0..200 {
        let off = rng.below(data.len() as u64);
        r.seek(SeekFrom::Start(off)).expect("seek");
        if rng.below(2) == 0 {
            // Whole chunks through BufRead.
            let mut pos = off as usize;
            for _ in 0..rng.below(6) {
                let got = r.fill_buf().expect("fill").to_vec();
                assert!(got[..] == data[pos..pos + got.len()], "at {pos}");
                if got.is_empty() {
                    assert_eq!(pos, data.len());
                    break;
                }
                let take = 1 + rng.below(got.len() as u64) as usize;
                r.consume(take);
                pos += take;
            }
        } else {
            let mut buf = vec![0u8; rng.below(700_000) as usize];
            let n = r.read(&mut buf).expect("read");
            assert!(buf[..n] == data[off as usize..off as usize + n]);
        }
    }
    // Read-ahead limited to a range stops there, and the range reads back.
    let mut r = store.read(&id).expect("reader");
    r.seek(SeekFrom::Start(100_000)).expect("seek");
    r.limit_read_ahead(1_300_000);
    let mut got = Vec::new();
    r.take(1_200_000).read_to_end(&mut got).expect("read");
    assert!(got[..] == data[100_000..1_300_000]);
}

#[test]
fn writers_append_while_packs_seal_and_commits_wait_for_their_packs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            pack_target_bytes: 512 << 10,
            ingest_batch_bytes: 256 << 10,
            ..common::opts()
        },
    )
    .expect("open");
    // Each thread puts files of its own plus one every thread shares, in
    // small commits, so packs fill and seal under other writers.
    let shared = noise(3 << 20, 99);
    let results: Vec<Vec<(tessera::FileId, Vec<u8>)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..4u64)
            .map(|t| {
                let (store, shared) = (&store, &shared);
                s.spawn(move || {
                    let mut out = Vec::new();
                    for k in 0..3u64 {
                        let mut ing = store.ingest();
                        let own = noise((1 << 20) + (t * 7919 + k) as usize, 1000 + t * 10 + k);
                        ing.add("own", &own[..], &[], &mut |_| {}).expect("add");
                        ing.add("shared", &shared[..], &[], &mut |_| {})
                            .expect("add shared");
                        let reps = ing.commit().expect("commit");
                        out.push((reps[0].file_id, own));
                        out.push((reps[1].file_id, shared.clone()));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (id, bytes) in results.iter().flatten() {
        let back = store.read(id).expect("read").read_all().expect("read all");
        assert!(back == *bytes);
    }
    // Exact dedup: the shared file's chunks were stored once.
    let stats = store.stats().expect("stats");
    let distinct: u64 = 4 * 3 + 1;
    assert_eq!(stats.files, distinct);
    let report = store.verify(Default::default()).expect("verify");
    assert!(report.is_clean(), "{report:?}");
}
