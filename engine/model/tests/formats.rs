//! Each format, built by the test, fed in several splits.

mod common;

use common::*;
use tessera_model::{tensor_boundaries, Format, MetaValue, Verdict};

fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

#[test]
fn safetensors_tensors_and_offsets() {
    let tensors = [
        StTensor {
            name: "b.bias",
            dtype: "F32",
            shape: vec![4],
            data: f32_bytes(4),
        },
        StTensor {
            name: "a.weight",
            dtype: "F16",
            shape: vec![2, 3],
            data: vec![1; 12],
        },
        StTensor {
            name: "c.scale",
            dtype: "BF16",
            shape: vec![],
            data: vec![2; 2],
        },
    ];
    let (file, pos) = safetensors(&tensors, &[("format", "pt")]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Safetensors, "{:?}", info.reason);
    assert_eq!(info.reason, None);
    assert_eq!(info.verdict, Verdict::NoPickle);
    assert_eq!(info.tensors.len(), 3);
    for (t, (name, (off, len))) in info
        .tensors
        .iter()
        .zip(["b.bias", "a.weight", "c.scale"].iter().zip(&pos))
    {
        assert_eq!(t.name, *name);
        assert_eq!(t.offset, Some(*off), "{name}");
        assert_eq!(t.length, *len, "{name}");
    }
    assert_eq!(info.tensors[1].dtype, "F16");
    assert_eq!(info.tensors[1].shape, vec![2, 3]);
    assert_eq!(
        info.metadata.get("format"),
        Some(&MetaValue::Str("pt".into()))
    );
    let h = info.safetensors.as_ref().unwrap();
    assert_eq!(h.data_offset, pos[0].0);
    assert_eq!(h.data_len, 16 + 12 + 2);
    assert_eq!(
        tensor_boundaries(&info),
        vec![pos[0].0, pos[1].0, pos[2].0],
        "cut points at each tensor start (the last end is the file end)"
    );
}

#[test]
fn safetensors_empty_file_is_valid() {
    let file = safetensors_raw("{}", 0);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Safetensors);
    assert!(info.tensors.is_empty());
}

#[test]
fn gguf_v3_metadata_tensors_offsets() {
    let kv = [
        ("general.architecture", Gv::Str("llama")),
        ("general.name", Gv::Str("tiny")),
        ("llama.block_count", Gv::U32(2)),
        ("llama.rope.freq_base", Gv::F32(10000.0)),
        ("general.file_type", Gv::I32(-3)),
        ("tokenizer.ggml.add_bos_token", Gv::Bool(true)),
        (
            "tokenizer.ggml.tokens",
            Gv::ArrStr(vec!["<s>", "</s>", "a"]),
        ),
        ("tokenizer.ggml.token_type", Gv::ArrI32(vec![3, 3, 1])),
        ("x.u8", Gv::U8(7)),
        ("x.u64", Gv::U64(1 << 40)),
    ];
    let tensors = [
        GTensor {
            name: "token_embd.weight",
            dims: vec![64, 3],
            ty: 0,
            len: 64 * 3 * 4,
        },
        GTensor {
            name: "blk.0.attn_q.weight",
            dims: vec![64, 2],
            ty: 2, // Q4_0: 32 elems per 18-byte block
            len: 4 * 18,
        },
        GTensor {
            name: "blk.0.ffn.weight",
            dims: vec![256],
            ty: 12, // Q4_K: 256 per 144
            len: 144,
        },
        GTensor {
            name: "output_norm.weight",
            dims: vec![5],
            ty: 1,
            len: 10,
        },
    ];
    let (file, pos) = gguf(3, &kv, &tensors, 32);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Gguf, "{:?}", info.reason);
    let h = info.gguf.as_ref().unwrap();
    assert_eq!((h.version, h.tensor_count, h.metadata_count), (3, 4, 10));
    assert_eq!(h.alignment, 32);
    assert_eq!(h.data_offset % 32, 0);
    assert_eq!(info.tensors.len(), 4);
    for (t, (g, (off, len))) in info.tensors.iter().zip(tensors.iter().zip(&pos)) {
        assert_eq!(t.name, g.name);
        assert_eq!(t.offset, Some(*off), "{}", g.name);
        assert_eq!(t.length, *len, "{}", g.name);
        assert_eq!(t.shape, g.dims);
    }
    assert_eq!(info.tensors[1].dtype, "Q4_0");
    assert_eq!(info.tensors[2].dtype, "Q4_K");
    let m = &info.metadata;
    assert_eq!(m["general.architecture"], MetaValue::Str("llama".into()));
    assert_eq!(m["llama.block_count"], MetaValue::UInt(2));
    assert_eq!(m["llama.rope.freq_base"], MetaValue::Float(10000.0));
    assert_eq!(m["general.file_type"], MetaValue::Int(-3));
    assert_eq!(m["tokenizer.ggml.add_bos_token"], MetaValue::Bool(true));
    assert_eq!(
        m["tokenizer.ggml.tokens"],
        MetaValue::Array {
            array_of: "string".into(),
            len: 3
        }
    );
    assert_eq!(
        m["tokenizer.ggml.token_type"],
        MetaValue::Array {
            array_of: "int32".into(),
            len: 3
        }
    );
    assert_eq!(m["x.u64"], MetaValue::UInt(1 << 40));
    let cuts = tensor_boundaries(&info);
    for (off, len) in &pos {
        assert!(cuts.contains(off));
        if off + len < file.len() as u64 {
            assert!(cuts.contains(&(off + len)));
        }
    }
}

