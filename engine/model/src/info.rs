//! What the sniffer reports about one file: [`ModelInfo`] and its parts.
//!
//! Everything here is plain data, serializable with serde; the engine prints
//! it as JSON (`tessera info --json`) and may store it per file.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The detected file format.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    Safetensors,
    Gguf,
    Onnx,
    PytorchZip,
    Torchscript,
    Pickle,
    Npy,
    Npz,
    Tflite,
    Other,
}

impl Format {
    /// The snake_case name used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Safetensors => "safetensors",
            Format::Gguf => "gguf",
            Format::Onnx => "onnx",
            Format::PytorchZip => "pytorch_zip",
            Format::Torchscript => "torchscript",
            Format::Pickle => "pickle",
            Format::Npy => "npy",
            Format::Npz => "npz",
            Format::Tflite => "tflite",
            Format::Other => "other",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the file holds pickled data, and whether all of it stays inside
/// the allowlist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No pickle anywhere in the file.
    NoPickle,
    /// Pickles were found, fully scanned, and every import is allowlisted.
    SafePickle,
    /// A pickle imports something outside the allowlist, or could not be
    /// scanned completely (truncated, malformed, over a limit, a zip whose
    /// directory disagrees with what streamed past).
    UnsafePickle,
}

/// One tensor (or array) whose layout the header describes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    pub name: String,
    /// Format-specific dtype name: safetensors `F16`, GGUF `Q4_K`, numpy
    /// `<f4`, ONNX `FLOAT`.
    pub dtype: String,
    pub shape: Vec<u64>,
    /// Absolute byte offset of the tensor's data in the file. Absent when the
    /// data is not stored as plain bytes in this file (a deflated npz member,
    /// ONNX external data or typed-field data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Length in bytes of the tensor's data (uncompressed).
    pub length: u64,
    /// numpy arrays stored in Fortran order.
    #[serde(default, skip_serializing_if = "is_false")]
    pub fortran_order: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A metadata value: scalars as they are, arrays summarized.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(untagged)]
pub enum MetaValue {
    Bool(bool),
    UInt(u64),
    Int(i64),
    Float(f64),
    Str(String),
    /// An array, summarized by element type and length (not dumped).
    Array {
        array_of: String,
        len: u64,
    },
}

/// One member of a zip archive, from its local file header.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ZipMember {
    pub name: String,
    /// Compression method: 0 stored, 8 deflated, others by number.
    pub method: u16,
    /// Absolute offset of the member's (possibly compressed) data.
    pub offset: u64,
    pub compressed_size: u64,
    pub size: u64,
}

/// How a pickle refers to an import.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImportVia {
    Global,
    StackGlobal,
    Inst,
    /// `EXT1/2/4`: a copyreg extension code, never resolvable statically.
    Ext,
}

/// How a pickle uses an imported object.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ImportCall {
    Reduce,
    Build,
    Newobj,
    NewobjEx,
    Inst,
    Obj,
    /// `BUILD`, `SETITEM(S)`, `APPEND(S)` or `ADDITEMS` applied to the
    /// imported object itself (not to an instance made from it): the pickle
    /// changes a class, function or module-level object for the whole
    /// process (`os.environ[...] = ...`, `sys.path.append(...)`, a method
    /// of an allowlisted class replaced). Such an import is dangerous
    /// whatever the allowlist says.
    Modify,
}

/// How an import is classified against the allowlist.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// On the allowlist: what ordinary checkpoints use.
    Safe,
    /// Not on the allowlist (unsafe, as anything unknown is).
    Unknown,
    /// A known code-execution or system-access gadget (unsafe).
    Dangerous,
}

/// One global a pickle references.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PickleImport {
    /// The module as written in the pickle; `<unresolved>` when a
    /// `STACK_GLOBAL` operand was not a literal string.
    pub module: String,
    /// The name as written in the pickle; `<unresolved>` likewise.
    pub name: String,
    pub risk: Risk,
    pub via: Vec<ImportVia>,
    /// Opcodes that call or build through this import (empty: only
    /// referenced, e.g. a storage class passed as an argument).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calls: Vec<ImportCall>,
    /// How many times the pickle references it.
    pub count: u64,
}

impl PickleImport {
    /// `module.name`.
    pub fn full_name(&self) -> String {
        format!("{}.{}", self.module, self.name)
    }
}

/// The scan of one pickle stream.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PickleReport {
    /// Where the pickle is: `""` for a bare pickle file, the zip member name,
    /// or `"object array"` for a pickled npy payload (`member:object array`
    /// inside an npz).
    pub location: String,
    /// Absolute offset of the pickle's first byte, when stored plainly in the
    /// file (absent for deflated zip members).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Highest `PROTO` seen (protocol 0/1 pickles have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u8>,
    /// Bytes of pickle scanned (up to and including `STOP`).
    pub bytes: u64,
    /// Opcodes walked.
    pub opcodes: u64,
    /// The opcode stream was walked to `STOP` with every limit respected.
    pub complete: bool,
    /// Why the scan is not complete, or what is odd about it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub imports: Vec<PickleImport>,
}

