//! Reading a tensor by name (`Store::tensor_range`, `cat --tensor`): the
//! bytes of a tensor the description places in the file; a typed error,
//! never other bytes, for a tensor whose data is not one plain run in the
//! file or whose name several tensors share; not-found for an absent name.

mod common;

use common::opts;
use tessera::{Error, Store};

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, n: u64, bytes: &[u8]) {
    varint(out, n << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn uint(out: &mut Vec<u8>, n: u64, v: u64) {
    varint(out, n << 3);
    varint(out, v);
}

/// An ONNX initializer: FLOAT, one dimension, `data` its data fields.
fn initializer(graph: &mut Vec<u8>, name: &str, elems: u64, data: &[u8]) {
    let mut t = Vec::new();
    uint(&mut t, 1, elems);
    uint(&mut t, 2, 1);
    field(&mut t, 8, name.as_bytes());
    t.extend_from_slice(data);
    field(graph, 5, &t);
}

#[test]
fn tensors_are_read_by_name_only_from_plain_unambiguous_bytes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path(), opts()).expect("open");
    let weights: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(37)).collect();
    let mut g = Vec::new();
    let mut raw = Vec::new();
    field(&mut raw, 9, &weights);
    initializer(&mut g, "w", 16, &raw);
    // Split float_data: two runs, neither the tensor.
    let mut split = Vec::new();
    field(&mut split, 4, &[1; 8]);
    field(&mut split, 4, &[2; 8]);
    initializer(&mut g, "split", 4, &split);
    // The same name twice (readers disagree on which one counts).
    let mut a = Vec::new();
    field(&mut a, 9, &[3; 4]);
    initializer(&mut g, "twice", 1, &a);
    let mut b = Vec::new();
    field(&mut b, 9, &[4; 4]);
    initializer(&mut g, "twice", 1, &b);
    let mut m = Vec::new();
    uint(&mut m, 1, 8);
    field(&mut m, 7, &g);
    let id = store.put_bytes(&m, &["m.onnx"]).expect("put").file_id;

    let (off, len) = store.tensor_range(&id, "w").expect("w");
    assert_eq!(store.read_range(&id, off, len).expect("read"), weights);
    for (name, why) in [
        ("split", "not stored as one plain run"),
        ("twice", "2 tensors"),
    ] {
        match store.tensor_range(&id, name) {
            Err(e @ Error::TensorUnreadable { .. }) => {
                assert!(e.to_string().contains(why), "{name}: {e}")
            }
            other => panic!("{name}: expected TensorUnreadable, got {other:?}"),
        }
    }
    assert!(matches!(
        store.tensor_range(&id, "absent"),
        Err(Error::NotFound { kind: "tensor", .. })
    ));
}