#[test]
fn gguf_v2_custom_alignment() {
    let kv = [("general.alignment", Gv::U32(64))];
    let tensors = [
        GTensor {
            name: "a",
            dims: vec![3],
            ty: 0,
            len: 12,
        },
        GTensor {
            name: "b",
            dims: vec![32],
            ty: 8, // Q8_0: 32 per 34
            len: 34,
        },
    ];
    let (file, pos) = gguf(2, &kv, &tensors, 64);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Gguf, "{:?}", info.reason);
    let h = info.gguf.as_ref().unwrap();
    assert_eq!((h.version, h.alignment), (2, 64));
    assert_eq!(h.data_offset % 64, 0);
    assert_eq!(info.tensors[0].offset, Some(pos[0].0));
    assert_eq!(info.tensors[1].offset, Some(pos[1].0));
    assert_eq!(pos[1].0 - pos[0].0, 64, "second tensor aligned to 64");
    assert_eq!(info.tensors[1].length, 34);
}

#[test]
fn npy_plain_array() {
    let data = f32_bytes(12);
    let file = npy("<f4", &[3, 4], &data);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Npy, "{:?}", info.reason);
    let t = &info.tensors[0];
    assert_eq!(t.dtype, "<f4");
    assert_eq!(t.shape, vec![3, 4]);
    assert_eq!(t.length, 48);
    assert_eq!(t.offset, Some(file.len() as u64 - 48));
    assert_eq!(t.offset.unwrap() % 64, 0, "npy data is 64-aligned");
    assert_eq!(info.npy.as_ref().unwrap().version, "1.0");
    assert_eq!(info.verdict, Verdict::NoPickle);
}

#[test]
fn npy_object_array_pickle_is_scanned() {
    // np.save of an object array: header '|O' then a protocol 3 pickle.
    let safe = npy("|O", &[2], b"\x80\x03]q\x00(K\x01X\x01\x00\x00\x00aq\x01e.");
    let info = sniff_all(&safe);
    assert_eq!(info.format, Format::Npy);
    assert!(info.npy.as_ref().unwrap().object);
    assert_eq!(info.pickles.len(), 1);
    assert_eq!(info.verdict, Verdict::SafePickle);
    assert_eq!(
        info.tensors[0].offset, None,
        "object arrays have no raw data"
    );

    let evil = npy(
        "|O",
        &[1],
        b"\x80\x03cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.",
    );
    let info = sniff_all(&evil);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert_eq!(info.unsafe_imports, vec!["posix.system"]);
}

