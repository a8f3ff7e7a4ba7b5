//! ONNX: a protobuf `ModelProto`, walked as it streams.
//!
//! Protobuf has no magic number, so detection is conservative: the file must
//! start with `ir_version` (field 1, varint, a small number), and every
//! field before the graph (field 7) or an opset import (field 8) must be one
//! ModelProto defines, with the right wire type and valid UTF-8 strings.
//! Serializers write fields in number order, so the small scalar fields come
//! first and the graph — holding nearly all bytes — after them.
//!
//! The walker descends into the graph, into each initializer
//! (`TensorProto`), into the tensor attributes of nodes (`Constant`
//! nodes hold the weights of many exporters) and into the subgraphs of
//! control-flow nodes (`If`/`Loop`/`Scan` branches hold the weights of
//! others), to collect names, dims, data types and where the data lies;
//! everything else, including the tensor bytes, is skipped by count. The
//! walk keeps an explicit stack of open messages (no recursion), at most
//! [`MAX_DEPTH`] deep; deeper subgraphs are skipped and counted.
//!
//! A tensor's bytes can be served by name only when they are one run of
//! plain little-endian bytes whose length its dims and data type account
//! for: a single `raw_data`, or a single packed `float_data` (FLOAT,
//! COMPLEX64) or `double_data` (DOUBLE, COMPLEX128) field. Anything else —
//! varint-encoded `int32_data`/`int64_data`, data split over several
//! fields or segments, two data fields at once (readers disagree on which
//! wins), a length its shape does not explain, external data — is listed
//! without an offset and counted in a warning.

use crate::info::{OnnxHeader, OnnxOpset, TensorInfo};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Model,
    Graph,
    /// A NodeProto: walked for `Constant` tensors in its attributes.
    Node,
    /// An AttributeProto of a node.
    Attr,
    Tensor,
}

#[derive(Clone, Copy, Debug)]
struct Frame {
    kind: Kind,
    end: u64,
}

#[derive(Clone, Copy, Debug)]
enum St {
    Tag,
    Varint,
    Fixed(u64),
    Len,
    Payload { remaining: u64, keep: usize },
}

#[derive(Default)]
struct TensorAcc {
    dims: Vec<u64>,
    data_type: Option<u64>,
    name: Option<String>,
    /// (field, offset, length) of a length-delimited data field that holds
    /// little-endian bytes (`raw_data`, packed `float_data`/`double_data`).
    raw: Option<(u64, u64, u64)>,
    /// Data fields seen, of any kind and wire type.
    data_fields: u32,
    /// A `segment`: the tensor is split over several protos.
    segmented: bool,
    external: bool,
}

/// Open messages at most: model, graph, node, attribute, tensor, and four
/// more levels of subgraphs.
const MAX_DEPTH: usize = 17;

/// TensorProto fields that carry data.
fn is_data_field(field: u64) -> bool {
    matches!(field, 4 | 5 | 6 | 7 | 9 | 10 | 11)
}

/// What to do with a length-delimited field.
enum Action {
    Skip,
    Descend(Kind),
    /// Keep up to this many bytes, then handle.
    Capture(usize),
    /// Tensor data: note where it lies, skip it.
    Data,
}

pub(crate) struct OnnxStream {
    pos: u64,
    st: St,
    frames: Vec<Frame>,
    acc: u64,
    shift: u32,
    field: u64,
    wire: u8,
    buf: Vec<u8>,
    payload_start: u64,
    pub confirmed: bool,
    seen_ir: bool,
    /// Not ONNX after all (only before confirmation).
    pub rejected: bool,
    pub failure: Option<String>,
    pub header: OnnxHeader,
    pub tensors: Vec<TensorInfo>,
    pub tensors_dropped: u64,
    pub external_tensors: u64,
    /// Tensors with data that is not one plain run of bytes (see the
    /// module docs).
    pub unservable_tensors: u64,
    /// Subgraphs deeper than [`MAX_DEPTH`], skipped.
    pub deep_subgraphs: u64,
    pub metadata: Vec<(String, String)>,
    cur: Option<TensorAcc>,
    /// First output of the node being walked (names its Constant tensor).
    node_output: Option<String>,
    max_tensors: usize,
    max_meta_string: usize,
}

