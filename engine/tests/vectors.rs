//! The format spec's test vectors (format-spec/test-vectors/vectors.json)
//! must match the code. Set TESSERA_BLESS=1 to regenerate the file after an
//! intended format change (and bump the version / update the spec).

use std::path::PathBuf;

use serde_json::{json, Value};
use tessera::{ChunkId, ChunkParams, FileIdHasher, Store, StoreOptions};
use tessera_synth::SplitMix64;

fn inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut rng = SplitMix64::new(42);
    let mut splitmix = vec![0u8; 1 << 20];
    rng.fill_bytes(&mut splitmix);
    vec![
        ("splitmix-1mib", splitmix),
        ("constant-1mib", vec![0x61; 1 << 20]),
        ("empty", Vec::new()),
    ]
}

fn compute(name: &str, data: &[u8]) -> Value {
    let params = ChunkParams::default();
    let mut fid = FileIdHasher::new();
    let chunks: Vec<Value> = params
        .boundaries(data)
        .into_iter()
        .map(|r| {
            let id = ChunkId::of(&data[r.clone()]);
            fid.push(&id, r.len() as u64);
            json!({"offset": r.start, "len": r.len(), "id": id.to_hex()})
        })
        .collect();
    // Store it uncompressed in a fresh store: one pack, one recipe.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(
        dir.path(),
        StoreOptions {
            create: true,
            zstd_level: 0,
            ..Default::default()
        },
    )
    .expect("open");
    let rep = store.put_bytes(data, &[]).expect("put");
    assert_eq!(
        rep.file_id,
        fid.finish(),
        "{name}: store and spec file id differ"
    );
    let info = store.info(&rep.file_id).expect("info");
    let recipe_key = dir.path().join(tessera::testing::recipe_key(&rep.file_id));
    let recipe = std::fs::read(recipe_key).expect("recipe file");
    json!({
        "name": name,
        "size": data.len(),
        "sha256": rep.sha256.to_hex(),
        "chunks": chunks,
        "file_id": rep.file_id.to_hex(),
        "pack_ids": info.packs.iter().map(|p| p.to_hex()).collect::<Vec<_>>(),
        "recipe_len": recipe.len(),
        "recipe_blake3": blake3::hash(&recipe).to_hex().to_string(),
    })
}

#[test]
fn spec_test_vectors_match_the_code() {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../format-spec/test-vectors/vectors.json");
    let computed = json!({
        "format_version": tessera::testing::FORMAT_VERSION,
        "chunking": {"algorithm": "FastCDC-2020", "min": 16384, "avg": 65536, "max": 262144, "normalization": 1},
        "vectors": inputs().iter().map(|(n, d)| compute(n, d)).collect::<Vec<_>>(),
    });
    if std::env::var_os("TESSERA_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&computed).expect("json") + "\n";
        std::fs::write(&path, text).expect("write vectors");
        return;
    }
    let text =
        std::fs::read_to_string(&path).expect("format-spec/test-vectors/vectors.json exists");
    let stored: Value = serde_json::from_str(&text).expect("vectors parse");
    assert_eq!(
        stored, computed,
        "code and format-spec test vectors disagree"
    );
    // The vectors must exercise what they claim to.
    let v = &stored["vectors"];
    assert!(v[0]["chunks"].as_array().map_or(0, |a| a.len()) > 4);
    assert_eq!(
        v[1]["chunks"][0]["len"], 262144,
        "constant input cuts at max"
    );
    assert_eq!(v[2]["chunks"].as_array().map(|a| a.len()), Some(0));
}
