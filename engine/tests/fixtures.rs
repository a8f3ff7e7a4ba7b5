//! Damaged-store fixtures not covered elsewhere: each gives its exact typed
//! error or `verify` problem, and the rest of the store keeps working.

mod common;

use common::{noise, opts};
use tessera::testing::{Recipe, Term};
use tessera::FileIdHasher;
use tessera::VerifyOptions;
use tessera::{ChunkId, Error, PackId, Sha256, Store};

#[test]
fn dangling_index_entry_is_reported_and_harmless() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = noise(500_000, 1);
    let id = {
        let store = Store::open(dir.path(), opts()).expect("open");
        store.put_bytes(&data, &["d/x@1:a"]).expect("put").file_id
    };
    // Add a chunk entry naming a pack that does not exist (53-byte value).
    let ghost_pack = PackId([0xAB; 32]);
    let ghost_chunk = ChunkId::of(b"ghost");
    {
        let db = sled::Config::new()
            .path(dir.path().join("index"))
            .segment_size(tessera::testing::INDEX_SEGMENT_BYTES)
            .open()
            .expect("sled");
        let mut v = ghost_pack.0.to_vec();
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&16u64.to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.extend_from_slice(&5u32.to_le_bytes());
        v.push(0);
        db.open_tree("chunks")
            .expect("tree")
            .insert(ghost_chunk.0, v)
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = Store::open(dir.path(), opts()).expect("open");
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(
        v.problems
            .iter()
            .any(|p| p.object == format!("chunk {ghost_chunk}")
                && p.detail.contains(&ghost_pack.to_hex())),
        "{:?}",
        v.problems
    );
    assert!(store.read(&id).expect("open").read_all().expect("read") == data);
}

#[test]
fn recipe_naming_a_missing_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = noise(300_000, 2);
    let (good, pack) = {
        let store = Store::open(dir.path(), opts()).expect("open");
        let rep = store.put_bytes(&data, &[]).expect("put");
        let pack = store.info(&rep.file_id).expect("info").packs[0];
        (rep.file_id, pack)
    };
    // A self-consistent recipe (its file id matches its chunk list) whose
    // only chunk is stored nowhere; its term points at a real pack.
    let missing = ChunkId::of(b"never stored");
    let mut h = FileIdHasher::new();
    h.push(&missing, 12);
    let bad = Recipe {
        file: h.finish(),
        sha256: Sha256([0; 32]),
        size: 12,
        terms: vec![Term {
            pack,
            first_chunk: 0,
            chunk_count: 1,
            unpacked_len: 12,
        }],
        chunks: vec![(missing, 12)],
    };
    let path = dir.path().join(tessera::testing::recipe_key(&bad.file));
    std::fs::create_dir_all(path.parent().expect("fan-out dir")).expect("mkdir");
    std::fs::write(&path, bad.encode()).expect("write recipe");

    let rep = Store::repair_index(dir.path(), opts()).expect("repair");
    assert!(
        rep.problems
            .iter()
            .any(|p| p.object == format!("file {}", bad.file) && p.detail.contains("missing")),
        "{:?}",
        rep.problems
    );
    let store = Store::open(dir.path(), opts()).expect("open");
    match store.read(&bad.file).and_then(|r| r.read_all()) {
        Err(Error::ChunkCorrupt { chunk, pack: p, .. }) => {
            assert_eq!(chunk, missing);
            assert_eq!(p, pack);
        }
        other => panic!("expected ChunkCorrupt, got {:?}", other.map(|v| v.len())),
    }
    let v = store.verify(VerifyOptions::default()).expect("verify");
    assert!(
        v.problems
            .iter()
            .any(|p| p.object == format!("file {}", bad.file)),
        "{:?}",
        v.problems
    );
    assert!(store.read(&good).expect("open").read_all().expect("read") == data);
}

#[test]
fn garbage_in_place_of_the_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A directory of random files, no config: not a store, and not created
    // unless asked.
    let junk = dir.path().join("junk");
    std::fs::create_dir_all(junk.join("packs")).expect("mkdir");
    std::fs::write(junk.join("packs/zz"), noise(1000, 3)).expect("write");
    std::fs::write(junk.join("index"), noise(1000, 4)).expect("write");
    let no_create = tessera::StoreOptions {
        create: false,
        ..opts()
    };
    assert!(matches!(
        Store::open(&junk, no_create.clone()),
        Err(Error::StoreNotFound { .. })
    ));
    // Random bytes as the config.
    std::fs::write(junk.join("tessera.store"), noise(64, 5)).expect("write");
    assert!(matches!(
        Store::open(&junk, no_create.clone()),
        Err(Error::ConfigCorrupt { .. })
    ));
    std::fs::write(junk.join("tessera.store"), noise(7, 6)).expect("write");
    assert!(matches!(
        Store::open(&junk, no_create),
        Err(Error::ConfigCorrupt { .. })
    ));
    // A regular file where the store directory should be: an I/O error
    // naming it (the name is distinctive: the temp dir's path is not).
    let file = dir.path().join("plain-file.bin");
    std::fs::write(&file, b"not a directory").expect("write");
    for create in [false, true] {
        let o = tessera::StoreOptions { create, ..opts() };
        match Store::open(&file, o) {
            Err(e @ Error::Io { .. }) => {
                let msg = e.to_string();
                assert!(msg.contains("plain-file.bin"), "{msg}");
                assert!(msg.to_lowercase().contains("not a directory"), "{msg}");
            }
            other => panic!("expected an I/O error naming the path, got {other:?}"),
        }
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"not a directory");
    // The garbage was not modified.
    assert_eq!(
        std::fs::read(junk.join("index")).expect("read"),
        noise(1000, 4)
    );
}