impl OnnxStream {
    pub fn new(max_tensors: usize, max_meta_string: usize) -> Self {
        OnnxStream {
            pos: 0,
            st: St::Tag,
            frames: vec![Frame {
                kind: Kind::Model,
                end: u64::MAX,
            }],
            acc: 0,
            shift: 0,
            field: 0,
            wire: 0,
            buf: Vec::new(),
            payload_start: 0,
            confirmed: false,
            seen_ir: false,
            rejected: false,
            failure: None,
            header: OnnxHeader::default(),
            tensors: Vec::new(),
            tensors_dropped: 0,
            external_tensors: 0,
            unservable_tensors: 0,
            deep_subgraphs: 0,
            metadata: Vec::new(),
            cur: None,
            node_output: None,
            max_tensors,
            max_meta_string,
        }
    }

    fn stopped(&self) -> bool {
        self.rejected || self.failure.is_some()
    }

    fn bad(&mut self, why: String) {
        if self.confirmed {
            if self.failure.is_none() {
                self.failure = Some(why);
            }
        } else {
            self.rejected = true;
        }
    }

    fn kind(&self) -> Kind {
        self.frames.last().map_or(Kind::Model, |f| f.kind)
    }

    /// Whether the walk ended cleanly at a message boundary.
    pub fn at_boundary(&self) -> bool {
        matches!(self.st, St::Tag) && self.frames.len() == 1 && self.shift == 0
    }

    /// The stream ended: close the messages that end exactly here.
    pub fn finish(&mut self) {
        if matches!(self.st, St::Tag) && self.shift == 0 && !self.stopped() {
            self.close_frames();
        }
    }

    pub fn feed(&mut self, data: &[u8]) {
        let mut i = 0;
        while i < data.len() && !self.stopped() {
            match self.st {
                St::Tag | St::Varint | St::Len => {
                    if matches!(self.st, St::Tag) && self.shift == 0 {
                        self.close_frames();
                        if self.stopped() {
                            break;
                        }
                    }
                    let b = data[i];
                    i += 1;
                    self.pos += 1;
                    if self.shift >= 64 {
                        self.bad("varint too long".into());
                        break;
                    }
                    self.acc |= u64::from(b & 0x7f) << self.shift;
                    self.shift += 7;
                    if b & 0x80 == 0 {
                        let v = self.acc;
                        self.acc = 0;
                        self.shift = 0;
                        match self.st {
                            St::Tag => self.on_tag(v),
                            St::Varint => {
                                self.st = St::Tag;
                                self.on_varint(v);
                            }
                            _ => self.on_len(v),
                        }
                    }
                }
                St::Fixed(n) => {
                    let take = n.min((data.len() - i) as u64);
                    i += take as usize;
                    self.pos += take;
                    self.st = if take == n {
                        St::Tag
                    } else {
                        St::Fixed(n - take)
                    };
                }
                St::Payload { remaining, keep } => {
                    let take = remaining.min((data.len() - i) as u64) as usize;
                    let k = keep.min(take);
                    self.buf.extend_from_slice(&data[i..i + k]);
                    i += take;
                    self.pos += take as u64;
                    let remaining = remaining - take as u64;
                    if remaining == 0 {
                        self.st = St::Tag;
                        let buf = std::mem::take(&mut self.buf);
                        self.on_payload(&buf);
                        self.buf = buf;
                        self.buf.clear();
                    } else {
                        self.st = St::Payload {
                            remaining,
                            keep: keep - k,
                        };
                    }
                }
            }
        }
    }

