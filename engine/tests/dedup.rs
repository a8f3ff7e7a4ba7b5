//! Deduplication: what an ingest adds to the packs, for repeated, renamed
//! and partly changed files.

mod common;

use std::path::Path;

use common::{noise, open, pack_bytes};
use tessera::testing::recipe_key;
use tessera::testing::{PACK_HEADER_LEN, TRAILER_LEN};
use tessera::{ChunkParams, FileId, PutReport, Store};

const MIB: usize = 1024 * 1024;

/// The largest chunk the default chunker cuts.
fn max_chunk() -> u64 {
    u64::from(ChunkParams::default().max)
}

fn read_back(store: &Store, id: &FileId) -> Vec<u8> {
    store.read(id).expect("open").read_all().expect("read")
}

/// Puts `data` and checks the growth of the packs against the report:
/// `new_bytes` counts new chunk records, their table entries and a new
/// recipe file; the packs additionally grow by a header and a trailer per
/// new pack. Returns the report and the growth of the packs.
fn put_measured(store: &Store, dir: &Path, data: &[u8], refs: &[&str]) -> (PutReport, u64) {
    let before = pack_bytes(dir);
    let packs_before = store.stats().expect("stats").packs;
    let rep = store.put_bytes(data, refs).expect("put");
    let grown = pack_bytes(dir) - before;
    let new_packs = store.stats().expect("stats").packs - packs_before;
    let recipe = if rep.new_file {
        std::fs::metadata(dir.join(recipe_key(&rep.file_id)))
            .expect("recipe file")
            .len()
    } else {
        0
    };
    assert_eq!(
        grown,
        rep.new_bytes - recipe + new_packs * (PACK_HEADER_LEN + TRAILER_LEN) as u64,
        "pack growth disagrees with the report {rep:?}"
    );
    assert_eq!(rep.size, data.len() as u64);
    assert!(read_back(store, &rep.file_id) == data, "round trip");
    (rep, grown)
}

#[test]
fn the_same_file_twice_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let data = noise(5 * MIB + 77, 1);
    let (first, grown) = put_measured(&store, dir.path(), &data, &[]);
    assert!(first.new_file);
    assert_eq!(first.new_chunks, first.chunks);
    assert!(grown >= data.len() as u64, "random data is stored in full");
    let stats = store.stats().expect("stats");
    let recipes = common::dir_bytes(&dir.path().join("recipes"));

    let (again, grown) = put_measured(&store, dir.path(), &data, &[]);
    assert_eq!(again.file_id, first.file_id);
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(again.chunks, first.chunks);
    assert_eq!(again.new_chunks, 0);
    assert_eq!(again.new_bytes, 0);
    assert!(!again.new_file);
    assert_eq!(grown, 0);
    assert_eq!(common::dir_bytes(&dir.path().join("recipes")), recipes);
    assert_eq!(store.stats().expect("stats"), stats);
}

#[test]
fn the_same_file_under_another_ref_adds_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let data = noise(3 * MIB, 2);
    let (first, _) = put_measured(&store, dir.path(), &data, &["org/a@v1:model.bin"]);
    let stats = store.stats().expect("stats");
    let (again, grown) = put_measured(&store, dir.path(), &data, &["org/b@main:weights.bin"]);
    assert_eq!(again.file_id, first.file_id);
    assert_eq!(again.new_chunks, 0);
    assert_eq!(again.new_bytes, 0);
    assert_eq!(grown, 0);
    assert_eq!(
        store.resolve("org/a@v1:model.bin").expect("ref a"),
        first.file_id
    );
    assert_eq!(
        store.resolve("org/b@main:weights.bin").expect("ref b"),
        first.file_id
    );
    let after = store.stats().expect("stats");
    assert_eq!(after.refs, stats.refs + 1);
    assert_eq!(after.files, stats.files);
    assert_eq!(after.chunks, stats.chunks);
    assert_eq!(after.stored_bytes, stats.stored_bytes);
    assert_eq!(after.logical_bytes, stats.logical_bytes);
}

