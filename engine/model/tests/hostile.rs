//! Truncated, oversized and hostile inputs: each yields `other` (or the
//! format with a reason), never a panic, within the limits.

mod common;

use common::*;
use tessera_model::{Format, Limits, Verdict};

fn reason(info: &tessera_model::ModelInfo) -> String {
    info.reason.clone().unwrap_or_default()
}

#[test]
fn safetensors_huge_header_length() {
    let mut f = (1u64 << 40).to_le_bytes().to_vec();
    f.extend_from_slice(b"{\"a\":1}");
    f.extend_from_slice(&[0; 64]);
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("exceeds the limit"), "{info:?}");
}

#[test]
fn safetensors_header_longer_than_file() {
    let mut f = 1000u64.to_le_bytes().to_vec();
    f.extend_from_slice(b"{\"a\": {\"dtype\":\"F32\",");
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Other);
    assert!(
        reason(&info).contains("truncated safetensors header"),
        "{info:?}"
    );
}

#[test]
fn safetensors_offsets_past_end() {
    let f = safetensors_raw(
        r#"{"w":{"dtype":"F32","shape":[1000],"data_offsets":[0,4000]}}"#,
        16,
    );
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("past the end"), "{info:?}");
    assert!(info.tensors.is_empty());
}

#[test]
fn safetensors_overlapping_and_mismatched() {
    for (what, h) in [
        (
            "overlap",
            r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
        ),
        (
            "gap",
            r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}"#,
        ),
        (
            "size",
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
        ),
        (
            "overflow",
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}}"#,
        ),
        (
            "dtype",
            r#"{"a":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}}"#,
        ),
        ("not a tensor", r#"{"a": 5}"#),
        ("bad metadata", r#"{"__metadata__": {"k": 1}}"#),
    ] {
        let f = safetensors_raw(h, 16);
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Other, "{what}: {info:?}");
        assert!(
            reason(&info).contains("invalid safetensors header"),
            "{what}: {info:?}"
        );
    }
}

#[test]
fn safetensors_deep_json_nesting() {
    let depth = 100_000;
    let h = format!(
        "{{\"__metadata__\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let info = sniff_split(&safetensors_raw(&h, 0), &[1 << 20], &Limits::default());
    assert_eq!(info.format, Format::Other);
    assert!(
        reason(&info).contains("invalid safetensors header"),
        "{info:?}"
    );
}

#[test]
fn safetensors_trailing_bytes_are_degraded() {
    let f = safetensors_raw(
        r#"{"w":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
        10,
    );
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Safetensors);
    assert!(
        reason(&info).contains("6 bytes after the tensor data"),
        "{info:?}"
    );
    assert_eq!(info.tensors.len(), 1);
}

#[test]
fn safetensors_header_limit_is_configurable() {
    let (f, _) = safetensors(
        &[StTensor {
            name: "w",
            dtype: "U8",
            shape: vec![1],
            data: vec![1],
        }],
        &[("k", &"v".repeat(10_000))],
    );
    let limits = Limits {
        max_header_bytes: 4096,
        ..Limits::default()
    };
    let info = sniff_all_with(&f, &limits);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("exceeds the limit"));
}

fn gguf_prefix(version: u32, tensors: u64, kvs: u64) -> Vec<u8> {
    let mut f = b"GGUF".to_vec();
    f.extend_from_slice(&version.to_le_bytes());
    f.extend_from_slice(&tensors.to_le_bytes());
    f.extend_from_slice(&kvs.to_le_bytes());
    f
}