#[test]
fn npz_stored_and_deflated() {
    let a = npy("<i8", &[5], &[7u8; 40]);
    let b = npy("<f2", &[2, 2], &[1u8; 8]);
    for method in [Method::Stored, Method::Deflated] {
        let mk = |name, data: &Vec<u8>| ZMember {
            method,
            ..ZMember::stored(name, data.clone())
        };
        let (file, pos) = zip(&[mk("a.npy", &a), mk("b.npy", &b)]);
        let info = sniff_all(&file);
        assert_eq!(info.format, Format::Npz, "{method:?} {:?}", info.reason);
        assert_eq!(info.reason, None, "{method:?}");
        assert_eq!(info.tensors.len(), 2);
        assert_eq!(info.tensors[0].name, "a");
        assert_eq!(info.tensors[0].dtype, "<i8");
        assert_eq!(info.tensors[0].length, 40);
        assert_eq!(info.tensors[1].shape, vec![2, 2]);
        assert_eq!(info.members.len(), 2);
        assert_eq!(info.members[0].offset, pos[0].0);
        assert_eq!(info.members[1].compressed_size, pos[1].1);
        if method == Method::Stored {
            assert_eq!(info.tensors[0].offset, Some(pos[0].0 + a.len() as u64 - 40));
        } else {
            assert_eq!(info.tensors[0].offset, None);
            assert_eq!(info.members[0].method, 8);
        }
    }
}

#[test]
fn npz_with_data_descriptors() {
    // Written to a pipe: sizes after the data.
    let a = npy("<f4", &[16], &f32_bytes(16));
    let b = npy(
        "|O",
        &[1],
        b"\x80\x04\x95\x07\x00\x00\x00\x00\x00\x00\x00]\x94K\x01a.",
    );
    for method in [Method::Stored, Method::Deflated] {
        let m = |name, data: &Vec<u8>| ZMember {
            method,
            descriptor: true,
            ..ZMember::stored(name, data.clone())
        };
        let (file, pos) = zip(&[m("a.npy", &a), m("b.npy", &b)]);
        let info = sniff_all(&file);
        assert_eq!(info.format, Format::Npz, "{method:?} {:?}", info.reason);
        assert_eq!(info.reason, None, "{method:?}");
        assert_eq!(info.members.len(), 2, "{:?}", info.members);
        assert_eq!(info.members[0].compressed_size, pos[0].1);
        assert_eq!(info.members[1].offset, pos[1].0);
        assert_eq!(info.tensors.len(), 2);
        assert_eq!(info.pickles.len(), 1, "the object array's pickle");
        assert_eq!(info.verdict, Verdict::SafePickle, "{:?}", info.pickles);
    }
}

fn torch_zip(pickle: Vec<u8>, prefix: &str) -> (Vec<u8>, Vec<(u64, u64)>) {
    let names = [
        format!("{prefix}/data.pkl"),
        format!("{prefix}/byteorder"),
        format!("{prefix}/data/0"),
        format!("{prefix}/version"),
        format!("{prefix}/.data/serialization_id"),
    ];
    // torch pads the extra field so storages start 64-aligned
    let mut storage = ZMember::stored(&names[2], f32_bytes(6));
    storage.extra = {
        let mut e = b"FB".to_vec();
        e.extend_from_slice(&7u16.to_le_bytes());
        e.extend_from_slice(b"ZZZZZZZ");
        e
    };
    zip(&[
        ZMember::stored(&names[0], pickle),
        ZMember::stored(&names[1], b"little".to_vec()),
        storage,
        ZMember::stored(&names[3], b"3\n".to_vec()),
        ZMember::stored(&names[4], b"1234".to_vec()),
    ])
}

