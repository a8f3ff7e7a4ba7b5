//! Small files written by the real libraries (numpy, safetensors, gguf,
//! onnx; see `data/make_fixtures.py`), checked against the facts those
//! libraries report in `data/expected.json`, fed in several splits.

mod common;

use std::path::Path;

use common::sniff_all;

#[test]
fn fixtures_match_the_libraries() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
    let files = expected.as_object().unwrap();
    assert_eq!(files.len(), 9);
    for (file, want) in files {
        let data = std::fs::read(dir.join(file)).unwrap();
        let info = sniff_all(&data);
        assert_eq!(
            info.format.as_str(),
            want["format"],
            "{file}: {:?}",
            info.reason
        );
        assert_eq!(info.reason, None, "{file}");
        if let Some(v) = want.get("verdict") {
            assert_eq!(serde_json::to_value(info.verdict).unwrap(), *v, "{file}");
        }
        let Some(tensors) = want.get("tensors").and_then(|t| t.as_object()) else {
            continue;
        };
        assert_eq!(info.tensors.len(), tensors.len(), "{file}");
        for (name, t) in tensors {
            let got = info
                .tensors
                .iter()
                .find(|x| &x.name == name)
                .unwrap_or_else(|| panic!("{file}: no tensor {name}"));
            assert_eq!(got.offset, t[0].as_u64(), "{file} {name} offset");
            assert_eq!(Some(got.length), t[1].as_u64(), "{file} {name} length");
            assert_eq!(got.dtype, t[2].as_str().unwrap(), "{file} {name} dtype");
            let shape: Vec<u64> = t[3]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            assert_eq!(got.shape, shape, "{file} {name} shape");
        }
    }
}
