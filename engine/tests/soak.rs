//! Concurrency soak: 8 writer and 8 reader threads on overlapping files for a
//! bounded time. No error, every file identical, no chunk stored twice.
//! `TESSERA_SOAK_SECS` sets the duration (default 4 s).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::noise;
use tessera::VerifyOptions;
use tessera::{ChunkParams, FileId, Store, StoreOptions};

const WRITERS: usize = 8;
const READERS: usize = 8;

/// File `n`: 3-6 blocks of a shared pool picked by `n`, plus a tail of its own.
fn content(n: u64, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut rng = tessera_synth::SplitMix64::new(n);
    let mut out = Vec::new();
    for _ in 0..3 + rng.below(4) {
        out.extend_from_slice(&pool[rng.below(pool.len() as u64) as usize]);
    }
    out.extend_from_slice(&noise(rng.below(50_000) as usize, n));
    out
}

#[test]
fn eight_writers_eight_readers() {
    let secs: u64 = std::env::var("TESSERA_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            pack_target_bytes: 1 << 20,
            chunking: Some(ChunkParams {
                min: 4096,
                avg: 16384,
                max: 65536,
                normalization: 1,
            }),
            ..Default::default()
        },
    )
    .expect("open");
    let pool: Vec<Vec<u8>> = (0..12).map(|i| noise(200_000, 77 + i)).collect();
    // Committed files: (id, content number).
    let done: Mutex<Vec<(FileId, u64)>> = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let (puts, reads) = (AtomicU64::new(0), AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(secs);
    std::thread::scope(|s| {
        for w in 0..WRITERS as u64 {
            let (store, pool, done, puts, stop) = (&store, &pool, &done, &puts, &stop);
            s.spawn(move || {
                let mut i = 0u64;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    // 40 distinct contents shared by all writers: many exact duplicates.
                    let n = (w * 7 + i * 3) % 40;
                    let data = content(n, pool);
                    let name = format!("soak/w{w}@{i}:f.bin");
                    let rep = store.put_bytes(&data, &[&name]).expect("put");
                    done.lock().expect("lock").push((rep.file_id, n));
                    puts.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        for r in 0..READERS as u64 {
            let (store, pool, done, reads, stop) = (&store, &pool, &done, &reads, &stop);
            s.spawn(move || {
                let mut k = r;
                while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                    let pick = {
                        let d = done.lock().expect("lock");
                        (!d.is_empty()).then(|| d[(k as usize * 31) % d.len()])
                    };
                    k += 1;
                    let Some((id, n)) = pick else {
                        std::thread::yield_now();
                        continue;
                    };
                    let want = content(n, pool);
                    let got = if k % 2 == 0 {
                        store.read(&id).expect("open").read_all().expect("read")
                    } else {
                        let off = (k * 7919) % want.len() as u64;
                        let len = (want.len() as u64 - off).min(300_000);
                        store.read_range(&id, off, len).expect("range").to_vec()
                    };
                    let expect = if k % 2 == 0 {
                        &want[..]
                    } else {
                        let off = ((k * 7919) % want.len() as u64) as usize;
                        &want[off..off + got.len()]
                    };
                    if got != expect {
                        stop.store(true, Ordering::Relaxed);
                        panic!("file {id} read back wrong bytes");
                    }
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    let done = done.into_inner().expect("lock");
    assert!(
        puts.load(Ordering::Relaxed) >= WRITERS as u64,
        "writers made no progress"
    );
    assert!(
        reads.load(Ordering::Relaxed) > 0,
        "readers made no progress"
    );
    // Every committed file identical; every chunk stored exactly once.
    let mut ids = HashSet::new();
    for (id, n) in &done {
        if ids.insert(*id) {
            assert!(store.read(id).expect("open").read_all().expect("read") == content(*n, &pool));
        }
    }
    let mut chunk_ids = HashSet::new();
    for id in &ids {
        for (c, _) in &store.layout(id).expect("layout").recipe.chunks {
            chunk_ids.insert(*c);
        }
    }
    let st = store.stats().expect("stats");
    assert_eq!(
        st.chunks as usize,
        chunk_ids.len(),
        "a chunk was stored twice or lost"
    );
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(v.is_clean(), "{:?}", v.problems);
    let table_total: u64 = v.chunks_read;
    assert_eq!(
        table_total, st.chunks,
        "pack tables hold {table_total} chunks, index {}",
        st.chunks
    );
    println!(
        "soak: {} puts, {} reads, {} distinct files, {} chunks",
        puts.into_inner(),
        reads.into_inner(),
        ids.len(),
        st.chunks
    );
}
