//! A whole `tessera::Store` over the S3 backend on a loopback server: put,
//! read whole and by range, dedup, rebuild the index from the bucket alone,
//! verify. Prints request counts and throughput next to the directory
//! backend on the same data (measured, not asserted; see the README for the
//! figures and `cargo test -p tessera-s3 --test e2e -- --nocapture`).

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tessera::storage::ObjectStore;
use tessera::{FileId, Store, StoreOptions, VerifyOptions};
use tessera_s3::testing::{s3_target, S3Target};
use tessera_s3::{S3Stats, S3Store};

const MIB: usize = 1 << 20;

fn opts(create: bool) -> StoreOptions {
    StoreOptions {
        create,
        pack_target_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

/// A fresh S3 store instance (empty block cache) at `url`.
fn s3_at(t: &S3Target, url: &str, staging: &Path) -> Arc<S3Store> {
    let mut o = t.options();
    o.staging_dir = Some(staging.to_path_buf());
    match S3Store::from_url(url, o) {
        Ok(s) => Arc::new(s),
        Err(e) => panic!("{url}: {e}"),
    }
}

fn mbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / MIB as f64 / secs.max(1e-9)
}

struct Files {
    big: Vec<u8>,
    small: Vec<u8>,
    variant: Vec<u8>,
}

fn files() -> Files {
    let big = tessera_synth::noise(20 * MIB + 12_345, 1);
    let small = tessera_synth::noise(100 << 10, 2);
    // The big file with 256 KiB rewritten in the middle: mostly shared chunks.
    let mut variant = big.clone();
    variant[10 * MIB..10 * MIB + (256 << 10)].copy_from_slice(&tessera_synth::noise(256 << 10, 3));
    Files {
        big,
        small,
        variant,
    }
}

/// Puts the three files; returns the big file's id and the seconds the big
/// put took. `after_big` runs right after the big put.
fn ingest(store: &Store, f: &Files, after_big: &mut dyn FnMut()) -> (FileId, f64) {
    let t0 = Instant::now();
    let big = store.put_bytes(&f.big, &["e2e/big"]).expect("put big");
    let secs = t0.elapsed().as_secs_f64();
    after_big();
    assert!(big.new_file);
    store
        .put_bytes(&f.small, &["e2e/small"])
        .expect("put small");
    let v = store
        .put_bytes(&f.variant, &["e2e/variant"])
        .expect("put variant");
    assert!(
        v.new_chunks < v.chunks / 4,
        "the variant shares most chunks: {} of {} new",
        v.new_chunks,
        v.chunks
    );
    (big.file_id, secs)
}

/// Reads the big file whole; returns the seconds it took.
fn restore(store: &Store, id: &FileId, want: &[u8]) -> f64 {
    let t0 = Instant::now();
    let got = store.read(id).expect("read").read_all().expect("read all");
    let secs = t0.elapsed().as_secs_f64();
    assert!(got == want, "the big file read back differs");
    secs
}

#[test]
fn a_store_over_s3_round_trips_dedups_rebuilds_its_index_and_verifies() {
    let Some(t) = s3_target("a_store_over_s3_round_trips_dedups_rebuilds_its_index_and_verifies")
    else {
        return;
    };
    let f = files();
    let tmp = tempfile::tempdir().expect("tempdir");
    let staging = tmp.path().join("staging");
    let url = t.url("e2e");

    // Create and ingest.
    let s3 = s3_at(t, &url, &staging);
    let c_open = s3.stats();
    let store =
        Store::open_with(s3.clone(), tmp.path().join("local-1"), opts(true)).expect("create");
    let open_reqs = s3.stats().since(&c_open);
    let c0 = s3.stats();
    let mut big_ingest = S3Stats::default();
    let (big_id, s3_ingest_secs) = ingest(&store, &f, &mut || big_ingest = s3.stats().since(&c0));
    let all_ingest = s3.stats().since(&c0);
    let packs = s3.list("packs/").expect("list packs");
    assert!(
        packs.len() >= 20,
        "20 MiB in 1 MiB packs: {} packs",
        packs.len()
    );

    // Dedup: the same bytes again store nothing new (only a ref object).
    let c1 = s3.stats();
    let again = store
        .put_bytes(&f.big, &["e2e/big-again"])
        .expect("put again");
    let dedup = s3.stats().since(&c1);
    assert_eq!((again.new_chunks, again.new_file), (0, false));
    assert_eq!(again.file_id, big_id);
    assert_eq!(s3.list("packs/").expect("list"), packs, "no new pack");
    assert!(
        dedup.puts <= 1,
        "a duplicate put uploads at most its ref: {dedup}"
    );

    // Ranges, through the warm store.
    for (off, len) in [(0, 100), (5 * MIB + 123, 3 * MIB), (f.big.len() - 777, 777)] {
        let got = store
            .read_range(&big_id, off as u64, len as u64)
            .expect("range");
        assert_eq!(&got[..], &f.big[off..off + len], "range {off}+{len}");
    }
    store.close().expect("close");

    // Cold reads: each through a fresh S3 store instance (empty block
    // cache) and a fresh engine (empty pack cache) over the same local index.
    let cold = |what: &str, run: &mut dyn FnMut(&Store)| -> S3Stats {
        let s3 = s3_at(t, &url, &staging);
        let store = Store::open_with(s3.clone(), tmp.path().join("local-1"), opts(false))
            .unwrap_or_else(|e| panic!("reopen for {what}: {e}"));
        let c = s3.stats();
        run(&store);
        let d = s3.stats().since(&c);
        store.close().expect("close");
        d
    };
    let mut s3_restore_secs = 0.0;
    let read_reqs = cold("read", &mut |store| {
        s3_restore_secs = restore(store, &big_id, &f.big);
    });
    let range_reqs = cold("range", &mut |store| {
        let variant = store.resolve("e2e/variant").expect("ref");
        let got = store
            .read_range(&variant, 10 * MIB as u64, 1000)
            .expect("range");
        assert_eq!(&got[..], &f.variant[10 * MIB..10 * MIB + 1000]);
    });
    let verify_reqs = cold("verify", &mut |store| {
        let v = store.verify(VerifyOptions::default()).expect("verify");
        assert!(v.problems.is_empty(), "verify: {:?}", v.problems);
    });

    // Lose the local state: rebuild the index from the bucket listing alone.
    let s3 = s3_at(t, &url, &staging);
    let c5 = s3.stats();
    let rep = Store::repair_index_with(s3.clone(), tmp.path().join("local-2"), opts(false))
        .expect("repair index");
    let repair_reqs = s3.stats().since(&c5);
    assert!(rep.problems.is_empty(), "repair: {:?}", rep.problems);
    assert_eq!(rep.files, 3, "three distinct files");
    assert_eq!(rep.refs, 4, "four refs");
    assert_eq!(rep.packs as usize, packs.len());
    let store =
        Store::open_with(s3.clone(), tmp.path().join("local-2"), opts(false)).expect("open");
    assert_eq!(store.resolve("e2e/big-again").expect("ref"), big_id);
    let got = store
        .read(&big_id)
        .expect("read")
        .read_all()
        .expect("read all");
    assert!(got == f.big, "the big file after repair differs");
    let small = store.resolve("e2e/small").expect("ref");
    assert_eq!(
        store.read(&small).expect("read").read_all().expect("read"),
        f.small
    );
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(
        v.problems.is_empty(),
        "verify after repair: {:?}",
        v.problems
    );
    store.close().expect("close");

    // The directory backend on the same data, for comparison.
    let dir = tmp.path().join("dir-store");
    let ds = Store::open(&dir, opts(true)).expect("dir store");
    let (dir_big, dir_ingest_secs) = ingest(&ds, &f, &mut || {});
    ds.close().expect("close");
    let ds = Store::open(&dir, opts(false)).expect("dir store");
    let dir_restore_secs = restore(&ds, &dir_big, &f.big);
    ds.close().expect("close");

    let big = f.big.len();
    let line = |what: &str, s: &S3Stats| eprintln!("  {what:<34} {s}");
    eprintln!(
        "S3 backend ({}), 1 MiB packs, {} packs:",
        t.source,
        packs.len()
    );
    line("open (create) the store:", &open_reqs);
    line("ingest the 20 MiB file:", &big_ingest);
    line("ingest all three files:", &all_ingest);
    line("re-put the 20 MiB file (dedup):", &dedup);
    line("cold read of the 20 MiB file:", &read_reqs);
    line("cold 1000-byte range read:", &range_reqs);
    line("cold verify (all data):", &verify_reqs);
    line("repair index from the bucket:", &repair_reqs);
    eprintln!(
        "  throughput, 20 MiB file: ingest S3 {:.0} MB/s vs dir {:.0} MB/s; \
         cold restore S3 {:.0} MB/s vs dir {:.0} MB/s",
        mbps(big, s3_ingest_secs),
        mbps(big, dir_ingest_secs),
        mbps(big, s3_restore_secs),
        mbps(big, dir_restore_secs)
    );
}
