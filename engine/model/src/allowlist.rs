//! Which pickle imports ordinary model checkpoints use.
//!
//! An *allowlist*: anything not named here is unsafe, because unpickling
//! imports the module (running its import-time code) and the pickle may call
//! what it imported. The list is what `torch.save` of state dicts, tensors
//! and optimizer states, `numpy.save` of object arrays and plain Python
//! containers need, chosen after reading what PyTorch's `weights_only`
//! loader accepts and what public scanners (picklescan, modelscan, fickling)
//! treat as innocuous; every entry is a data constructor that runs no code
//! taken from the pickle.
//!
//! Matching is on the exact `module` and `name` strings (after the Python 2
//! module renames pickle itself applies, `__builtin__` to `builtins` and
//! `copy_reg` to `copyreg`), so dotted attribute paths such as
//! `collections` / `OrderedDict.__init__` never match.
//!
//! A separate denylist only labels the best-known gadgets as
//! [`Risk::Dangerous`] so reports can single them out; it does not make
//! anything safe.

use crate::info::Risk;

/// Storage element types: `torch.<T>Storage`, `torch.cuda.<T>Storage`.
const STORAGE_TYPES: &[&str] = &[
    "Double",
    "Float",
    "Half",
    "BFloat16",
    "Long",
    "Int",
    "Short",
    "Char",
    "Byte",
    "Bool",
    "ComplexDouble",
    "ComplexFloat",
    "QUInt8",
    "QInt8",
    "QInt32",
    "QUInt4x2",
    "QUInt2x4",
    "Untyped",
    "Typed",
];

/// Tensor type classes: `torch.<T>Tensor`, `torch.cuda.<T>Tensor`.
const TENSOR_TYPES: &[&str] = &[
    "Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool",
];

/// `torch.<dtype>` constants (what `str(torch.float16)` names).
const TORCH_DTYPES: &[&str] = &[
    "float16",
    "float32",
    "float64",
    "bfloat16",
    "half",
    "float",
    "double",
    "complex32",
    "complex64",
    "complex128",
    "chalf",
    "cfloat",
    "cdouble",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "short",
    "int",
    "long",
    "bool",
    "quint8",
    "qint8",
    "qint32",
    "quint4x2",
    "quint2x4",
    "float8_e5m2",
    "float8_e4m3fn",
    "float8_e5m2fnuz",
    "float8_e4m3fnuz",
    "float8_e8m0fnu",
    "float4_e2m1fn_x2",
    "bits8",
    "bits16",
    "bits1x8",
    "bits2x4",
    "bits4x2",
    "int1",
    "int2",
    "int3",
    "int4",
    "int5",
    "int6",
    "int7",
    "uint1",
    "uint2",
    "uint3",
    "uint4",
    "uint5",
    "uint6",
    "uint7",
    // quantization schemes and memory formats are constants too
    "per_tensor_affine",
    "per_tensor_symmetric",
    "per_channel_affine",
    "per_channel_symmetric",
    "per_channel_affine_float_qparams",
    "contiguous_format",
    "channels_last",
    "channels_last_3d",
    "preserve_format",
    // plain classes torch pickles construct from data
    "Size",
    "Tensor",
    "device",
    "dtype",
    "layout",
    "memory_format",
    "UntypedStorage",
    "TypedStorage",
];

/// `torch._utils.*` rebuild functions: each builds a tensor from a storage
/// and sizes, strides, dtypes.
const TORCH_REBUILD: &[&str] = &[
    "_rebuild_tensor",
    "_rebuild_tensor_v2",
    "_rebuild_tensor_v3",
    "_rebuild_parameter",
    "_rebuild_parameter_with_state",
    "_rebuild_qtensor",
    "_rebuild_sparse_tensor",
    "_rebuild_sparse_csr_tensor",
    "_rebuild_meta_tensor_no_storage",
    "_rebuild_nested_tensor",
    "_rebuild_wrapper_subclass",
    "_rebuild_device_tensor_from_numpy",
    "_rebuild_device_tensor_from_cpu_tensor",
    "_rebuild_xla_tensor",
    "_rebuild_mtia_tensor",
];

