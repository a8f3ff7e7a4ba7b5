//! GGUF (v2 and v3): magic, version, counts, key/value metadata, tensor
//! infos, then the aligned tensor data section.
//!
//! The header has no length prefix, so the sniffer buffers a growing prefix
//! and retries [`parse`] each time the prefix has doubled; `parse` answers
//! `NeedMore` until the whole header is there. Every count is checked
//! against what the remaining header budget could possibly hold before
//! anything is allocated for it, so absurd counts fail at once.

use crate::info::{GgufHeader, MetaValue, TensorInfo};

pub(crate) const MAGIC: &[u8; 4] = b"GGUF";

/// Outcome of a parse attempt on a prefix.
pub(crate) enum Parse {
    /// The prefix ends inside the header.
    NeedMore,
    /// The header is malformed or hostile.
    Invalid(String),
    /// Understood the magic but not the file (e.g. an unsupported version).
    Unsupported(String),
    Done(Box<Parsed>),
}

pub(crate) struct Parsed {
    pub header: GgufHeader,
    pub metadata: Vec<(String, MetaValue)>,
    /// Metadata keys beyond the cap (counted, not listed).
    pub metadata_dropped: u64,
    /// Tensors in file order; `offset` absolute; length `None` for unknown
    /// ggml types (filled in later from the gap to the next tensor).
    pub tensors: Vec<(TensorInfo, bool)>,
}

/// (name, block size in elements, bytes per block) by ggml type id.
pub(crate) fn ggml_type(t: u32) -> Option<(&'static str, u64, u64)> {
    Some(match t {
        0 => ("F32", 1, 4),
        1 => ("F16", 1, 2),
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        8 => ("Q8_0", 32, 34),
        9 => ("Q8_1", 32, 40),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        16 => ("IQ2_XXS", 256, 66),
        17 => ("IQ2_XS", 256, 74),
        18 => ("IQ3_XXS", 256, 98),
        19 => ("IQ1_S", 256, 50),
        20 => ("IQ4_NL", 32, 18),
        21 => ("IQ3_S", 256, 110),
        22 => ("IQ2_S", 256, 82),
        23 => ("IQ4_XS", 256, 136),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        29 => ("IQ1_M", 256, 56),
        30 => ("BF16", 1, 2),
        34 => ("TQ1_0", 256, 54),
        35 => ("TQ2_0", 256, 66),
        39 => ("MXFP4", 32, 17),
        40 => ("NVFP4", 64, 36),
        41 => ("Q1_0", 128, 18),
        _ => return None,
    })
}

/// Metadata value type names by id.
fn value_type_name(t: u32) -> &'static str {
    match t {
        0 => "uint8",
        1 => "int8",
        2 => "uint16",
        3 => "int16",
        4 => "uint32",
        5 => "int32",
        6 => "float32",
        7 => "bool",
        8 => "string",
        9 => "array",
        10 => "uint64",
        11 => "int64",
        12 => "float64",
        _ => "unknown",
    }
}

/// Fixed size of a scalar value type, `None` for string/array/unknown.
fn scalar_size(t: u32) -> Option<u64> {
    Some(match t {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

/// Parse caps.
pub(crate) struct Caps {
    pub max_header: u64,
    pub max_metadata: usize,
    pub max_meta_string: usize,
    pub max_tensors: usize,
}

enum Err {
    NeedMore,
    Invalid(String),
}

type R<T> = Result<T, Err>;

fn invalid<T>(s: impl Into<String>) -> R<T> {
    Err(Err::Invalid(s.into()))
}

struct Cur<'a> {
    b: &'a [u8],
    p: usize,
    /// The whole header may not exceed this many bytes.
    cap: u64,
}

impl<'a> Cur<'a> {
    fn take(&mut self, n: u64) -> R<&'a [u8]> {
        let end = (self.p as u64).saturating_add(n);
        if end > self.cap {
            return invalid(format!(
                "GGUF header larger than the limit of {} bytes",
                self.cap
            ));
        }
        match self.b.get(self.p..end as usize) {
            Some(s) => {
                self.p = end as usize;
                Ok(s)
            }
            None => Err(Err::NeedMore),
        }
    }
    fn skip(&mut self, n: u64) -> R<()> {
        self.take(n).map(|_| ())
    }
    fn u32(&mut self) -> R<u32> {
        let s = self.take(4)?;
        Ok(u32::from_le_bytes(s.try_into().unwrap_or([0; 4])))
    }
    fn u64(&mut self) -> R<u64> {
        let s = self.take(8)?;
        Ok(u64::from_le_bytes(s.try_into().unwrap_or([0; 8])))
    }
    /// Bytes still allowed by the cap after the cursor.
    fn budget(&self) -> u64 {
        self.cap.saturating_sub(self.p as u64)
    }
    fn string(&mut self) -> R<&'a [u8]> {
        let n = self.u64()?;
        if n > self.budget() {
            return invalid(format!("GGUF string length {n} exceeds the header limit"));
        }
        self.take(n)
    }
}