#[test]
fn gguf_absurd_counts_and_lengths() {
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("tensor count", gguf_prefix(3, u64::MAX, 0)),
        ("metadata count", gguf_prefix(3, 0, 1 << 60)),
    ];
    let mut s = gguf_prefix(3, 0, 1);
    s.extend_from_slice(&(u64::MAX - 3).to_le_bytes()); // key length
    cases.push(("string length", s));
    let mut a = gguf_prefix(3, 0, 1);
    a.extend_from_slice(&1u64.to_le_bytes());
    a.push(b'k');
    a.extend_from_slice(&9u32.to_le_bytes()); // array
    a.extend_from_slice(&4u32.to_le_bytes()); // of u32
    a.extend_from_slice(&(1u64 << 61).to_le_bytes());
    cases.push(("array length", a));
    let mut t = gguf_prefix(3, 1, 0);
    t.extend_from_slice(&1u64.to_le_bytes());
    t.push(b't');
    t.extend_from_slice(&100u32.to_le_bytes()); // n_dims
    cases.push(("dims", t));
    for (what, mut f) in cases {
        f.extend_from_slice(&[0u8; 64]);
        let info = sniff_all(&f);
        assert_eq!(info.format, Format::Other, "{what}: {info:?}");
        assert!(!reason(&info).is_empty(), "{what}");
    }
}

fn one_tensor_gguf(dims: Vec<u64>, ty: u32, rel: u64, data: usize) -> Vec<u8> {
    let mut f = gguf_prefix(3, 1, 0);
    f.extend_from_slice(&1u64.to_le_bytes());
    f.push(b't');
    f.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in &dims {
        f.extend_from_slice(&d.to_le_bytes());
    }
    f.extend_from_slice(&ty.to_le_bytes());
    f.extend_from_slice(&rel.to_le_bytes());
    while !f.len().is_multiple_of(32) {
        f.push(0);
    }
    f.extend(std::iter::repeat_n(0u8, data));
    f
}

#[test]
fn gguf_tensor_checks() {
    // past the end
    let info = sniff_all(&one_tensor_gguf(vec![1000], 0, 0, 64));
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("past the end"), "{info:?}");
    // unaligned
    let info = sniff_all(&one_tensor_gguf(vec![4], 0, 3, 64));
    assert!(reason(&info).contains("alignment"), "{info:?}");
    // quantized shape not a multiple of the block
    let info = sniff_all(&one_tensor_gguf(vec![33], 2, 0, 64));
    assert!(reason(&info).contains("block size"), "{info:?}");
    // element count overflow
    let info = sniff_all(&one_tensor_gguf(vec![u64::MAX, 3], 0, 0, 64));
    assert_eq!(info.format, Format::Other);
    // unknown type: length inferred from the file end
    let info = sniff_all(&one_tensor_gguf(vec![4], 200, 0, 64));
    assert_eq!(info.format, Format::Gguf, "{info:?}");
    assert_eq!(info.tensors[0].dtype, "type_200");
    assert_eq!(info.tensors[0].length, 64);
    assert!(!info.warnings.is_empty());
}

#[test]
fn gguf_overlapping_tensors() {
    let tensors = [
        GTensor {
            name: "a",
            dims: vec![16],
            ty: 0,
            len: 64,
        },
        GTensor {
            name: "b",
            dims: vec![16],
            ty: 0,
            len: 64,
        },
    ];
    let (mut f, _) = gguf(3, &[], &tensors, 32);
    // rewrite b's relative offset (last 8 bytes of its info) to 32
    let info_end = f.len() - 128;
    // find the offset field: header is 24 bytes, a: 8+1+4+8+4+8, b likewise
    let b_off = 24 + (8 + 1 + 4 + 8 + 4 + 8) + (8 + 1 + 4 + 8 + 4);
    assert!(b_off + 8 <= info_end);
    f[b_off..b_off + 8].copy_from_slice(&32u64.to_le_bytes());
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("overlap"), "{info:?}");
}

#[test]
fn gguf_versions_and_truncation() {
    let info = sniff_all(&gguf_prefix(1, 0, 0));
    assert_eq!(info.format, Format::Gguf);
    assert!(reason(&info).contains("version 1"));
    let info = sniff_all(&gguf_prefix(3u32.swap_bytes(), 0, 0));
    assert!(reason(&info).contains("big-endian"), "{info:?}");
    let (f, _) = gguf(
        3,
        &[("general.name", Gv::Str("x"))],
        &[GTensor {
            name: "a",
            dims: vec![4],
            ty: 0,
            len: 16,
        }],
        32,
    );
    for cut in [5, 20, 30, 50] {
        let info = sniff_all(&f[..cut]);
        assert_eq!(info.format, Format::Other, "cut at {cut}");
        assert!(reason(&info).contains("truncated GGUF header"), "{info:?}");
    }
    let limits = Limits {
        max_header_bytes: 40,
        ..Limits::default()
    };
    let info = sniff_all_with(&f, &limits);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("limit"), "{info:?}");
}