#[test]
fn pytorch_zip_checkpoint_is_safe() {
    let (file, pos) = torch_zip(torch_state_dict_pickle(), "archive");
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::PytorchZip, "{:?}", info.reason);
    assert_eq!(info.reason, None);
    assert_eq!(info.members.len(), 5);
    assert_eq!(info.members[2].name, "archive/data/0");
    assert_eq!(info.members[2].offset, pos[2].0);
    assert_eq!(info.members[2].compressed_size, 24);
    assert_eq!(info.pickles.len(), 1);
    let p = &info.pickles[0];
    assert_eq!(p.location, "archive/data.pkl");
    assert_eq!(p.offset, Some(pos[0].0));
    assert!(p.complete, "{:?}", p.reason);
    assert_eq!(p.protocol, Some(2));
    assert_eq!(
        info.pickle_imports,
        vec![
            "collections.OrderedDict",
            "torch.FloatStorage",
            "torch._utils._rebuild_tensor_v2"
        ]
    );
    assert!(info.unsafe_imports.is_empty());
    assert_eq!(info.verdict, Verdict::SafePickle);
    let rebuild = p
        .imports
        .iter()
        .find(|i| i.name == "_rebuild_tensor_v2")
        .unwrap();
    assert_eq!(rebuild.calls, vec![tessera_model::ImportCall::Reduce]);
    let storage = p.imports.iter().find(|i| i.name == "FloatStorage").unwrap();
    assert!(storage.calls.is_empty(), "storage class is only referenced");
    // chunk cuts at storage boundaries
    let cuts = tensor_boundaries(&info);
    assert!(cuts.contains(&pos[2].0) && cuts.contains(&(pos[2].0 + 24)));
}

#[test]
fn pytorch_zip_with_malicious_pickle_is_unsafe() {
    let evil = b"\x80\x02cos\nsystem\nq\x00X\x05\x00\x00\x00touchq\x01\x85q\x02Rq\x03.".to_vec();
    let (file, _) = torch_zip(evil, "model");
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::PytorchZip);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
    assert_eq!(info.unsafe_imports, vec!["os.system"]);
}

#[test]
fn torchscript_archive() {
    let (file, _) = zip(&[
        ZMember::stored("m/data.pkl", torch_state_dict_pickle()),
        ZMember::stored(
            "m/code/__torch__/m.py",
            b"def forward(self):\n  pass\n".to_vec(),
        ),
        ZMember::stored("m/constants.pkl", b"\x80\x02).".to_vec()),
        ZMember::stored("m/version", b"3\n".to_vec()),
    ]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Torchscript);
    assert_eq!(info.pickles.len(), 2);
    assert_eq!(info.verdict, Verdict::SafePickle);
}

#[test]
fn deflated_pickle_member_is_scanned() {
    let evil = b"\x80\x02cbuiltins\neval\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03.".to_vec();
    let (file, _) = zip(&[
        ZMember::deflated("archive/data.pkl", evil),
        ZMember::stored("archive/version", b"3\n".to_vec()),
    ]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::PytorchZip);
    assert_eq!(info.unsafe_imports, vec!["builtins.eval"]);
    assert_eq!(info.pickles[0].offset, None);
}

#[test]
fn tflite_header() {
    let file = tflite(3, "TOCO Converted.", 1000);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Tflite, "{:?}", info.reason);
    let t = info.tflite.as_ref().unwrap();
    assert_eq!(t.version, Some(3));
    assert_eq!(t.description.as_deref(), Some("TOCO Converted."));
    assert_eq!(t.subgraphs, None);
    // What could not be read is said, not silently left out.
    assert_eq!(
        info.warnings,
        ["TFLite model fields not read: subgraphs, operator_codes, buffers (absent, or stored outside the head and tail of the file the sniffer keeps)"]
    );
}

