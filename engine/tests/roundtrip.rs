//! Round trips: whole files and byte ranges come back byte-identical.

mod common;

use std::io::{Read, Seek, SeekFrom};

use common::{noise, open, pack_files};
use tessera::{ChunkParams, Error, Store};

#[test]
fn round_trip_edge_sizes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let p = ChunkParams::default();
    let (min, max) = (p.min as usize, p.max as usize);
    let sizes = [0, 1, min - 1, min, max, max + 1, 5 * 1024 * 1024 + 17];
    for (i, &n) in sizes.iter().enumerate() {
        let data = noise(n, i as u64 + 1);
        let rep = store.put_bytes(&data, &[]).expect("put");
        assert_eq!(rep.size, n as u64);
        let back = store
            .read(&rep.file_id)
            .expect("open")
            .read_all()
            .expect("read");
        assert!(back == data, "size {n} did not round-trip");
        assert_eq!(store.info(&rep.file_id).expect("info").size, n as u64);
    }
}

#[test]
fn file_spanning_several_packs_and_random_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), common::small_packs()).expect("open");
    let data = noise(6 * 1024 * 1024 + 333, 42);
    let rep = store.put_bytes(&data, &["t/a@v1:x"]).expect("put");
    let info = store.info(&rep.file_id).expect("info");
    assert!(
        info.packs.len() >= 5,
        "expected several packs, got {}",
        info.packs.len()
    );
    assert_eq!(pack_files(dir.path()).len(), info.packs.len());
    let back = store
        .read(&rep.file_id)
        .expect("open")
        .read_all()
        .expect("read");
    assert!(back == data);

    // Random ranges, many crossing chunk and pack boundaries.
    let mut rng = tessera_synth::SplitMix64::new(12345);
    let n = data.len() as u64;
    for _ in 0..300 {
        let off = rng.below(n);
        let len = rng.below(3 << 20).min(n - off);
        let got = store.read_range(&rep.file_id, off, len).expect("range");
        assert!(
            got[..] == data[off as usize..(off + len) as usize],
            "range {off}+{len}"
        );
    }
    // Ranges across each pack boundary exactly.
    let mut pos = 0u64;
    for t in &store.layout(&rep.file_id).expect("layout").recipe.terms {
        pos += t.unpacked_len;
        if pos < n {
            let (a, b) = (pos - 7, pos + 9);
            let got = store.read_range(&rep.file_id, a, b - a).expect("range");
            assert!(got[..] == data[a as usize..b as usize]);
        }
    }
    // Empty ranges are fine anywhere up to the end.
    assert!(store
        .read_range(&rep.file_id, n, 0)
        .expect("empty")
        .is_empty());
}

#[test]
fn ranges_past_the_end_are_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let rep = store.put_bytes(&noise(100_000, 3), &[]).expect("put");
    for (off, len) in [(100_000, 1), (99_999, 2), (200_000, 0), (u64::MAX, 2)] {
        match store.read_range(&rep.file_id, off, len) {
            Err(Error::RangeOutOfBounds { size, .. }) => assert_eq!(size, 100_000),
            other => panic!("{off}+{len}: expected RangeOutOfBounds, got {other:?}"),
        }
    }
    let msg = store
        .read_range(&rep.file_id, 100_000, 1)
        .expect_err("past end")
        .to_string();
    assert!(msg.contains(&rep.file_id.to_hex()), "{msg}");
}

#[test]
fn reader_seeks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let data = noise(3 * 1024 * 1024, 9);
    let rep = store.put_bytes(&data, &[]).expect("put");
    let mut r = store.read(&rep.file_id).expect("open");
    for &off in &[2_000_000u64, 10, 3 * 1024 * 1024 - 5, 777_777] {
        r.seek(SeekFrom::Start(off)).expect("seek");
        let mut buf = [0u8; 300];
        let n = r.read(&mut buf).expect("read");
        assert!(n > 0);
        assert_eq!(&buf[..n], &data[off as usize..off as usize + n]);
    }
    r.seek(SeekFrom::End(-4)).expect("seek end");
    let mut tail = Vec::new();
    r.read_to_end(&mut tail).expect("tail");
    assert_eq!(&tail[..], &data[data.len() - 4..]);
    assert!(r.seek(SeekFrom::Current(-(data.len() as i64) - 1)).is_err());
}

#[test]
fn compressible_data_is_stored_compressed_and_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    // Text-like data compresses well.
    let data: Vec<u8> = (0..2_000_000u32)
        .map(|i| b"the quick brown fox "[(i % 20) as usize] ^ ((i / 7919) as u8 & 1))
        .collect();
    let rep = store.put_bytes(&data, &[]).expect("put");
    assert!(
        rep.new_bytes < data.len() as u64 / 4,
        "new_bytes {}",
        rep.new_bytes
    );
    let back = store
        .read(&rep.file_id)
        .expect("open")
        .read_all()
        .expect("read");
    assert!(back == data);
}

#[test]
fn lookup_by_sha256_ref_and_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    let data = noise(70_000, 5);
    let rep = store.put_bytes(&data, &["org/m@main:w.bin"]).expect("put");
    let sha = {
        use std::fmt::Write;
        let d = <sha2_hex::Sha as sha2_hex::Digest>::digest(&data);
        d.iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    };
    assert_eq!(rep.sha256.to_hex(), sha);
    assert_eq!(store.resolve(&sha).expect("by sha"), rep.file_id);
    assert_eq!(
        store.resolve(&rep.file_id.to_hex()).expect("by id"),
        rep.file_id
    );
    assert_eq!(
        store.resolve("org/m@main:w.bin").expect("by ref"),
        rep.file_id
    );
    assert!(store
        .resolve("org/m@main:nope")
        .expect_err("missing")
        .is_not_found());
    assert!(store
        .resolve(&"ab".repeat(32))
        .expect_err("missing")
        .is_not_found());
}

mod sha2_hex {
    pub use sha2::Digest;
    pub type Sha = sha2::Sha256;
}

#[test]
fn a_second_opener_gets_store_locked_with_our_pid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open(dir.path());
    match Store::open(dir.path(), common::opts()) {
        Err(Error::StoreLocked { pid, .. }) => assert_eq!(pid, std::process::id()),
        other => panic!("expected StoreLocked, got {other:?}"),
    }
    drop(store);
    // Released on drop.
    let again = Store::open(dir.path(), common::opts()).expect("reopen after drop");
    assert_eq!(again.stats().expect("stats").files, 0);
}
