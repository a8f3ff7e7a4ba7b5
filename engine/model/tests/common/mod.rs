//! Builders for small model files, and helpers to feed them in pieces.
#![allow(dead_code)]

use std::io::Write;

use tessera_model::{Limits, ModelInfo, Sniffer};

/// Feeds `data` in pieces of the given sizes (cycled), then finishes.
pub fn sniff_split(data: &[u8], sizes: &[usize], limits: &Limits) -> ModelInfo {
    let mut s = Sniffer::new(limits.clone());
    let mut rest = data;
    let mut i = 0;
    while !rest.is_empty() {
        let n = sizes[i % sizes.len()].clamp(1, rest.len());
        s.feed(&rest[..n]);
        rest = &rest[n..];
        i += 1;
    }
    s.finish(data.len() as u64)
}

/// Sniffs `data` whole, byte by byte, in 7-byte pieces, in uneven pieces
/// and in large pieces; asserts all agree and returns the result.
pub fn sniff_all(data: &[u8]) -> ModelInfo {
    sniff_all_with(data, &Limits::default())
}

pub fn sniff_all_with(data: &[u8], limits: &Limits) -> ModelInfo {
    let whole = sniff_split(data, &[usize::MAX], limits);
    let reference = serde_json::to_string(&whole).unwrap();
    let mut patterns: Vec<Vec<usize>> = vec![vec![7], vec![3, 1, 250, 13, 4096], vec![65536]];
    if data.len() <= 1 << 16 {
        patterns.push(vec![1]);
    }
    for p in patterns {
        let got = sniff_split(data, &p, limits);
        assert_eq!(
            reference,
            serde_json::to_string(&got).unwrap(),
            "feeding in pieces of {p:?} changed the result"
        );
    }
    whole
}

// ---- safetensors -------------------------------------------------------

/// A tensor to write: name, dtype, shape, data.
pub struct StTensor<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

/// Writes a safetensors file; returns it and each tensor's absolute
/// (offset, length), in the given order.
pub fn safetensors(tensors: &[StTensor<'_>], meta: &[(&str, &str)]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut header = serde_json::Map::new();
    if !meta.is_empty() {
        let m: serde_json::Map<String, serde_json::Value> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
            .collect();
        header.insert("__metadata__".into(), m.into());
    }
    let mut at = 0u64;
    let mut rel = Vec::new();
    for t in tensors {
        let end = at + t.data.len() as u64;
        header.insert(
            t.name.into(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [at, end]}),
        );
        rel.push((at, t.data.len() as u64));
        at = end;
    }
    let mut json = serde_json::to_vec(&header).unwrap();
    // pad to 8 like the reference writer
    while !json.len().is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    let base = out.len() as u64;
    for t in tensors {
        out.extend_from_slice(&t.data);
    }
    (out, rel.into_iter().map(|(o, l)| (base + o, l)).collect())
}

/// A raw safetensors file from a header string (no checks).
pub fn safetensors_raw(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend(std::iter::repeat_n(0u8, data_len));
    out
}

// ---- GGUF ---------------------------------------------------------------

pub enum Gv<'a> {
    U8(u8),
    I32(i32),
    U32(u32),
    U64(u64),
    F32(f32),
    Bool(bool),
    Str(&'a str),
    ArrStr(Vec<&'a str>),
    ArrI32(Vec<i32>),
}

fn gstr(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn gvalue(out: &mut Vec<u8>, v: &Gv<'_>) {
    let (ty, body): (u32, Vec<u8>) = match v {
        Gv::U8(x) => (0, vec![*x]),
        Gv::I32(x) => (5, x.to_le_bytes().to_vec()),
        Gv::U32(x) => (4, x.to_le_bytes().to_vec()),
        Gv::U64(x) => (10, x.to_le_bytes().to_vec()),
        Gv::F32(x) => (6, x.to_le_bytes().to_vec()),
        Gv::Bool(x) => (7, vec![u8::from(*x)]),
        Gv::Str(s) => {
            let mut b = Vec::new();
            gstr(&mut b, s);
            (8, b)
        }
        Gv::ArrStr(a) => {
            let mut b = 8u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for s in a {
                gstr(&mut b, s);
            }
            (9, b)
        }
        Gv::ArrI32(a) => {
            let mut b = 5u32.to_le_bytes().to_vec();
            b.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for x in a {
                b.extend_from_slice(&x.to_le_bytes());
            }
            (9, b)
        }
    };
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&body);
}

/// A GGUF tensor: name, dims, ggml type, data length in bytes.
pub struct GTensor<'a> {
    pub name: &'a str,
    pub dims: Vec<u64>,
    pub ty: u32,
    pub len: u64,
}

