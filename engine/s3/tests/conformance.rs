//! The ObjectStore contract, run against the directory backend and the S3
//! backend (the S3 runs are skipped, loudly, without a server: see
//! `tessera_s3::testing::s3_target`).

use tessera::storage::DirStore;
use tessera::ReadMode;
use tessera_s3::testing::{conformance, s3_target};
use tessera_s3::{S3Options, S3Store};

fn s3_store(test: &str, options: S3Options) -> Option<(S3Store, tempfile::TempDir)> {
    let t = s3_target(test)?;
    let staging = tempfile::tempdir().expect("tempdir");
    let s = t.store(
        test,
        S3Options {
            staging_dir: Some(staging.path().join("staging")),
            ..options
        },
    );
    Some((s, staging))
}

#[test]
fn dir_store_conforms() {
    for mode in [ReadMode::Pread, ReadMode::Mmap] {
        let d = tempfile::tempdir().expect("tempdir");
        let s = DirStore::new(d.path().join("store"), mode);
        conformance::run_single_threaded(&s);
        conformance::list_many(&s, 1100);
    }
}

/// Two threads publishing one new key create-only: exactly one wins
/// (`DirStore` publishes create-only with a hard link, which fails
/// atomically when the key exists).
#[test]
fn dir_store_concurrent_create_only_publish() {
    let d = tempfile::tempdir().expect("tempdir");
    let s = DirStore::new(d.path().join("store"), ReadMode::Pread);
    conformance::concurrent_create(&s, 50);
}

#[test]
fn s3_store_conforms() {
    let Some((s, _staging)) = s3_store("s3_store_conforms", S3Options::default()) else {
        return;
    };
    conformance::run_all(&s);
}

#[test]
fn s3_store_lists_past_one_page() {
    let Some((s, _staging)) = s3_store("s3_store_lists_past_one_page", S3Options::default()) else {
        return;
    };
    let before = s.stats();
    conformance::list_many(&s, 1100);
    // 1100 keys need two LIST pages of at most 1000 (the two list calls).
    let lists = s.stats().since(&before).lists;
    assert!(
        lists >= 3,
        "expected paginated listing, saw {lists} LIST requests"
    );
}

#[test]
fn s3_store_with_small_blocks_and_a_tiny_cache_reads_correctly() {
    // 64 KiB blocks, a cache of four blocks (evicting all the time), short
    // read-ahead: the block logic at its edges.
    let opts = S3Options {
        block_size: 64 << 10,
        cache_bytes: 256 << 10,
        readahead_blocks: 3,
        ..S3Options::default()
    };
    let Some((s, _staging)) = s3_store("s3_small_blocks", opts) else {
        return;
    };
    conformance::ranged_reads(&s);
    assert!(s.cached_bytes() <= 256 << 10, "cache over its bound");
}

#[test]
fn s3_store_without_a_cache_reads_correctly() {
    let opts = S3Options {
        block_size: 100_000,
        cache_bytes: 0,
        ..S3Options::default()
    };
    let Some((s, _staging)) = s3_store("s3_no_cache", opts) else {
        return;
    };
    conformance::ranged_reads(&s);
    assert_eq!(s.cached_bytes(), 0);
}