#[test]
fn zip_huge_member_name() {
    let name = "a/".repeat(32_767) + "x";
    let (f, _) = zip(&[
        ZMember::stored(&name, b"data".to_vec()),
        ZMember::stored("archive/data.pkl", torch_state_dict_pickle()),
    ]);
    let info = sniff_all(&f);
    assert_eq!(info.members.len(), 2);
    assert!(info.members[0].name.len() <= 4096 + 3);
    assert!(info
        .warnings
        .iter()
        .any(|w| w.contains("name of 65535 bytes")));
    assert_eq!(info.verdict, Verdict::SafePickle);
}

#[test]
fn zip_central_directory_pointing_elsewhere_is_unsafe() {
    // The central directory sends the loader to a local header hidden in
    // the data of an innocent member; the walk never scanned it.
    let (hidden, _) = zip(&[ZMember::stored(
        "archive/data.pkl",
        b"\x80\x02cos\nsystem\n).".to_vec(),
    )]);
    let members = [
        ZMember::stored("archive/data.pkl", torch_state_dict_pickle()),
        ZMember::stored("archive/data/0", hidden),
    ];
    let (honest, pos) = zip(&members);
    assert_eq!(sniff_all(&honest).verdict, Verdict::SafePickle);
    let inner_at = pos[1].0 as u32;
    let (f, _) = zip_with_central(&members, |i, o| if i == 0 { inner_at } else { o });
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::PytorchZip);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(reason(&info).contains("central directory"), "{info:?}");
}

#[test]
fn zip_pickle_member_that_cannot_be_read_is_unsafe() {
    let (mut f, _) = zip(&[ZMember::stored(
        "archive/data.pkl",
        b"\x80\x02K\x01.".to_vec(),
    )]);
    f[8] = 14; // compression method: LZMA
    let info = sniff_all(&f);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert!(info.pickles[0]
        .reason
        .as_deref()
        .unwrap()
        .contains("method 14"));
}

#[test]
fn zip_truncated_and_garbled() {
    let (f, _) = zip(&[
        ZMember::stored("archive/data.pkl", torch_state_dict_pickle()),
        ZMember::stored("archive/data/0", vec![0; 100]),
    ]);
    for cut in [10, 40, 100, f.len() - 60] {
        let info = sniff_all(&f[..cut]);
        assert!(
            info.reason.is_some() || !info.warnings.is_empty(),
            "cut {cut}: {info:?}"
        );
    }
    let mut g = f.clone();
    let second = f.windows(4).rposition(|w| w == b"PK\x03\x04").unwrap();
    g[second] = b'X';
    let info = sniff_all(&g);
    assert!(reason(&info).contains("expected a zip header"), "{info:?}");
}

#[test]
fn npy_hostile_headers() {
    let mut big = b"\x93NUMPY\x02\x00".to_vec();
    big.extend_from_slice(&u32::MAX.to_le_bytes());
    big.extend_from_slice(b"{'descr'");
    let info = sniff_all(&big);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("exceeds the limit"));

    let short = npy("<f8", &[100], &[0; 16]);
    let info = sniff_all(&short);
    assert_eq!(info.format, Format::Other);
    assert!(reason(&info).contains("only 16 follow"), "{info:?}");

    // Found by a probe: a shape whose byte size overflows was listed as a
    // tensor of the rest of the file.
    let huge = npy("<f8", &[1 << 62, 4], &[0; 64]);
    let info = sniff_all(&huge);
    assert_eq!(info.format, Format::Other);
    assert!(info.tensors.is_empty(), "{info:?}");
    assert!(reason(&info).contains("overflows"), "{info:?}");

    let mut evil = b"\x93NUMPY\x01\x00".to_vec();
    let dict = b"{'descr': __import__('os').system('id'), 'shape': ()}\n";
    evil.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    evil.extend_from_slice(dict);
    let info = sniff_all(&evil);
    assert_eq!(info.format, Format::Other);
}