/// Writes a GGUF file; returns it and each tensor's absolute (offset,
/// length). Tensor data is laid out in order, each aligned.
pub fn gguf(
    version: u32,
    kv: &[(&str, Gv<'_>)],
    tensors: &[GTensor<'_>],
    alignment: u64,
) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        gstr(&mut out, k);
        gvalue(&mut out, v);
    }
    let mut rel = 0u64;
    let mut rels = Vec::new();
    for t in tensors {
        gstr(&mut out, t.name);
        out.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&t.ty.to_le_bytes());
        out.extend_from_slice(&rel.to_le_bytes());
        rels.push(rel);
        rel = (rel + t.len).div_ceil(alignment) * alignment;
    }
    while !(out.len() as u64).is_multiple_of(alignment) {
        out.push(0);
    }
    let base = out.len() as u64;
    let mut pos = Vec::new();
    for (t, r) in tensors.iter().zip(&rels) {
        out.resize((base + r) as usize, 0);
        out.extend((0..t.len).map(|i| (i % 251) as u8));
        pos.push((base + r, t.len));
    }
    (out, pos)
}

// ---- npy / zip ----------------------------------------------------------

/// An npy v1.0 file.
pub fn npy(descr: &str, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let shape_txt = match shape.len() {
        0 => "()".to_string(),
        1 => format!("({},)", shape[0]),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    npy_raw(
        &format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_txt}, }}"),
        data,
    )
}