    /// Closes the messages that end here.
    fn close_frames(&mut self) {
        while let Some(f) = self.frames.last().copied() {
            if f.end > self.pos {
                break;
            }
            if f.end < self.pos {
                self.bad("a field overruns its message".into());
                return;
            }
            self.frames.pop();
            if f.kind == Kind::Tensor {
                self.end_tensor();
            }
        }
    }

    fn on_tag(&mut self, v: u64) {
        let field = v >> 3;
        let wire = (v & 7) as u8;
        self.field = field;
        self.wire = wire;
        if field == 0 || !matches!(wire, 0 | 1 | 2 | 5) {
            self.bad(format!("bad protobuf tag {v}"));
            return;
        }
        if self.kind() == Kind::Tensor {
            if let Some(t) = &mut self.cur {
                if is_data_field(field) {
                    t.data_fields = t.data_fields.saturating_add(1);
                }
                t.segmented |= field == 3;
            }
        }
        if self.kind() == Kind::Model && !self.confirmed {
            let expected = match field {
                1 | 5 => 0,
                2 | 3 | 4 | 6 | 7 | 8 | 14 | 20 | 25 | 26 => 2,
                _ => 255,
            };
            if wire != expected || (!self.seen_ir && field != 1) {
                self.rejected = true;
                return;
            }
        }
        self.st = match wire {
            0 => St::Varint,
            1 => St::Fixed(8),
            5 => St::Fixed(4),
            _ => St::Len,
        };
    }

    fn on_varint(&mut self, v: u64) {
        match (self.kind(), self.field) {
            (Kind::Model, 1) => {
                if !self.confirmed && !(1..=64).contains(&v) {
                    self.rejected = true;
                    return;
                }
                self.seen_ir = true;
                self.header.ir_version = v as i64;
            }
            (Kind::Model, 5) => self.header.model_version = Some(v as i64),
            (Kind::Tensor, 1) => {
                if let Some(t) = &mut self.cur {
                    if t.dims.len() < 64 {
                        t.dims.push(v);
                    }
                }
            }
            (Kind::Tensor, 2) => {
                if let Some(t) = &mut self.cur {
                    t.data_type = Some(v);
                }
            }
            (Kind::Tensor, 14) => {
                if let Some(t) = &mut self.cur {
                    t.external |= v == 1;
                }
            }
            _ => {}
        }
    }

    fn on_len(&mut self, len: u64) {
        let start = self.pos;
        let end = start.saturating_add(len);
        if let Some(f) = self.frames.last() {
            if end > f.end {
                self.bad("a field overruns its message".into());
                return;
            }
        }
        // The graph of the model itself (not a subgraph of a node).
        let top = self.frames.len() == 2;
        let action = match (self.kind(), self.field) {
            (Kind::Model, 2..=4) => Action::Capture(4096),
            (Kind::Model, 7) => {
                if self.seen_ir {
                    self.confirmed = true;
                }
                Action::Descend(Kind::Graph)
            }
            (Kind::Model, 8) => Action::Capture(4096),
            (Kind::Model, 14) => Action::Capture(64 << 10),
            (Kind::Graph, 1) => {
                if top {
                    self.header.node_count += 1;
                }
                self.node_output = None;
                Action::Descend(Kind::Node)
            }
            (Kind::Node, 2) => Action::Capture(4096),
            (Kind::Node, 5) => Action::Descend(Kind::Attr),
            (Kind::Attr, 5) => {
                self.header.constant_tensors += 1;
                Action::Descend(Kind::Tensor)
            }
            // A subgraph (`g`) or one of several (`graphs`): the branches
            // and bodies of control-flow nodes.
            (Kind::Attr, 6 | 11) if self.frames.len() + 1 < MAX_DEPTH => {
                Action::Descend(Kind::Graph)
            }
            (Kind::Attr, 6 | 11) => {
                self.deep_subgraphs += 1;
                Action::Skip
            }
            (Kind::Graph, 2) if top => Action::Capture(4096),
            (Kind::Graph, 5) => {
                if top {
                    self.header.initializer_count += 1;
                }
                Action::Descend(Kind::Tensor)
            }
            (Kind::Graph, 11) if top => {
                self.header.input_count += 1;
                Action::Skip
            }
            (Kind::Graph, 12) if top => {
                self.header.output_count += 1;
                Action::Skip
            }
            (Kind::Tensor, 1) => Action::Capture(64 << 10),
            (Kind::Tensor, 8) => Action::Capture(4096),
            (Kind::Tensor, 9) => Action::Data,
            // float_data / double_data are packed little-endian, i.e. raw.
            (Kind::Tensor, 4 | 10) => Action::Data,
            (Kind::Tensor, 13) => {
                if let Some(t) = &mut self.cur {
                    t.external = true;
                }
                Action::Skip
            }
            _ => Action::Skip,
        };
        match action {
            Action::Descend(kind) => {
                if kind == Kind::Tensor {
                    self.cur = Some(TensorAcc::default());
                }
                self.frames.push(Frame { kind, end });
                self.st = St::Tag;
            }
            Action::Data => {
                if let Some(t) = &mut self.cur {
                    t.raw = Some((self.field, start, len));
                }
                self.skip_payload(len, 0);
            }
            Action::Capture(max) => {
                self.payload_start = start;
                self.buf.clear();
                self.skip_payload(len, max);
            }
            Action::Skip => self.skip_payload(len, 0),
        }
    }