/// Exact `(module, name)` pairs that are safe, besides the generated torch
/// families above.
const SAFE_PAIRS: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("collections", "Counter"),
    ("collections", "defaultdict"),
    ("collections", "deque"),
    ("typing", "OrderedDict"),
    ("torch._tensor", "_rebuild_from_type_v2"),
    ("torch.nn.parameter", "Parameter"),
    ("torch.nn.parameter", "Buffer"),
    ("torch.serialization", "_get_layout"),
    ("torch.storage", "UntypedStorage"),
    ("torch.storage", "TypedStorage"),
    ("torch.torch_version", "TorchVersion"),
    // numpy arrays, scalars and dtypes as numpy pickles them (1.x and 2.x
    // module paths)
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    // numpy 1.0-era name still embedded in old pickles
    ("numpy.core._internal", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    // bytes in protocol 2 pickles are `_codecs.encode(str, "latin1")`
    ("_codecs", "encode"),
    // harmless builtin types
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "slice"),
    ("builtins", "range"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("builtins", "tuple"),
    ("builtins", "list"),
    ("builtins", "dict"),
    ("builtins", "int"),
    ("builtins", "float"),
    ("builtins", "str"),
    ("builtins", "bool"),
    ("builtins", "object"),
    // generic instance reconstruction (protocol 0-2); the class it
    // rebuilds is itself an import, checked on its own
    ("copyreg", "_reconstructor"),
    ("copyreg", "__newobj__"),
    ("copyreg", "__newobj_ex__"),
    // plain data values common in training checkpoints
    ("datetime", "datetime"),
    ("datetime", "date"),
    ("datetime", "time"),
    ("datetime", "timedelta"),
    ("datetime", "timezone"),
    ("decimal", "Decimal"),
    ("fractions", "Fraction"),
    ("argparse", "Namespace"),
];

/// Modules whose every name is a known gadget (code execution, process,
/// file-system or network access).
const DANGEROUS_MODULES: &[&str] = &[
    "os",
    "posix",
    "nt",
    "subprocess",
    "sys",
    "runpy",
    "webbrowser",
    "socket",
    "shutil",
    "pty",
    "commands",
    "importlib",
    "pickle",
    "_pickle",
    "cPickle",
    "dill",
    "marshal",
    "types",
    "code",
    "codeop",
    "ctypes",
    "multiprocessing",
    "asyncio",
    "urllib",
    "urllib2",
    "http",
    "httplib",
    "requests",
    "ftplib",
    "smtplib",
    "telnetlib",
    "pdb",
    "bdb",
    "timeit",
    "cProfile",
    "profile",
    "trace",
    "platform",
    "signal",
    "tempfile",
    "pip",
    "setuptools",
    "distutils",
    "operator",
    "functools",
    "torch.hub",
    "torch.jit",
    "torch._dynamo",
    "torch._inductor",
];

/// Builtins that execute code or reach attributes/modules by name.
const DANGEROUS_BUILTINS: &[&str] = &[
    "eval",
    "exec",
    "execfile",
    "compile",
    "getattr",
    "setattr",
    "delattr",
    "__import__",
    "open",
    "globals",
    "locals",
    "vars",
    "input",
    "breakpoint",
    "apply",
    "file",
    "reload",
    "help",
    "type",
];

/// Other individually dangerous names.
const DANGEROUS_PAIRS: &[(&str, &str)] = &[
    ("numpy", "load"),
    ("numpy", "fromfile"),
    ("numpy.testing._private.utils", "runstring"),
    ("torch", "load"),
    ("torch.serialization", "load"),
    ("torch", "_load"),
    // a nested torch.load of embedded bytes: a pickle inside the pickle
    ("torch.storage", "_load_from_bytes"),
];

/// The module name pickle uses on Python 3 for a Python 2 name.
pub fn normalize_module(module: &str) -> &str {
    match module {
        "__builtin__" | "exceptions" => "builtins",
        "copy_reg" => "copyreg",
        "cPickle" => "pickle",
        _ => module,
    }
}

/// The `(module, name)` Python 3's unpickler resolves a Python 2 global
/// to (the renames of `_compat_pickle` that matter here).
pub fn normalize(module: &str, name: &str) -> (String, String) {
    let m = normalize_module(module);
    let renamed = match (m, name) {
        ("builtins", "xrange") => Some(("builtins", "range")),
        ("builtins", "unicode" | "basestring") => Some(("builtins", "str")),
        ("builtins", "long") => Some(("builtins", "int")),
        ("builtins", "unichr") => Some(("builtins", "chr")),
        ("builtins", "reduce") => Some(("functools", "reduce")),
        ("builtins", "intern") => Some(("sys", "intern")),
        _ => None,
    };
    match renamed {
        Some((m, n)) => (m.to_string(), n.to_string()),
        None => (m.to_string(), name.to_string()),
    }
}

/// Classifies one import.
pub fn classify(module: &str, name: &str) -> Risk {
    let (module, name) = normalize(module, name);
    let (module, name) = (module.as_str(), name.as_str());
    if is_safe(module, name) {
        Risk::Safe
    } else if is_dangerous(module, name) {
        Risk::Dangerous
    } else {
        Risk::Unknown
    }
}

/// Classifies an import of a pickle inside a TorchScript archive. These
/// pickles are read by TorchScript's own (C++) unpickler, which resolves
/// `__torch__.*` to classes compiled from the archive's `code/` and
/// `torch.jit._pickle.*` to built-in list/tensor constructors, never to
/// Python imports; everything else is classified as usual.
pub fn classify_torchscript(module: &str, name: &str) -> Risk {
    let ident = |s: &str| {
        !s.is_empty()
            && s.split('.')
                .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
    };
    let torch_class =
        (module == "__torch__" || module.starts_with("__torch__.")) && ident(module) && ident(name);
    let jit_helper = module == "torch.jit._pickle"
        && matches!(
            name,
            "build_intlist"
                | "build_tensorlist"
                | "build_doublelist"
                | "build_boollist"
                | "build_tensor_from_id"
                | "restore_type_tag"
        );
    if torch_class || jit_helper {
        Risk::Safe
    } else {
        classify(module, name)
    }
}

