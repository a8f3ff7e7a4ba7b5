//! The miss filter in front of the chunk index: a lookup never answers
//! "absent" for an indexed chunk — before the filter's scan is done, after
//! it, while inserts race the scan, after GC removes entries and repack
//! moves them, and after a reopen.

use super::{Index, PackInfo};
use crate::format::{ChunkEntry, Compression};
use crate::ids::{ChunkId, PackId};

fn id(n: u64) -> ChunkId {
    ChunkId::of(&n.to_le_bytes())
}

fn entries(from: u64, to: u64) -> Vec<(u32, ChunkEntry)> {
    (from..to)
        .map(|n| {
            let e = ChunkEntry {
                id: id(n),
                offset: 16 + (n - from) * 100,
                stored_len: 90,
                raw_len: 100,
                compression: Compression::None,
            };
            ((n - from) as u32, e)
        })
        .collect()
}

fn add(index: &Index, pack: u64, from: u64, to: u64) {
    let info = PackInfo {
        size: (to - from) * 100,
        chunk_count: (to - from) as u32,
        raw_bytes: (to - from) * 100,
    };
    let p = PackId(*ChunkId::of(&pack.to_be_bytes()).as_bytes());
    index
        .add_pack(p, info, &entries(from, to))
        .expect("add_pack");
}

fn wait_ready(index: &Index) {
    let t = std::time::Instant::now();
    while !index.filter().answers() {
        assert!(t.elapsed().as_secs() < 60, "the filter's scan never ended");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn found(index: &Index, from: u64, to: u64) -> u64 {
    (from..to)
        .filter(|n| index.chunk(&id(*n)).expect("lookup").is_some())
        .count() as u64
}

#[test]
fn lookups_find_every_indexed_chunk_while_inserts_race_the_scan() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path(), 8 << 20, None).expect("open");
    // Ids the next open's filter learns only from its scan.
    for p in 0..20 {
        add(&index, p, p * 1000, p * 1000 + 1000);
    }
    drop(index);
    let index = Index::open(dir.path(), 8 << 20, None).expect("reopen");
    // Inserts and lookups on several threads while the scan of 20,000 ids
    // runs in the background.
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let index = &index;
            s.spawn(move || {
                for p in 0..10 {
                    let from = 100_000 + (t * 10 + p) * 500;
                    add(index, 1000 + t * 10 + p, from, from + 500);
                    assert_eq!(found(index, from, from + 500), 500);
                    assert_eq!(found(index, p * 1000, p * 1000 + 200), 200);
                }
            });
        }
    });
    wait_ready(&index);
    assert_eq!(found(&index, 0, 20_000), 20_000);
    assert_eq!(found(&index, 100_000, 115_000), 15_000);
    // Absent ids: the filter answers most of them, and never wrongly.
    assert_eq!(found(&index, 1_000_000, 1_020_000), 0);
    assert_eq!(index.counters().expect("counters").chunks, 35_000);
    // An id inserted again (another pack) is counted once.
    add(&index, 5000, 0, 10);
    assert_eq!(index.counters().expect("counters").chunks, 35_000);
    drop(index);
    let index = Index::open(dir.path(), 8 << 20, None).expect("reopen");
    assert_eq!(found(&index, 0, 20_000), 20_000);
    wait_ready(&index);
    assert_eq!(found(&index, 0, 20_000), 20_000);
    assert_eq!(found(&index, 100_000, 115_000), 15_000);
}

#[test]
fn a_full_filter_is_replaced_by_a_larger_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path(), 8 << 20, None).expect("open");
    add(&index, 1, 0, 100);
    wait_ready(&index);
    let first = index.filter();
    // Past its design load (as after millions of inserts): it stops
    // answering, and the next lookup makes a new filter with a new scan.
    first.stop_answering();
    assert!(!first.answers());
    assert_eq!(found(&index, 0, 100), 100);
    let second = index.filter();
    assert!(!std::sync::Arc::ptr_eq(&first, &second));
    // Inserts during and after its scan: found, and counted once.
    add(&index, 2, 50, 150);
    wait_ready(&index);
    assert_eq!(found(&index, 0, 150), 150);
    assert_eq!(found(&index, 1000, 2000), 0);
    assert_eq!(index.counters().expect("counters").chunks, 150);
    // Full again while inserting: the insert makes the new one.
    index.filter().stop_answering();
    add(&index, 3, 150, 300);
    assert_eq!(found(&index, 0, 300), 300);
    wait_ready(&index);
    assert_eq!(found(&index, 0, 300), 300);
    assert_eq!(index.counters().expect("counters").chunks, 300);
}

fn pack_id(pack: u64) -> PackId {
    PackId(*ChunkId::of(&pack.to_be_bytes()).as_bytes())
}