    fn skip_payload(&mut self, len: u64, keep: usize) {
        if len == 0 {
            self.st = St::Tag;
            if keep > 0 {
                self.on_payload(&[]);
            }
        } else {
            self.st = St::Payload {
                remaining: len,
                keep,
            };
        }
    }

    fn on_payload(&mut self, bytes: &[u8]) {
        let text = || String::from_utf8(bytes.to_vec()).ok();
        match (self.kind(), self.field) {
            (Kind::Model, f @ 2..=4) => {
                let Some(s) = text() else {
                    self.bad("model string field is not UTF-8".into());
                    return;
                };
                let slot = match f {
                    2 => &mut self.header.producer_name,
                    3 => &mut self.header.producer_version,
                    _ => &mut self.header.domain,
                };
                *slot = Some(s);
            }
            (Kind::Model, 8) => {
                let mut op = OnnxOpset {
                    domain: String::new(),
                    version: 0,
                };
                for (f, v) in small_fields(bytes) {
                    match (f, v) {
                        (1, Field::Bytes(b)) => op.domain = String::from_utf8_lossy(b).into(),
                        (2, Field::Varint(n)) => op.version = n as i64,
                        _ => {}
                    }
                }
                if self.seen_ir {
                    self.confirmed = true;
                }
                if self.header.opset_import.len() < 64 {
                    self.header.opset_import.push(op);
                }
            }
            (Kind::Model, 14) => {
                let (mut k, mut v) = (String::new(), String::new());
                for (f, val) in small_fields(bytes) {
                    if let Field::Bytes(b) = val {
                        let s = crate::clip(&String::from_utf8_lossy(b), self.max_meta_string);
                        if f == 1 {
                            k = s;
                        } else if f == 2 {
                            v = s;
                        }
                    }
                }
                if self.metadata.len() < 4096 {
                    self.metadata.push((k, v));
                }
            }
            (Kind::Graph, 2) => {
                self.header.graph_name = Some(String::from_utf8_lossy(bytes).into_owned())
            }
            (Kind::Node, 2) if self.node_output.is_none() => {
                self.node_output = Some(String::from_utf8_lossy(bytes).into_owned());
            }
            (Kind::Tensor, 1) => {
                // packed dims
                if let Some(t) = &mut self.cur {
                    let mut p = 0;
                    while p < bytes.len() && t.dims.len() < 64 {
                        match read_varint(bytes, &mut p) {
                            Some(v) => t.dims.push(v),
                            None => break,
                        }
                    }
                }
            }
            (Kind::Tensor, 8) => {
                if let Some(t) = &mut self.cur {
                    t.name = Some(String::from_utf8_lossy(bytes).into_owned());
                }
            }
            _ => {}
        }
    }