#[test]
fn tflite_bad_root() {
    let mut f = tflite(3, "x", 0);
    f[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    let info = sniff_all(&f);
    assert_eq!(info.format, Format::Other);
    // a root table pointing at garbage yields no fields, not a panic
    let mut g = tflite(3, "x", 100);
    g[20..24].copy_from_slice(&i32::MIN.to_le_bytes());
    let info = sniff_all(&g);
    assert_eq!(info.format, Format::Tflite);
    assert_eq!(info.tflite.unwrap().version, None);
}

/// Found by a probe with real files: a TFLite file cut short was described
/// as a healthy one (no reason), its root table pointing past its end.
#[test]
fn tflite_truncated_is_degraded() {
    let f = tflite(3, "TOCO Converted.", 0);
    assert_eq!(sniff_all(&f).reason, None);
    // The description string starts at 32: cut there, its offset points
    // past the end.
    let info = sniff_all(&f[..32]);
    assert_eq!(info.format, Format::Tflite);
    assert!(
        reason(&info).contains("description at offset 32 is past the end of the file (32 bytes)"),
        "{info:?}"
    );
}

#[test]
fn onnx_truncated_is_degraded() {
    let (f, _) = onnx(&[("w", vec![64])]);
    let info = sniff_all(&f[..f.len() / 2]);
    assert_eq!(info.format, Format::Onnx);
    assert!(reason(&info).contains("truncated"), "{info:?}");
}

#[test]
fn fed_length_differs_from_total() {
    let (f, _) = onnx(&[("w", vec![4])]);
    let mut s = tessera_model::Sniffer::new(Limits::default());
    s.feed(&f);
    let info = s.finish(f.len() as u64 + 5);
    assert!(info.warnings[0].contains("bytes were fed"));
}

#[test]
fn zip_listing_limits_keep_the_verdict() {
    let names: Vec<String> = (0..10).map(|i| format!("archive/p{i}.pkl")).collect();
    let mut members: Vec<ZMember<'_>> = names
        .iter()
        .map(|n| ZMember::stored(n, b"\x80\x02K\x01.".to_vec()))
        .collect();
    members.push(ZMember::stored(
        "archive/z.pkl",
        b"cos\nsystem\n).".to_vec(),
    ));
    let (f, _) = zip(&members);
    let limits = Limits {
        max_zip_members: 4,
        ..Limits::default()
    };
    let info = sniff_all_with(&f, &limits);
    assert_eq!(info.members.len(), 4);
    assert_eq!(info.pickles.len(), 4);
    assert_eq!(info.verdict, Verdict::UnsafePickle, "{info:?}");
    assert!(reason(&info).contains("unlisted pickle"), "{info:?}");
    assert!(info.warnings.iter().any(|w| w.contains("7 pickle reports")));
}

/// Bytes that merely start like a protocol-0 pickle (a `c` then two
/// newline-terminated names), with no call of the import before the stream
/// turns invalid, are not pickles: random data and text look like that,
/// and refusing them under the default policy would refuse ordinary files.
/// A call within the valid prefix is what a loader would run: that stays
/// unsafe even if garbage follows.
#[test]
fn guessed_pickles_need_a_call_to_count() {
    for bytes in [
        &b"cha\nc\n\x01\x02garbage after the names"[..],
        &b"cos\nsystem\n\xff\xfe not a pickle any more"[..],
        &b"clip_model\nversion\n2\n3\n"[..],
    ] {
        let info = tessera_model::sniff(bytes);
        assert_eq!(
            info.verdict,
            tessera_model::Verdict::NoPickle,
            "{:?}: {}",
            String::from_utf8_lossy(bytes),
            reason(&info)
        );
    }
    let called = tessera_model::sniff(b"cos\nsystem\n(S'ls'\ntR\xff\xfe garbage");
    assert_eq!(called.verdict, tessera_model::Verdict::UnsafePickle);
    assert!(
        called.unsafe_imports.contains(&"os.system".to_string()),
        "{called:?}"
    );
}