/// An npy v1.0 file whose header dict is `dict` (padded like numpy does).
pub fn npy_raw(dict: &str, data: &[u8]) -> Vec<u8> {
    let mut dict = dict.to_string();
    while !(10 + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out.extend_from_slice(data);
    out
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Method {
    Stored,
    Deflated,
}

pub struct ZMember<'a> {
    pub name: &'a str,
    pub data: Vec<u8>,
    pub method: Method,
    /// Write sizes in a data descriptor after the data (bit 3).
    pub descriptor: bool,
    /// Extra field bytes in the local header (e.g. alignment padding).
    pub extra: Vec<u8>,
}

impl<'a> ZMember<'a> {
    pub fn stored(name: &'a str, data: Vec<u8>) -> Self {
        ZMember {
            name,
            data,
            method: Method::Stored,
            descriptor: false,
            extra: Vec::new(),
        }
    }
    pub fn deflated(name: &'a str, data: Vec<u8>) -> Self {
        ZMember {
            method: Method::Deflated,
            ..ZMember::stored(name, data)
        }
    }
}

/// Writes a zip; returns it and each member's (data offset, stored length).
pub fn zip(members: &[ZMember<'_>]) -> (Vec<u8>, Vec<(u64, u64)>) {
    zip_with_central(members, |_, o| o)
}

/// Like [`zip`], but `central_offset(i, real)` picks the local header
/// offset the central directory records for member `i`.
pub fn zip_with_central(
    members: &[ZMember<'_>],
    central_offset: impl Fn(usize, u32) -> u32,
) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut out = Vec::new();
    let mut central = Vec::new();
    let mut pos = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let payload = match m.method {
            Method::Stored => m.data.clone(),
            Method::Deflated => {
                let mut e =
                    flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&m.data).unwrap();
                e.finish().unwrap()
            }
        };
        let mut crc = flate2::Crc::new();
        crc.update(&m.data);
        let crc = crc.sum();
        let method: u16 = if m.method == Method::Stored { 0 } else { 8 };
        let flags: u16 = if m.descriptor { 8 } else { 0 };
        let header_at = out.len() as u32;
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 4]); // time, date
        let (lcrc, lcs, lus) = if m.descriptor {
            (0, 0, 0)
        } else {
            (crc, payload.len() as u32, m.data.len() as u32)
        };
        out.extend_from_slice(&lcrc.to_le_bytes());
        out.extend_from_slice(&lcs.to_le_bytes());
        out.extend_from_slice(&lus.to_le_bytes());
        out.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        out.extend_from_slice(&(m.extra.len() as u16).to_le_bytes());
        out.extend_from_slice(m.name.as_bytes());
        out.extend_from_slice(&m.extra);
        pos.push((out.len() as u64, payload.len() as u64));
        out.extend_from_slice(&payload);
        if m.descriptor {
            out.extend_from_slice(b"PK\x07\x08");
            out.extend_from_slice(&crc.to_le_bytes());
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        }
        central.extend_from_slice(b"PK\x01\x02");
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&20u16.to_le_bytes());
        central.extend_from_slice(&flags.to_le_bytes());
        central.extend_from_slice(&method.to_le_bytes());
        central.extend_from_slice(&[0; 4]);
        central.extend_from_slice(&crc.to_le_bytes());
        central.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        central.extend_from_slice(&(m.data.len() as u32).to_le_bytes());
        central.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        central.extend_from_slice(&[0; 2]); // extra
        central.extend_from_slice(&[0; 2]); // comment
        central.extend_from_slice(&[0; 2]); // disk
        central.extend_from_slice(&[0; 2]); // internal attrs
        central.extend_from_slice(&[0; 4]); // external attrs
        central.extend_from_slice(&central_offset(i, header_at).to_le_bytes());
        central.extend_from_slice(m.name.as_bytes());
    }
    let cd_at = out.len() as u32;
    out.extend_from_slice(&central);
    out.extend_from_slice(b"PK\x05\x06");
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(members.len() as u16).to_le_bytes());
    out.extend_from_slice(&(central.len() as u32).to_le_bytes());
    out.extend_from_slice(&cd_at.to_le_bytes());
    out.extend_from_slice(&[0; 2]);
    (out, pos)
}

// ---- pickles -------------------------------------------------------------