#[test]
fn an_insertion_costs_about_its_own_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let base = noise(16 * MIB, 3);
    let (b, _) = put_measured(&store, dir.path(), &base, &[]);
    let insert = noise(MIB, 4);
    let at = 8 * MIB + 12_345;
    let mut changed = base[..at].to_vec();
    changed.extend_from_slice(&insert);
    changed.extend_from_slice(&base[at..]);
    let (c, grown) = put_measured(&store, dir.path(), &changed, &[]);
    assert_ne!(c.file_id, b.file_id);
    assert!(c.new_file);
    // The inserted bytes are random, so they are stored in full ...
    assert!(grown >= insert.len() as u64, "grew only {grown}");
    // ... and around the insertion point content-defined chunking loses at
    // most a couple of chunks on each side before it falls back into step.
    let bound = insert.len() as u64 + 4 * max_chunk();
    assert!(
        grown <= bound,
        "an insertion of 1 MiB grew the packs by {grown} > {bound}"
    );
    assert!(
        c.new_chunks < c.chunks / 4,
        "{} of {} chunks new",
        c.new_chunks,
        c.chunks
    );
    assert!(read_back(&store, &b.file_id) == base);
}

#[test]
fn rewritten_blocks_cost_about_their_own_size() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let blocks = 20;
    let base = noise(blocks * MIB, 5);
    put_measured(&store, dir.path(), &base, &[]);
    // Rewrite 10% of the 1 MiB blocks, in regions apart from each other.
    let rewritten = [3usize, 11];
    let mut changed = base.clone();
    for (k, &i) in rewritten.iter().enumerate() {
        changed[i * MIB..(i + 1) * MIB].copy_from_slice(&noise(MIB, 100 + k as u64));
    }
    let (rep, grown) = put_measured(&store, dir.path(), &changed, &[]);

    // The bound. Every rewritten byte is random, so all of it is new. Each
    // rewritten region has two boundaries with unchanged data; at each, the
    // chunk straddling the boundary is new, and the chunker may cut one more
    // chunk differently before its cut points coincide with the old ones
    // again (a cut point depends only on the last 64 bytes and the distance
    // from the chunk start), so at most 2 × max chunk size of unchanged data
    // is stored again per boundary. On top of the raw bytes, each stored
    // chunk costs a 52-byte record header and a 56-byte table entry (under
    // 0.7% of a chunk of at least 16 KiB) and each pack a header and a
    // trailer: the 10% slack on the rewritten bytes covers that.
    let rewritten_bytes = (rewritten.len() * MIB) as u64;
    let boundaries = 2 * rewritten.len() as u64;
    let bound = rewritten_bytes * 11 / 10 + boundaries * 2 * max_chunk();
    assert!(grown >= rewritten_bytes, "grew only {grown}");
    assert!(
        grown <= bound,
        "rewriting {rewritten_bytes} bytes in {} regions grew the packs by {grown} > {bound}",
        rewritten.len()
    );
    assert!(rep.new_chunks < rep.chunks / 4);
}

/// A group commit holding the same content twice (and content already
/// stored) counts each file once, and the group becomes visible at once.
#[test]
fn a_group_with_repeated_content_counts_each_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let old = noise(300_000, 7);
    let old_id = store.put_bytes(&old, &[]).expect("put").file_id;
    let before = store.stats().expect("stats");
    let new = noise(200_000, 8);
    let mut ing = store.ingest();
    let a = ing
        .add("input", &new[..], &["g/a"], &mut |_| {})
        .expect("add");
    let b = ing
        .add("input", &new[..], &["g/b"], &mut |_| {})
        .expect("add");
    let c = ing
        .add("input", &old[..], &["g/c"], &mut |_| {})
        .expect("add");
    assert_eq!(a, b);
    assert_eq!(c, old_id);
    // Nothing of the group is visible before its commit.
    assert!(!store.contains(&a).expect("contains"));
    assert!(store.resolve_ref("g/a").is_err_and(|e| e.is_not_found()));
    let reports = ing.commit().expect("commit");
    let flags: Vec<bool> = reports.iter().map(|r| r.new_file).collect();
    assert_eq!(flags, [true, false, false]);
    let after = store.stats().expect("stats");
    assert_eq!(after.files, before.files + 1);
    assert_eq!(after.refs, before.refs + 3);
    assert_eq!(after.logical_bytes, before.logical_bytes + new.len() as u64);
    for (name, id) in [("g/a", a), ("g/b", a), ("g/c", old_id)] {
        assert_eq!(store.resolve_ref(name).expect("ref"), id);
    }
    assert!(read_back(&store, &a) == new);
}