fn is_safe(module: &str, name: &str) -> bool {
    if SAFE_PAIRS.iter().any(|&(m, n)| m == module && n == name) {
        return true;
    }
    match module {
        "torch" => {
            TORCH_DTYPES.contains(&name)
                || strip_family(name, "Storage", STORAGE_TYPES)
                || strip_family(name, "Tensor", TENSOR_TYPES)
        }
        "torch.cuda" => {
            strip_family(name, "Storage", STORAGE_TYPES)
                || strip_family(name, "Tensor", TENSOR_TYPES)
        }
        "torch._utils" => TORCH_REBUILD.contains(&name),
        // numpy 2 pickles dtypes by their DType class (`Float32DType`, ...).
        "numpy.dtypes" => {
            name.len() > "DType".len()
                && name.ends_with("DType")
                && name.bytes().all(|b| b.is_ascii_alphanumeric())
        }
        _ => false,
    }
}

/// `name` is `<T><suffix>` with `T` in `family`.
fn strip_family(name: &str, suffix: &str, family: &[&str]) -> bool {
    name.strip_suffix(suffix)
        .is_some_and(|stem| family.contains(&stem))
}

fn is_dangerous(module: &str, name: &str) -> bool {
    let top = module.split('.').next().unwrap_or(module);
    if DANGEROUS_MODULES.contains(&module) || DANGEROUS_MODULES.contains(&top) {
        return true;
    }
    if module == "builtins" && DANGEROUS_BUILTINS.contains(&name) {
        return true;
    }
    DANGEROUS_PAIRS
        .iter()
        .any(|&(m, n)| m == module && n == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_imports_are_safe() {
        for (m, n) in [
            ("collections", "OrderedDict"),
            ("torch._utils", "_rebuild_tensor_v2"),
            ("torch._utils", "_rebuild_parameter"),
            ("torch", "FloatStorage"),
            ("torch", "BFloat16Storage"),
            ("torch.cuda", "HalfStorage"),
            ("torch", "float16"),
            ("torch", "Size"),
            ("torch", "device"),
            ("torch.storage", "UntypedStorage"),
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy", "dtype"),
            ("numpy.dtypes", "Float32DType"),
            ("_codecs", "encode"),
            ("__builtin__", "set"),
            ("__builtin__", "xrange"),
            ("copy_reg", "_reconstructor"),
            ("numpy.core._internal", "_reconstruct"),
        ] {
            assert_eq!(classify(m, n), Risk::Safe, "{m}.{n}");
        }
    }

    #[test]
    fn gadgets_are_dangerous() {
        for (m, n) in [
            ("os", "system"),
            ("posix", "system"),
            ("nt", "system"),
            ("subprocess", "Popen"),
            ("builtins", "eval"),
            ("__builtin__", "exec"),
            ("builtins", "getattr"),
            ("builtins", "__import__"),
            ("runpy", "run_path"),
            ("webbrowser", "open"),
            ("socket", "create_connection"),
            ("os.path", "join"),
            ("torch.hub", "load"),
            ("functools", "partial"),
        ] {
            assert_eq!(classify(m, n), Risk::Dangerous, "{m}.{n}");
        }
    }

    #[test]
    fn torchscript_names_only_inside_torchscript() {
        let m = "__torch__.torch.nn.modules.conv";
        assert_eq!(classify(m, "Conv1d"), Risk::Unknown);
        assert_eq!(classify_torchscript(m, "Conv1d"), Risk::Safe);
        assert_eq!(
            classify_torchscript("torch.jit._pickle", "build_intlist"),
            Risk::Safe
        );
        assert_eq!(classify_torchscript("os", "system"), Risk::Dangerous);
        assert_eq!(classify_torchscript("__torch__", "a\nb"), Risk::Unknown);
    }

    #[test]
    fn unknown_is_not_safe_and_lookalikes_do_not_match() {
        for (m, n) in [
            ("__main__", "MyModel"),
            ("torch.nn.modules.linear", "Linear"),
            ("collections", "OrderedDict.fromkeys"),
            ("torch", "FloatStorage\r"),
            ("torch", "EvilStorage"),
            ("torch", "Storage"),
            ("numpy.dtypes", "DType"),
            ("numpy.dtypes", "a.bDType"),
            ("torch._utils", "_rebuild_anything"),
            ("builtins", "memoryview"),
        ] {
            assert_eq!(classify(m, n), Risk::Unknown, "{m}.{n}");
        }
    }
}