/// `SHORT_BINUNICODE s`
pub fn p_str(out: &mut Vec<u8>, s: &str) {
    out.push(0x8c);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A protocol 2 pickle like `torch.save` writes for
/// `OrderedDict(weight=tensor)` inside a zip checkpoint: `data.pkl`.
pub fn torch_state_dict_pickle() -> Vec<u8> {
    let mut p = b"\x80\x02".to_vec();
    p.extend_from_slice(b"ccollections\nOrderedDict\nq\x00)Rq\x01");
    p.extend_from_slice(b"X\x06\x00\x00\x00weightq\x02");
    p.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\nq\x03");
    p.extend_from_slice(b"((X\x07\x00\x00\x00storageq\x04ctorch\nFloatStorage\nq\x05");
    p.extend_from_slice(b"X\x01\x00\x00\x000q\x06X\x03\x00\x00\x00cpuq\x07K\x06tq\x08Q");
    p.extend_from_slice(b"K\x00K\x02K\x03\x86q\tK\x03K\x01\x86q\n\x89h\x00)Rq\x0btq\x0cRq\r");
    p.extend_from_slice(b"s}q\x0eX\x08\x00\x00\x00metadataq\x0fh\x00)Rq\x10sb.");
    p
}

/// A minimal TFLite flatbuffer: root table with version and description.
pub fn tflite(version: u32, description: &str, tail: usize) -> Vec<u8> {
    // layout: [0] root uoffset, [4] "TFL3", [8] vtable (4 fields),
    // [20] table: soffset to vtable, version u32, description uoffset,
    // [32] string.
    let mut b = Vec::new();
    b.extend_from_slice(&20u32.to_le_bytes());
    b.extend_from_slice(b"TFL3");
    // vtable at 8: size 12 (4 + 4 fields * 2), table size 12
    b.extend_from_slice(&12u16.to_le_bytes());
    b.extend_from_slice(&12u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes()); // field 0 version at +4
    b.extend_from_slice(&0u16.to_le_bytes()); // field 1 absent
    b.extend_from_slice(&0u16.to_le_bytes()); // field 2 absent
    b.extend_from_slice(&8u16.to_le_bytes()); // field 3 description at +8
    assert_eq!(b.len(), 20);
    b.extend_from_slice(&12i32.to_le_bytes()); // table 20 - vtable 8
    b.extend_from_slice(&version.to_le_bytes());
    b.extend_from_slice(&4u32.to_le_bytes()); // string at 28 + 4 = 32
    b.extend_from_slice(&(description.len() as u32).to_le_bytes());
    b.extend_from_slice(description.as_bytes());
    b.push(0);
    b.extend(std::iter::repeat_n(0u8, tail));
    b
}

// ---- protobuf (ONNX) -----------------------------------------------------

pub fn pb_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

pub fn pb_tag(out: &mut Vec<u8>, field: u64, wire: u64) {
    pb_varint(out, field << 3 | wire);
}

pub fn pb_bytes(out: &mut Vec<u8>, field: u64, b: &[u8]) {
    pb_tag(out, field, 2);
    pb_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

pub fn pb_uint(out: &mut Vec<u8>, field: u64, v: u64) {
    pb_tag(out, field, 0);
    pb_varint(out, v);
}

/// An ONNX model with one node and the given FLOAT initializers (name,
/// dims); returns it and each initializer's raw_data (offset, length).
pub fn onnx(inits: &[(&str, Vec<u64>)]) -> (Vec<u8>, Vec<(u64, u64)>) {
    let mut graph = Vec::new();
    let mut node = Vec::new();
    pb_bytes(&mut node, 1, b"x");
    pb_bytes(&mut node, 2, b"y");
    pb_bytes(&mut node, 4, b"Relu");
    pb_bytes(&mut graph, 1, &node);
    pb_bytes(&mut graph, 2, b"main_graph");
    let mut raw_rel = Vec::new();
    for (name, dims) in inits {
        let n: u64 = dims.iter().product();
        let mut t = Vec::new();
        for d in dims {
            pb_uint(&mut t, 1, *d);
        }
        pb_uint(&mut t, 2, 1);
        pb_bytes(&mut t, 8, name.as_bytes());
        let raw: Vec<u8> = (0..n * 4).map(|i| i as u8).collect();
        pb_tag(&mut t, 9, 2);
        pb_varint(&mut t, raw.len() as u64);
        let raw_at_in_t = t.len();
        t.extend_from_slice(&raw);
        // initializer field header inside graph
        pb_tag(&mut graph, 5, 2);
        pb_varint(&mut graph, t.len() as u64);
        raw_rel.push((graph.len() + raw_at_in_t, raw.len() as u64));
        graph.extend_from_slice(&t);
    }
    let mut vi = Vec::new();
    pb_bytes(&mut vi, 1, b"x");
    pb_bytes(&mut graph, 11, &vi);
    let mut vo = Vec::new();
    pb_bytes(&mut vo, 1, b"y");
    pb_bytes(&mut graph, 12, &vo);

    let mut m = Vec::new();
    pb_uint(&mut m, 1, 8);
    pb_bytes(&mut m, 2, b"pytorch");
    pb_bytes(&mut m, 3, b"2.1.0");
    pb_tag(&mut m, 7, 2);
    pb_varint(&mut m, graph.len() as u64);
    let graph_at = m.len();
    m.extend_from_slice(&graph);
    let mut opset = Vec::new();
    pb_bytes(&mut opset, 1, b"");
    pb_uint(&mut opset, 2, 17);
    pb_bytes(&mut m, 8, &opset);
    let mut prop = Vec::new();
    pb_bytes(&mut prop, 1, b"author");
    pb_bytes(&mut prop, 2, b"tessera");
    pb_bytes(&mut m, 14, &prop);
    let pos = raw_rel
        .into_iter()
        .map(|(o, l)| ((graph_at + o) as u64, l))
        .collect();
    (m, pos)
}