    fn end_tensor(&mut self) {
        let Some(t) = self.cur.take() else { return };
        let name = t
            .name
            .filter(|n| !n.is_empty())
            .or_else(|| self.node_output.clone())
            .unwrap_or_default();
        let dt = t.data_type.unwrap_or(0);
        let (dtype, bits) = onnx_dtype(dt);
        let elems = t.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let computed = elems
            .zip(bits)
            .and_then(|(n, b)| n.checked_mul(b))
            .map(|b| b.div_ceil(8));
        if t.external {
            self.external_tensors += 1;
        }
        // One plain run of bytes that the dims and type account for.
        let plain = match t.raw {
            Some((field, o, l)) if t.data_fields == 1 && !t.segmented && !t.external => {
                let fits = match field {
                    4 => matches!(dt, 1 | 14),
                    10 => matches!(dt, 11 | 15),
                    _ => true,
                };
                (fits && computed == Some(l)).then_some((o, l))
            }
            _ => None,
        };
        if plain.is_none() && !t.external && t.data_fields > 0 {
            self.unservable_tensors += 1;
        }
        let (offset, length) = match plain {
            Some((o, l)) => (Some(o), l),
            None => (None, computed.unwrap_or(0)),
        };
        if self.tensors.len() >= self.max_tensors {
            self.tensors_dropped += 1;
            return;
        }
        self.tensors.push(TensorInfo {
            name,
            dtype,
            shape: t.dims,
            offset,
            length,
            fortran_order: false,
        });
    }
}

/// ONNX TensorProto.DataType: name and bits per element.
fn onnx_dtype(t: u64) -> (String, Option<u64>) {
    let (n, bits) = match t {
        1 => ("FLOAT", 32),
        2 => ("UINT8", 8),
        3 => ("INT8", 8),
        4 => ("UINT16", 16),
        5 => ("INT16", 16),
        6 => ("INT32", 32),
        7 => ("INT64", 64),
        8 => ("STRING", 0),
        9 => ("BOOL", 8),
        10 => ("FLOAT16", 16),
        11 => ("DOUBLE", 64),
        12 => ("UINT32", 32),
        13 => ("UINT64", 64),
        14 => ("COMPLEX64", 64),
        15 => ("COMPLEX128", 128),
        16 => ("BFLOAT16", 16),
        17 => ("FLOAT8E4M3FN", 8),
        18 => ("FLOAT8E4M3FNUZ", 8),
        19 => ("FLOAT8E5M2", 8),
        20 => ("FLOAT8E5M2FNUZ", 8),
        21 => ("UINT4", 4),
        22 => ("INT4", 4),
        23 => ("FLOAT4E2M1", 4),
        24 => ("FLOAT8E8M0", 8),
        _ => return (format!("type_{t}"), None),
    };
    (n.to_string(), (bits > 0).then_some(bits))
}

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn read_varint(b: &[u8], p: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*p)?;
        *p += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The top-level fields of a small, fully buffered message (bounded by its
/// length; stops at the first malformed field).
fn small_fields(b: &[u8]) -> Vec<(u64, Field<'_>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p < b.len() && out.len() < 64 {
        let Some(tag) = read_varint(b, &mut p) else {
            break;
        };
        let f = tag >> 3;
        match tag & 7 {
            0 => match read_varint(b, &mut p) {
                Some(v) => out.push((f, Field::Varint(v))),
                None => break,
            },
            2 => {
                let Some(n) = read_varint(b, &mut p) else {
                    break;
                };
                let Some(end) = p.checked_add(n as usize).filter(|&e| e <= b.len()) else {
                    break;
                };
                out.push((f, Field::Bytes(&b[p..end])));
                p = end;
            }
            1 => p += 8,
            5 => p += 4,
            _ => break,
        }
    }
    out
}