#[test]
fn onnx_model_fields_and_initializers() {
    let (file, pos) = onnx(&[("fc.weight", vec![4, 3]), ("fc.bias", vec![4])]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Onnx, "{:?}", info.reason);
    assert_eq!(info.reason, None);
    let o = info.onnx.as_ref().unwrap();
    assert_eq!(o.ir_version, 8);
    assert_eq!(o.producer_name.as_deref(), Some("pytorch"));
    assert_eq!(o.producer_version.as_deref(), Some("2.1.0"));
    assert_eq!(o.graph_name.as_deref(), Some("main_graph"));
    assert_eq!((o.node_count, o.initializer_count), (1, 2));
    assert_eq!((o.input_count, o.output_count), (1, 1));
    assert_eq!(o.opset_import.len(), 1);
    assert_eq!(o.opset_import[0].version, 17);
    assert_eq!(info.tensors.len(), 2);
    assert_eq!(info.tensors[0].name, "fc.weight");
    assert_eq!(info.tensors[0].dtype, "FLOAT");
    assert_eq!(info.tensors[0].shape, vec![4, 3]);
    assert_eq!(info.tensors[0].offset, Some(pos[0].0));
    assert_eq!(info.tensors[0].length, 48);
    assert_eq!(info.tensors[1].offset, Some(pos[1].0));
    assert_eq!(
        info.metadata.get("author"),
        Some(&MetaValue::Str("tessera".into()))
    );
    // the bytes at the reported offset are the raw data the builder wrote
    let o0 = pos[0].0 as usize;
    assert_eq!(&file[o0..o0 + 4], &[0, 1, 2, 3]);
}

#[test]
fn other_files() {
    for data in [
        &b""[..],
        b"hello world, this is a text file\n",
        b"\x00\x01\x02\x03\x04\x05\x06\x07\x08\x09\x0a\x0b\x0c\x0d\x0e\x0f\x10",
        b"\x08\xff\xff\xff\xff\x0f garbage that starts like protobuf",
        b"Now is the time for all good men",
        b"{\"json\": true}",
        b"PK\x05\x06\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
    ] {
        let info = sniff_all(data);
        assert_eq!(info.format, Format::Other, "{data:?}: {info:?}");
        assert_eq!(info.verdict, Verdict::NoPickle, "{data:?}");
        assert!(info.tensors.is_empty());
    }
}

#[test]
fn model_info_json_shape() {
    let (file, _) = safetensors(
        &[StTensor {
            name: "w",
            dtype: "F32",
            shape: vec![2],
            data: f32_bytes(2),
        }],
        &[],
    );
    let info = sniff_all(&file);
    let v: serde_json::Value = serde_json::to_value(&info).unwrap();
    assert_eq!(v["format"], "safetensors");
    assert_eq!(v["verdict"], "no_pickle");
    assert_eq!(v["tensors"][0]["name"], "w");
    assert_eq!(v["tensors"][0]["dtype"], "F32");
    assert_eq!(v["tensors"][0]["shape"], serde_json::json!([2]));
    assert!(v["tensors"][0]["offset"].is_u64());
    assert!(v.get("reason").is_none(), "absent when none");
    let back: tessera_model::ModelInfo = serde_json::from_value(v).unwrap();
    assert_eq!(back, info, "round-trips through JSON");
}

#[test]
fn tflite_vtable_at_the_end() {
    // Some converters place the root table's vtable (and vectors) after
    // the weights: root at 8, vtable at the very end, 3 MiB between.
    let gap = 3 << 20;
    let mut f = 8u32.to_le_bytes().to_vec();
    f.extend_from_slice(b"TFL3");
    let vt_at = 8 + 12 + gap;
    f.extend_from_slice(&(8i32 - vt_at as i32).to_le_bytes()); // table at 8
    f.extend_from_slice(&3u32.to_le_bytes()); // version at +4
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend(std::iter::repeat_n(0u8, gap));
    assert_eq!(f.len(), vt_at);
    f.extend_from_slice(&6u16.to_le_bytes()); // vtable: 1 field
    f.extend_from_slice(&12u16.to_le_bytes());
    f.extend_from_slice(&4u16.to_le_bytes());
    let info = sniff_split(&f, &[1 << 16], &tessera_model::Limits::default());
    assert_eq!(info.format, Format::Tflite);
    assert_eq!(info.tflite.unwrap().version, Some(3));
}

