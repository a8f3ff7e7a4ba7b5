//! One store shared by several threads that ingest overlapping files and
//! read at the same time: every file reads back, and no chunk is stored twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Barrier, Mutex};

use common::{noise, pack_files};
use tessera::storage::DirStore;
use tessera::testing::PackReader;
use tessera::{ChunkId, FileId, PackId, ReadMode, Store, StoreOptions};

const THREADS: usize = 6;
const FILES_PER_THREAD: usize = 3;
/// Distinct file contents; fewer than THREADS × FILES_PER_THREAD, so
/// several threads put exactly the same file.
const DISTINCT: usize = 12;
const BLOCK: usize = 1 << 20;
const POOL: usize = 10;
const BLOCKS_PER_FILE: usize = 5;

/// Content `spec`: BLOCKS_PER_FILE blocks of a shared pool in an order
/// picked by the spec, plus a short tail of its own.
fn build(spec: usize, pool: &[Vec<u8>]) -> Vec<u8> {
    let mut order: Vec<usize> = (0..POOL).collect();
    let mut rng = tessera_synth::SplitMix64::new(spec as u64);
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut out = Vec::with_capacity(BLOCKS_PER_FILE * BLOCK + 1000);
    for &b in &order[..BLOCKS_PER_FILE] {
        out.extend_from_slice(&pool[b]);
    }
    out.extend_from_slice(&noise(spec * 97, 5000 + spec as u64));
    out
}

#[test]
fn threads_share_a_store_without_storing_a_chunk_twice() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            pack_target_bytes: 2 << 20,
            ..Default::default()
        },
    )
    .expect("create");
    let pool: Vec<Vec<u8>> = (0..POOL).map(|i| noise(BLOCK, 1000 + i as u64)).collect();
    let expected: Vec<Vec<u8>> = (0..DISTINCT).map(|s| build(s, &pool)).collect();
    let distinct: HashSet<&Vec<u8>> = expected.iter().collect();
    assert_eq!(distinct.len(), DISTINCT, "specs must give distinct files");

    // (file id, spec) of every committed put, visible to all threads.
    let done: Mutex<Vec<(FileId, usize)>> = Mutex::new(Vec::new());
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let (store, expected, done, barrier) = (store.clone(), &expected, &done, &barrier);
            scope.spawn(move || {
                let specs: Vec<usize> = (0..FILES_PER_THREAD)
                    .map(|j| (t * FILES_PER_THREAD + j) % DISTINCT)
                    .collect();
                let refs: Vec<String> = (0..FILES_PER_THREAD)
                    .map(|j| format!("t{t}/f{j}"))
                    .collect();
                barrier.wait();
                let mut committed = Vec::new();
                if t % 2 == 0 {
                    // One commit per file.
                    for (spec, r) in specs.iter().zip(&refs) {
                        let rep = store
                            .put_bytes(&expected[*spec], &[r.as_str()])
                            .expect("put");
                        committed.push((rep.file_id, *spec));
                        done.lock().expect("lock").push((rep.file_id, *spec));
                        check_some(&store, expected, done);
                    }
                } else {
                    // All files in one ingest group, one commit.
                    let mut ing = store.ingest();
                    for (spec, r) in specs.iter().zip(&refs) {
                        ing.add("input", &expected[*spec][..], &[r.as_str()], &mut |_| {})
                            .expect("add");
                        check_some(&store, expected, done);
                    }
                    let reports = ing.commit().expect("commit");
                    assert_eq!(reports.len(), specs.len());
                    for (rep, spec) in reports.iter().zip(&specs) {
                        assert_eq!(rep.size, expected[*spec].len() as u64);
                        committed.push((rep.file_id, *spec));
                    }
                    done.lock().expect("lock").extend(committed.iter().copied());
                }
                for ((id, spec), r) in committed.iter().zip(&refs) {
                    assert_eq!(store.resolve(r).expect("ref"), *id);
                    assert!(
                        store.read(id).expect("open").read_all().expect("read") == expected[*spec]
                    );
                }
            });
        }
    });

    // Every put of the same content got the same id; every file reads back.
    let done = done.into_inner().expect("lock");
    assert_eq!(done.len(), THREADS * FILES_PER_THREAD);
    let mut id_of: HashMap<usize, FileId> = HashMap::new();
    for (id, spec) in &done {
        assert_eq!(*id_of.entry(*spec).or_insert(*id), *id, "spec {spec}");
    }
    assert_eq!(id_of.len(), DISTINCT);
    let mut chunk_ids: HashSet<ChunkId> = HashSet::new();
    let mut unique_bytes = 0u64;
    for (spec, id) in &id_of {
        let back = store.read(id).expect("open").read_all().expect("read");
        assert!(back == expected[*spec], "spec {spec} did not round-trip");
        for (c, len) in &store.layout(id).expect("layout").recipe.chunks {
            if chunk_ids.insert(*c) {
                unique_bytes += u64::from(*len);
            }
        }
    }

    let stats = store.stats().expect("stats");
    assert_eq!(stats.files, DISTINCT as u64);
    assert_eq!(stats.refs, (THREADS * FILES_PER_THREAD) as u64);
    assert_eq!(stats.chunks, chunk_ids.len() as u64);
    assert_eq!(stats.unique_bytes, unique_bytes);

    // Scan the packs themselves: each distinct chunk is stored exactly once.
    let storage = DirStore::new(dir.path(), ReadMode::Pread);
    let mut stored = 0u64;
    let mut stored_bytes = 0u64;
    let mut seen: HashSet<ChunkId> = HashSet::new();
    let files = pack_files(dir.path());
    for f in &files {
        let stem = f.file_stem().and_then(|s| s.to_str()).expect("pack name");
        let id = PackId::from_hex(stem).expect("pack name is its id");
        let pack = PackReader::open(&storage, id).expect("open pack");
        stored += u64::from(pack.chunk_count());
        stored_bytes += std::fs::metadata(f).expect("stat").len();
        for i in 0..pack.chunk_count() {
            let e = pack.entry(i).expect("entry");
            assert!(seen.insert(e.id), "chunk {} stored twice", e.id);
        }
    }
    assert_eq!(stored, stats.chunks, "chunks in packs vs distinct chunks");
    assert_eq!(seen, chunk_ids);
    assert_eq!(files.len() as u64, stats.packs);
    assert_eq!(stored_bytes, stats.stored_bytes);
    assert!(
        stats.unique_bytes < (DISTINCT * BLOCKS_PER_FILE * BLOCK) as u64 / 2,
        "shared blocks were not deduplicated: {} unique bytes",
        stats.unique_bytes
    );
}

/// Reads back (whole, and a range) the most recent files any thread has
/// committed, while others keep ingesting.
fn check_some(store: &Store, expected: &[Vec<u8>], done: &Mutex<Vec<(FileId, usize)>>) {
    let recent: Vec<(FileId, usize)> = {
        let d = done.lock().expect("lock");
        d.iter().rev().take(3).copied().collect()
    };
    for (id, spec) in recent {
        let data = &expected[spec];
        let back = store.read(&id).expect("open").read_all().expect("read");
        assert!(back == *data, "spec {spec} read back wrong during ingest");
        let (off, len) = (data.len() as u64 / 3, 300_000u64);
        let r = store.read_range(&id, off, len).expect("range");
        assert!(r[..] == data[off as usize..(off + len) as usize]);
    }
}
