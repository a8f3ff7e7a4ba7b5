//! The float-aware chunk codec in the store: bf16 weights are stored as
//! byte planes at well under zstd's size and read back exactly; a store of
//! version 1 (made before encoding 2 existed) keeps writing only encodings
//! an older engine reads.

mod common;

use std::io::Read;

use common::opts;
use tessera::testing::{Compression, StoreConfig, CONFIG};
use tessera::{Store, StoreOptions};
use tessera_synth::{DType, ModelSpec};

fn model(dtype: DType) -> Vec<u8> {
    let mut v = Vec::new();
    ModelSpec::base(9, 16 << 20, dtype)
        .reader()
        .read_to_end(&mut v)
        .expect("generate");
    v
}

/// The encodings used by the chunks of every pack of a store.
fn encodings(store: &Store, file: &tessera::FileId) -> Vec<Compression> {
    let layout = store.layout(file).expect("layout");
    (0..layout.chunk_count())
        .map(|i| {
            let c = layout.chunk(i).expect("chunk");
            store
                .pack(&c.pack)
                .expect("pack")
                .entry(c.pack_index)
                .expect("entry")
                .compression
        })
        .collect()
}

#[test]
fn bf16_weights_are_stored_as_byte_planes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    let data = model(DType::BF16);
    let rep = store.put_bytes(&data, &[]).expect("put");
    let ratio = rep.new_bytes as f64 / data.len() as f64;
    assert!(ratio <= 0.70, "bf16 stored at {ratio:.3} of raw");
    let enc = encodings(&store, &rep.file_id);
    let planes = enc
        .iter()
        .filter(|c| **c == Compression::FloatPlanes)
        .count();
    assert!(
        planes * 10 >= enc.len() * 9,
        "{planes} of {} chunks as planes",
        enc.len()
    );
    assert!(
        store
            .read(&rep.file_id)
            .expect("open")
            .read_all()
            .expect("read")
            == data
    );
    // A range read inside plane-coded chunks.
    let got = store
        .read_range(&rep.file_id, 5_000_001, 300_000)
        .expect("range");
    assert_eq!(&got[..], &data[5_000_001..5_300_001]);
    assert!(store
        .verify(tessera::VerifyOptions::default())
        .expect("verify")
        .is_clean());
}

#[test]
fn a_version_1_store_writes_only_what_version_1_readers_decode() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Store::open(dir.path(), opts()).expect("create"));
    // Turn it into a store as an engine before encoding 2 made it.
    let path = dir.path().join(CONFIG);
    let cfg = StoreConfig::decode(&std::fs::read(&path).expect("config")).expect("decode");
    assert_eq!(cfg.version, tessera::testing::STORE_VERSION);
    std::fs::write(&path, StoreConfig { version: 1, ..cfg }.encode()).expect("write");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            create: false,
            ..opts()
        },
    )
    .expect("a version-1 store opens");
    let data = model(DType::BF16);
    let rep = store.put_bytes(&data, &[]).expect("put");
    let enc = encodings(&store, &rep.file_id);
    assert!(
        enc.iter().all(|c| *c != Compression::FloatPlanes),
        "{enc:?}"
    );
    assert!(enc.contains(&Compression::Zstd));
    assert!(
        store
            .read(&rep.file_id)
            .expect("open")
            .read_all()
            .expect("read")
            == data
    );
}