#[test]
fn onnx_constant_node_tensors() {
    // A Constant node whose value attribute holds the tensor.
    let mut t = Vec::new();
    pb_uint(&mut t, 1, 2);
    pb_uint(&mut t, 2, 1);
    pb_tag(&mut t, 9, 2);
    pb_varint(&mut t, 8);
    let raw_in_t = t.len();
    t.extend_from_slice(&[9; 8]);
    let mut attr = Vec::new();
    pb_bytes(&mut attr, 1, b"value");
    pb_tag(&mut attr, 5, 2);
    pb_varint(&mut attr, t.len() as u64);
    let t_in_attr = attr.len();
    attr.extend_from_slice(&t);
    let mut node = Vec::new();
    pb_bytes(&mut node, 2, b"const_out");
    pb_bytes(&mut node, 4, b"Constant");
    pb_tag(&mut node, 5, 2);
    pb_varint(&mut node, attr.len() as u64);
    let attr_in_node = node.len();
    node.extend_from_slice(&attr);
    let mut graph = Vec::new();
    pb_tag(&mut graph, 1, 2);
    pb_varint(&mut graph, node.len() as u64);
    let node_in_graph = graph.len();
    graph.extend_from_slice(&node);
    let mut m = Vec::new();
    pb_uint(&mut m, 1, 7);
    pb_tag(&mut m, 7, 2);
    pb_varint(&mut m, graph.len() as u64);
    let graph_in_m = m.len();
    m.extend_from_slice(&graph);
    let info = sniff_all(&m);
    assert_eq!(info.format, Format::Onnx, "{:?}", info.reason);
    assert_eq!(info.onnx.as_ref().unwrap().constant_tensors, 1);
    let t0 = &info.tensors[0];
    assert_eq!(t0.name, "const_out");
    assert_eq!(t0.shape, vec![2]);
    let raw_at = graph_in_m + node_in_graph + attr_in_node + t_in_attr + raw_in_t;
    assert_eq!(t0.offset, Some(raw_at as u64));
    assert_eq!(t0.length, 8);
}

#[test]
fn torchscript_classes_are_resolved_by_torchscript() {
    // data.pkl of a scripted module references __torch__ classes, which
    // TorchScript's own loader resolves from code/, not Python imports.
    let mut p = b"\x80\x02c__torch__.torch.nn.modules.linear\nLinear\nq\x00)\x81}b".to_vec();
    p.extend_from_slice(b"ctorch.jit._pickle\nbuild_intlist\n]\x85R0.");
    let (file, _) = zip(&[
        ZMember::stored("m/data.pkl", p.clone()),
        ZMember::stored(
            "m/code/__torch__/torch/nn/modules/linear.py",
            b"class Linear(Module):\n".to_vec(),
        ),
        ZMember::stored("m/constants.pkl", b"\x80\x02).".to_vec()),
    ]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Torchscript);
    assert_eq!(
        info.verdict,
        Verdict::SafePickle,
        "{:?}",
        info.unsafe_imports
    );
    assert!(info.warnings.iter().any(|w| w.contains("TorchScript")));
    // the same pickle in a plain PyTorch checkpoint is unsafe
    let (file, _) = zip(&[ZMember::stored("m/data.pkl", p)]);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::PytorchZip);
    assert_eq!(info.verdict, Verdict::UnsafePickle);
}

/// A TensorProto: dims, data type, name, then `data` (encoded data fields).
fn onnx_tensor(name: &str, dims: &[u64], dtype: u64, data: &[u8]) -> Vec<u8> {
    let mut t = Vec::new();
    for d in dims {
        pb_uint(&mut t, 1, *d);
    }
    pb_uint(&mut t, 2, dtype);
    pb_bytes(&mut t, 8, name.as_bytes());
    t.extend_from_slice(data);
    t
}

/// A ModelProto (ir_version 8) around an encoded GraphProto.
fn onnx_model(graph: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    pb_uint(&mut m, 1, 8);
    pb_bytes(&mut m, 7, graph);
    m
}