/// Tries to parse a GGUF header from `buf` (a prefix of the file).
pub(crate) fn parse(buf: &[u8], caps: &Caps) -> Parse {
    let mut c = Cur {
        b: buf,
        p: 0,
        cap: caps.max_header,
    };
    match parse_inner(&mut c, caps) {
        Ok(p) => p,
        Err(Err::NeedMore) => Parse::NeedMore,
        Err(Err::Invalid(s)) => Parse::Invalid(s),
    }
}

fn parse_inner(c: &mut Cur<'_>, caps: &Caps) -> R<Parse> {
    if c.take(4)? != MAGIC {
        return invalid("not GGUF");
    }
    let version = c.u32()?;
    match version {
        2 | 3 => {}
        1 => return Ok(Parse::Unsupported("GGUF version 1 is not supported".into())),
        v if v.swap_bytes() <= 3 => {
            return Ok(Parse::Unsupported(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            )))
        }
        v => return Ok(Parse::Unsupported(format!("unknown GGUF version {v}"))),
    }
    let tensor_count = c.u64()?;
    let metadata_count = c.u64()?;
    // A key/value pair takes at least 8 (key length) + 4 (type) + 1 bytes,
    // a tensor info at least 8 + 4 + 4 + 8 bytes.
    if metadata_count > c.budget() / 13 {
        return invalid(format!(
            "GGUF metadata count {metadata_count} cannot fit in the header limit"
        ));
    }
    if tensor_count > c.budget() / 24 {
        return invalid(format!(
            "GGUF tensor count {tensor_count} cannot fit in the header limit"
        ));
    }
    if tensor_count > caps.max_tensors as u64 {
        return invalid(format!(
            "GGUF tensor count {tensor_count} exceeds the limit of {}",
            caps.max_tensors
        ));
    }
    let mut metadata = Vec::new();
    let mut dropped = 0u64;
    let mut alignment = 32u64;
    for _ in 0..metadata_count {
        let key = c.string()?;
        let key = String::from_utf8_lossy(key).into_owned();
        let vt = c.u32()?;
        let value = read_value(c, vt, caps.max_meta_string)?;
        if key == "general.alignment" {
            match value {
                MetaValue::UInt(a) if a > 0 && a.is_power_of_two() && a <= 1 << 30 => alignment = a,
                _ => return invalid(format!("bad general.alignment {value:?}")),
            }
        }
        if metadata.len() < caps.max_metadata {
            metadata.push((crate::clip(&key, caps.max_meta_string), value));
        } else {
            dropped += 1;
        }
    }
    let mut infos = Vec::with_capacity(tensor_count.min(1 << 16) as usize);
    for _ in 0..tensor_count {
        let name = String::from_utf8_lossy(c.string()?).into_owned();
        let n_dims = c.u32()?;
        if n_dims > 8 {
            return invalid(format!("tensor {name:?} has {n_dims} dimensions"));
        }
        let mut shape = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            shape.push(c.u64()?);
        }
        let ty = c.u32()?;
        let rel = c.u64()?;
        infos.push((name, shape, ty, rel));
    }
    let header_end = c.p as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, shape, ty, rel) in infos {
        if rel % alignment != 0 {
            return invalid(format!(
                "tensor {name:?} offset {rel} is not a multiple of the alignment {alignment}"
            ));
        }
        let elems = shape
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d))
            .ok_or_else(|| Err::Invalid(format!("tensor {name:?} element count overflows")))?;
        let offset = data_offset
            .checked_add(rel)
            .ok_or_else(|| Err::Invalid(format!("tensor {name:?} offset overflows")))?;
        let (dtype, length, known) = match ggml_type(ty) {
            Some((tname, block, size)) => {
                if shape.first().is_some_and(|d| d % block != 0) {
                    return invalid(format!(
                        "tensor {name:?} first dimension is not a multiple of the {tname} block size {block}"
                    ));
                }
                let len = (elems / block)
                    .checked_mul(size)
                    .ok_or_else(|| Err::Invalid(format!("tensor {name:?} size overflows")))?;
                (tname.to_string(), len, true)
            }
            None => (format!("type_{ty}"), 0, false),
        };
        if offset.checked_add(length).is_none() {
            return invalid(format!("tensor {name:?} end overflows"));
        }
        tensors.push((
            TensorInfo {
                name,
                dtype,
                shape,
                offset: Some(offset),
                length,
                fortran_order: false,
            },
            known,
        ));
    }
    // Overlap check in offset order.
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| tensors[i].0.offset);
    for w in order.windows(2) {
        let (a, b) = (&tensors[w[0]].0, &tensors[w[1]].0);
        let a_end = a.offset.unwrap_or(0) + a.length;
        if a_end > b.offset.unwrap_or(0) {
            return invalid(format!("tensors {:?} and {:?} overlap", a.name, b.name));
        }
    }
    Ok(Parse::Done(Box::new(Parsed {
        header: GgufHeader {
            version,
            tensor_count,
            metadata_count,
            alignment,
            data_offset,
        },
        metadata,
        metadata_dropped: dropped,
        tensors,
    })))
}