#[test]
fn gc_removals_and_repack_moves_keep_lookups_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path(), 8 << 20, None).expect("open");
    for p in 0..4 {
        add(&index, p, p * 1000, p * 1000 + 1000);
    }
    wait_ready(&index);
    // GC removes pack 1 and its entries: they are absent now (the filter
    // still holds them, so the database answers).
    let mut ids: Vec<ChunkId> = (1000..2000).map(id).collect();
    index.remove_packs(&[pack_id(1)], &mut ids).expect("gc");
    assert_eq!(found(&index, 1000, 2000), 0);
    assert_eq!(found(&index, 0, 1000), 1000);
    assert_eq!(index.counters().expect("counters").chunks, 3000);
    // Stored again later (a new pack): found, and counted as new.
    add(&index, 10, 1000, 1500);
    assert_eq!(found(&index, 1000, 2000), 500);
    assert_eq!(index.counters().expect("counters").chunks, 3500);
    // Repack moves pack 2's chunks and a hundred of pack 3's to a new pack
    // (replacing their entries), then removes pack 2: every moved chunk is
    // found there, and none counts twice.
    let info = PackInfo {
        size: 1,
        chunk_count: 1100,
        raw_bytes: 1,
    };
    let moved = entries(2000, 3100);
    index
        .relocate_chunks(pack_id(20), info, &moved)
        .expect("relocate");
    let mut ids: Vec<ChunkId> = (2000..3000).map(id).collect();
    index.remove_packs(&[pack_id(2)], &mut ids).expect("remove");
    for n in 2000..3100 {
        let loc = index.chunk(&id(n)).expect("lookup").expect("moved chunk");
        assert_eq!(loc.pack, pack_id(20));
    }
    assert_eq!(index.counters().expect("counters").chunks, 3500);
    drop(index);
    let index = Index::open(dir.path(), 8 << 20, None).expect("reopen");
    wait_ready(&index);
    assert_eq!(found(&index, 0, 1000), 1000);
    assert_eq!(found(&index, 1000, 2000), 500);
    assert_eq!(found(&index, 2000, 3100), 1100);
    assert_eq!(found(&index, 3000, 4000), 1000);
}

/// Every lookup, the ordered iteration and the counters agree with a model
/// of the entries.
fn check(index: &Index, model: &std::collections::BTreeMap<ChunkId, PackId>) {
    for n in 0..6000 {
        let got = index.chunk(&id(n)).expect("lookup").map(|l| l.pack);
        assert_eq!(got, model.get(&id(n)).copied(), "chunk {n}");
    }
    let listed: Vec<(ChunkId, PackId)> = index
        .chunks()
        .map(|l| l.map(|l| (l.entry.id, l.pack)))
        .collect::<crate::error::Result<_>>()
        .expect("iterate");
    let expect: Vec<(ChunkId, PackId)> = model.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(listed, expect, "chunks() in id order");
    let before = index.counters().expect("counters");
    let after = index.recount().expect("recount");
    assert_eq!(
        (before.chunks, after.chunks),
        (model.len() as u64, model.len() as u64)
    );
    assert_eq!(before.chunk_bytes, after.chunk_bytes);
}

#[test]
fn the_chunk_run_under_the_tree_keeps_every_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let index = Index::open(dir.path(), 8 << 20, None).expect("open");
    let mut model = std::collections::BTreeMap::new();
    for p in 0..4 {
        add(&index, p, p * 1000, p * 1000 + 1000);
        for n in p * 1000..p * 1000 + 1000 {
            model.insert(id(n), pack_id(p));
        }
    }
    check(&index, &model);
    index.compact_now().expect("compact");
    assert_eq!(index.layers(), (4000, 0), "all in the run, the tree empty");
    check(&index, &model);
    // Removing entries that live in the run leaves tombstones in the tree.
    let mut ids: Vec<ChunkId> = (1000..2000).map(id).collect();
    index.remove_packs(&[pack_id(1)], &mut ids).expect("gc");
    for n in 1000..2000 {
        model.remove(&id(n));
    }
    check(&index, &model);
    // A chunk stored again over its tombstone; a relocation over the run.
    add(&index, 10, 1000, 1500);
    for n in 1000..1500 {
        model.insert(id(n), pack_id(10));
    }
    let info = PackInfo {
        size: 1,
        chunk_count: 1100,
        raw_bytes: 1,
    };
    index
        .relocate_chunks(pack_id(20), info, &entries(2000, 3100))
        .expect("relocate");
    for n in 2000..3100 {
        model.insert(id(n), pack_id(20));
    }
    // An add does not replace an entry the run holds.
    add(&index, 30, 3500, 3600);
    add(&index, 31, 5000, 5100);
    for n in 5000..5100 {
        model.insert(id(n), pack_id(31));
    }
    check(&index, &model);
    index.compact_now().expect("compact");
    assert_eq!(index.layers(), (model.len(), 0));
    check(&index, &model);
    // Reopened: the run is the one the database records.
    index.flush().expect("flush");
    drop(index);
    let index = Index::open(dir.path(), 8 << 20, None).expect("reopen");
    check(&index, &model);
    drop(index);
    // A run the database does not record (another index's) is discarded;
    // a recorded run that is gone makes the index damaged.
    let run = dir.path().join(super::run::RUN_FILE);
    let saved = std::fs::read(&run).expect("run");
    std::fs::remove_file(&run).expect("rm");
    assert!(matches!(
        Index::open(dir.path(), 8 << 20, None),
        Err(crate::error::Error::IndexDamaged { .. })
    ));
    let fresh = tempfile::tempdir().expect("tempdir");
    Index::open(fresh.path(), 8 << 20, None)
        .expect("create")
        .flush()
        .expect("flush");
    std::fs::write(fresh.path().join(super::run::RUN_FILE), &saved).expect("plant");
    let other = Index::open(fresh.path(), 8 << 20, None).expect("open");
    assert_eq!(found(&other, 0, 6000), 0, "nothing of the planted run");
    assert!(!fresh.path().join(super::run::RUN_FILE).exists());
}