impl PickleReport {
    /// True when the pickle was fully scanned and every import is
    /// allowlisted.
    pub fn is_safe(&self) -> bool {
        self.complete && self.imports.iter().all(|i| i.risk == Risk::Safe)
    }
}

/// Safetensors header facts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct SafetensorsHeader {
    /// Length of the JSON header (the first 8 bytes' value).
    pub header_len: u64,
    /// Absolute offset where tensor data starts (`8 + header_len`).
    pub data_offset: u64,
    /// Bytes of tensor data the header describes.
    pub data_len: u64,
}

/// GGUF header facts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct GgufHeader {
    pub version: u32,
    pub tensor_count: u64,
    pub metadata_count: u64,
    pub alignment: u64,
    /// Absolute offset of the (aligned) tensor data section.
    pub data_offset: u64,
}

/// One `opset_import` of an ONNX model.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct OnnxOpset {
    pub domain: String,
    pub version: i64,
}

/// ONNX ModelProto facts read from its leading fields.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct OnnxHeader {
    pub ir_version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub producer_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub opset_import: Vec<OnnxOpset>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_name: Option<String>,
    pub node_count: u64,
    pub initializer_count: u64,
    /// Tensors held in node attributes (`Constant` nodes).
    #[serde(default)]
    pub constant_tensors: u64,
    pub input_count: u64,
    pub output_count: u64,
}

/// TFLite FlatBuffer facts (read when they lie within the buffered prefix).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct TfliteHeader {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subgraphs: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator_codes: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffers: Option<u32>,
}

/// npy header facts.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct NpyHeader {
    pub version: String,
    /// Absolute offset of the array data.
    pub data_offset: u64,
    /// The dtype is (or contains) Python objects, so the data is a pickle.
    pub object: bool,
}

/// Everything the sniffer learned about one file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub format: Format,
    /// Why the format is `other`, or what is degraded about a detected one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Lesser oddities that do not change the format.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Refinement of the format, e.g. `torch_legacy` for a pre-zip
    /// `torch.save` pickle file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// File length passed to `finish`.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub safetensors: Option<SafetensorsHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gguf: Option<GgufHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tflite: Option<TfliteHeader>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npy: Option<NpyHeader>,
    /// Tensors in file order (by offset where known).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tensors: Vec<TensorInfo>,
    /// safetensors `__metadata__`, GGUF key/values, ONNX metadata_props.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, MetaValue>,
    /// Zip members in stream order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<ZipMember>,
    /// Every pickle stream scanned.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pickles: Vec<PickleReport>,
    /// Distinct `module.name` of every import of every pickle, sorted.
    pub pickle_imports: Vec<String>,
    /// The subset of `pickle_imports` outside the allowlist, sorted.
    pub unsafe_imports: Vec<String>,
    pub verdict: Verdict,
}

impl ModelInfo {
    pub(crate) fn empty(format: Format, size: u64) -> ModelInfo {
        ModelInfo {
            format,
            reason: None,
            warnings: Vec::new(),
            variant: None,
            size,
            safetensors: None,
            gguf: None,
            onnx: None,
            tflite: None,
            npy: None,
            tensors: Vec::new(),
            metadata: BTreeMap::new(),
            members: Vec::new(),
            pickles: Vec::new(),
            pickle_imports: Vec::new(),
            unsafe_imports: Vec::new(),
            verdict: Verdict::NoPickle,
        }
    }

    /// Fills `pickle_imports`, `unsafe_imports` and `verdict` from `pickles`
    /// (and `extra_unsafe`, reasons that make the verdict unsafe although
    /// no pickle said so, e.g. an inconsistent zip directory).
    pub(crate) fn settle_verdict(&mut self, extra_unsafe: bool) {
        let mut all = std::collections::BTreeSet::new();
        let mut bad = std::collections::BTreeSet::new();
        let mut complete = true;
        for p in &self.pickles {
            complete &= p.complete;
            for i in &p.imports {
                all.insert(i.full_name());
                if i.risk != Risk::Safe {
                    bad.insert(i.full_name());
                }
            }
        }
        self.pickle_imports = all.into_iter().collect();
        self.unsafe_imports = bad.into_iter().collect();
        self.verdict = if self.pickles.is_empty() && !extra_unsafe {
            Verdict::NoPickle
        } else if complete && self.unsafe_imports.is_empty() && !extra_unsafe {
            Verdict::SafePickle
        } else {
            Verdict::UnsafePickle
        };
    }
}