fn read_value(c: &mut Cur<'_>, vt: u32, max_str: usize) -> R<MetaValue> {
    if let Some(n) = scalar_size(vt) {
        let b = c.take(n)?;
        let mut a = [0u8; 8];
        a[..b.len()].copy_from_slice(b);
        let u = u64::from_le_bytes(a);
        return Ok(match vt {
            0 | 2 | 4 | 10 => MetaValue::UInt(u),
            1 => MetaValue::Int(i64::from(u as u8 as i8)),
            3 => MetaValue::Int(i64::from(u as u16 as i16)),
            5 => MetaValue::Int(i64::from(u as u32 as i32)),
            11 => MetaValue::Int(u as i64),
            6 => MetaValue::Float(f64::from(f32::from_bits(u as u32))),
            12 => MetaValue::Float(f64::from_bits(u)),
            _ => MetaValue::Bool(u != 0),
        });
    }
    match vt {
        8 => {
            let s = c.string()?;
            Ok(MetaValue::Str(crate::clip(
                &String::from_utf8_lossy(s),
                max_str,
            )))
        }
        9 => {
            let et = c.u32()?;
            let n = c.u64()?;
            skip_array(c, et, n, 1)?;
            Ok(MetaValue::Array {
                array_of: value_type_name(et).to_string(),
                len: n,
            })
        }
        _ => invalid(format!("unknown GGUF value type {vt}")),
    }
}

/// Skips `n` elements of type `et`; nested arrays allowed to a small depth.
fn skip_array(c: &mut Cur<'_>, et: u32, n: u64, depth: u32) -> R<()> {
    if let Some(sz) = scalar_size(et) {
        let total = n
            .checked_mul(sz)
            .filter(|&t| t <= c.budget())
            .ok_or_else(|| {
                Err::Invalid(format!(
                    "GGUF array of {n} elements exceeds the header limit"
                ))
            })?;
        return c.skip(total);
    }
    match et {
        8 => {
            if n > c.budget() / 8 {
                return invalid(format!(
                    "GGUF array of {n} strings exceeds the header limit"
                ));
            }
            for _ in 0..n {
                c.string()?;
            }
            Ok(())
        }
        9 => {
            if depth >= 4 {
                return invalid("GGUF arrays nested too deeply");
            }
            if n > c.budget() / 12 {
                return invalid(format!("GGUF array of {n} arrays exceeds the header limit"));
            }
            for _ in 0..n {
                let et2 = c.u32()?;
                let n2 = c.u64()?;
                skip_array(c, et2, n2, depth + 1)?;
            }
            Ok(())
        }
        _ => invalid(format!("unknown GGUF array element type {et}")),
    }
}