/// A `Constant` node whose `value` attribute is `tensor`.
fn onnx_constant(output: &str, tensor: &[u8]) -> Vec<u8> {
    let mut attr = Vec::new();
    pb_bytes(&mut attr, 1, b"value");
    pb_bytes(&mut attr, 5, tensor);
    let mut node = Vec::new();
    pb_bytes(&mut node, 2, output.as_bytes());
    pb_bytes(&mut node, 4, b"Constant");
    pb_bytes(&mut node, 5, &attr);
    node
}

fn raw_field(bytes: &[u8]) -> Vec<u8> {
    let mut d = Vec::new();
    pb_bytes(&mut d, 9, bytes);
    d
}

fn pattern(seed: u8, n: usize) -> Vec<u8> {
    (0..n).map(|i| seed.wrapping_add(i as u8)).collect()
}

fn position(hay: &[u8], needle: &[u8]) -> Option<u64> {
    hay.windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p as u64)
}

#[test]
fn onnx_tensor_bytes_are_served_only_from_one_plain_run() {
    let mut g = Vec::new();
    let good = pattern(0x10, 16);
    pb_bytes(&mut g, 5, &onnx_tensor("good", &[4], 1, &raw_field(&good)));
    let packed = pattern(0x90, 16);
    let mut d = Vec::new();
    pb_bytes(&mut d, 4, &packed);
    pb_bytes(&mut g, 5, &onnx_tensor("packed_floats", &[4], 1, &d));
    // float_data split over two packed fields (protobuf concatenates them).
    let mut d = Vec::new();
    pb_bytes(&mut d, 4, &pattern(0x30, 8));
    pb_bytes(&mut d, 4, &pattern(0x40, 8));
    pb_bytes(&mut g, 5, &onnx_tensor("split", &[4], 1, &d));
    // raw_data and float_data both set: readers disagree on which counts.
    let mut d = raw_field(&pattern(0x50, 16));
    pb_bytes(&mut d, 4, &pattern(0x60, 16));
    pb_bytes(&mut g, 5, &onnx_tensor("both", &[4], 1, &d));
    // float_data unpacked: one fixed32 field per element.
    let mut d = Vec::new();
    for i in 0..4u32 {
        pb_tag(&mut d, 4, 5);
        d.extend_from_slice(&(i as f32).to_le_bytes());
    }
    pb_bytes(&mut g, 5, &onnx_tensor("unpacked", &[4], 1, &d));
    // Dims that do not explain the length.
    let dims_lie = raw_field(&pattern(0x70, 12));
    pb_bytes(
        &mut g,
        5,
        &onnx_tensor("dims_lie", &[618, 1, 1], 1, &dims_lie),
    );
    // int64 as varints.
    let mut d = Vec::new();
    pb_uint(&mut d, 7, 5);
    pb_bytes(&mut g, 5, &onnx_tensor("varint", &[1], 7, &d));
    // float_data claimed to hold FLOAT16 (its elements are 4 bytes).
    let mut d = Vec::new();
    pb_bytes(&mut d, 4, &pattern(0x80, 8));
    pb_bytes(&mut g, 5, &onnx_tensor("f16_in_float_data", &[4], 10, &d));
    let m = onnx_model(&g);
    for sizes in [&[m.len()][..], &[1, 7, 3, 64], &[5; 400][..]] {
        let info = sniff_split(&m, sizes, &Default::default());
        assert_eq!(info.format, Format::Onnx, "{:?}", info.reason);
        assert_eq!(info.reason, None);
        let by = |n: &str| {
            info.tensors
                .iter()
                .find(|t| t.name == n)
                .unwrap_or_else(|| panic!("{n} not listed: {:?}", info.tensors))
        };
        assert_eq!(by("good").offset, position(&m, &good));
        assert_eq!(by("good").length, 16);
        assert_eq!(by("packed_floats").offset, position(&m, &packed));
        for n in [
            "split",
            "both",
            "unpacked",
            "dims_lie",
            "varint",
            "f16_in_float_data",
        ] {
            assert_eq!(by(n).offset, None, "{n}");
        }
        assert_eq!(by("dims_lie").length, 618 * 4);
        assert!(
            info.warnings
                .iter()
                .any(|w| w.starts_with("6 tensors keep their data")),
            "{:?}",
            info.warnings
        );
    }
}

#[test]
fn onnx_weights_in_control_flow_subgraphs_are_listed() {
    let (outer, inner, konst) = (pattern(0x11, 8), pattern(0x22, 8), pattern(0x33, 4));
    let mut branch = Vec::new();
    pb_bytes(
        &mut branch,
        1,
        &onnx_constant(
            "branch_const",
            &onnx_tensor("", &[1], 1, &raw_field(&konst)),
        ),
    );
    pb_bytes(
        &mut branch,
        5,
        &onnx_tensor("inner.w", &[2], 1, &raw_field(&inner)),
    );
    let mut attr = Vec::new();
    pb_bytes(&mut attr, 1, b"then_branch");
    pb_bytes(&mut attr, 6, &branch);
    let mut node = Vec::new();
    pb_bytes(&mut node, 2, b"if_out");
    pb_bytes(&mut node, 4, b"If");
    pb_bytes(&mut node, 5, &attr);
    let mut g = Vec::new();
    pb_bytes(&mut g, 1, &node);
    pb_bytes(&mut g, 2, b"main");
    pb_bytes(
        &mut g,
        5,
        &onnx_tensor("outer.w", &[2], 1, &raw_field(&outer)),
    );
    let m = onnx_model(&g);
    let info = sniff_all(&m);
    assert_eq!(info.format, Format::Onnx, "{:?}", info.reason);
    let names: Vec<_> = info.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["branch_const", "inner.w", "outer.w"]);
    for (t, bytes) in info.tensors.iter().zip([&konst, &inner, &outer]) {
        assert_eq!(t.offset, position(&m, bytes), "{}", t.name);
        assert_eq!(t.length, bytes.len() as u64);
    }
    // The header counts the model's own graph.
    let o = info.onnx.as_ref().unwrap();
    assert_eq!((o.node_count, o.initializer_count), (1, 1));
    assert_eq!(o.graph_name.as_deref(), Some("main"));
    assert!(info.warnings.is_empty(), "{:?}", info.warnings);
}

#[test]
fn onnx_subgraphs_nested_too_deep_are_skipped_and_counted() {
    let mut g = Vec::new();
    pb_bytes(
        &mut g,
        5,
        &onnx_tensor("deepest", &[1], 1, &raw_field(&[1; 4])),
    );
    for _ in 0..40 {
        let mut attr = Vec::new();
        pb_bytes(&mut attr, 1, b"body");
        pb_bytes(&mut attr, 6, &g);
        let mut node = Vec::new();
        pb_bytes(&mut node, 4, b"Loop");
        pb_bytes(&mut node, 5, &attr);
        g.clear();
        pb_bytes(&mut g, 1, &node);
    }
    let info = sniff_all(&onnx_model(&g));
    assert_eq!(info.format, Format::Onnx, "{:?}", info.reason);
    assert_eq!(info.reason, None);
    assert!(info.tensors.is_empty());
    assert!(
        info.warnings
            .iter()
            .any(|w| w.contains("subgraphs nested too deep")),
        "{:?}",
        info.warnings
    );
}

#[test]
fn a_tensor_name_used_twice_is_flagged() {
    let t = |name| GTensor {
        name,
        dims: vec![4],
        ty: 0,
        len: 16,
    };
    let (file, _) = gguf(3, &[], &[t("t"), t("u"), t("t")], 32);
    let info = sniff_all(&file);
    assert_eq!(info.format, Format::Gguf, "{:?}", info.reason);
    assert_eq!(info.tensors.len(), 3);
    assert!(
        info.warnings
            .iter()
            .any(|w| w.starts_with("1 tensor names are used more than once")),
        "{:?}",
        info.warnings
    );
}
