//! safetensors: 8-byte little-endian header length, JSON header, tensor data.
//!
//! The JSON is read into the `safetensors` crate's own types and validated
//! by its `Metadata::new` (tensors sorted, contiguous from offset 0, sized
//! exactly `shape × dtype`), as its loader does — but without the crate's
//! `Deserialize` for `Metadata`, whose `#[serde(flatten)]` buffers the
//! whole header as a generic value tree first (~10× the header in memory:
//! 500 MB for a 46 MB header of 500 000 tensors). Keys are read one by one
//! straight into the crate's `TensorInfo`, a repeated key keeping its last
//! value as the crate's map does. It needs only the header bytes; what it
//! cannot know without the whole file — whether the data fits in the file —
//! is checked in [`check_against_len`].

use std::collections::HashMap;
use std::fmt;

use safetensors::tensor::{Metadata, TensorInfo as StInfo};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::info::{MetaValue, SafetensorsHeader, TensorInfo};

/// What a header parse yields.
pub(crate) struct Parsed {
    pub header: SafetensorsHeader,
    pub tensors: Vec<TensorInfo>,
    pub metadata: Vec<(String, MetaValue)>,
}

/// True when the first bytes look like a safetensors file: a header length
/// followed by `{`. `head` must hold at least 9 bytes.
pub(crate) fn looks_like(head: &[u8]) -> bool {
    match (head.get(..8), head.get(8)) {
        (Some(n), Some(&b'{')) => {
            let n = u64::from_le_bytes(n.try_into().unwrap_or([0xff; 8]));
            // The JSON must at least hold "{}"; the top bytes of any sane
            // length are zero, which rules out text files starting "{".
            n >= 2 && n >> 48 == 0
        }
        _ => false,
    }
}

/// Parses the JSON header (the `header_len` bytes after the length prefix).
pub(crate) fn parse_header(json: &[u8], max_meta_string: usize) -> Result<Parsed, String> {
    let header_len = json.len() as u64;
    let invalid = |e: &dyn fmt::Display| format!("invalid safetensors header: {e}");
    let raw: RawHeader = serde_json::from_slice(json).map_err(|e| invalid(&e))?;
    let mut entries: Vec<(String, StInfo)> = raw.tensors.into_iter().collect();
    entries.sort_by_key(|(_, t)| t.data_offsets);
    let meta = Metadata::new(raw.metadata, entries).map_err(|e| invalid(&e))?;
    let data_offset = 8 + header_len;
    let mut tensors = Vec::new();
    for name in meta.offset_keys() {
        let Some(t) = meta.info(&name) else { continue };
        let (begin, end) = t.data_offsets;
        tensors.push(TensorInfo {
            dtype: t.dtype.to_string(),
            shape: t.shape.iter().map(|&d| d as u64).collect(),
            offset: Some(data_offset + begin as u64),
            length: (end - begin) as u64,
            name,
            fortran_order: false,
        });
    }
    let metadata = meta
        .metadata()
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), MetaValue::Str(crate::clip(v, max_meta_string))))
        .collect();
    Ok(Parsed {
        header: SafetensorsHeader {
            header_len,
            data_offset,
            data_len: meta.data_len() as u64,
        },
        tensors,
        metadata,
    })
}

/// Checks the described data against the file length: `Err` when tensor
/// data lies past the end, `Ok(Some(note))` for trailing bytes.
pub(crate) fn check_against_len(
    h: &SafetensorsHeader,
    tensors: &[TensorInfo],
    total_len: u64,
) -> Result<Option<String>, String> {
    let end = h.data_offset.saturating_add(h.data_len);
    if end > total_len {
        let culprit = tensors
            .iter()
            .find(|t| t.offset.unwrap_or(0).saturating_add(t.length) > total_len)
            .map(|t| {
                format!(
                    " (tensor {:?} ends at {})",
                    t.name,
                    t.offset.unwrap_or(0) + t.length
                )
            })
            .unwrap_or_default();
        return Err(format!(
            "tensor data extends past the end of the file: needs {end} bytes, file has {total_len}{culprit}"
        ));
    }
    Ok((end < total_len).then(|| {
        format!(
            "{} bytes after the tensor data (the safetensors loader rejects this)",
            total_len - end
        )
    }))
}

/// The header as the `safetensors` crate's map reads it, without the
/// buffering its flattened `Deserialize` does.
struct RawHeader {
    metadata: Option<HashMap<String, String>>,
    tensors: HashMap<String, StInfo>,
}

impl<'de> Deserialize<'de> for RawHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of tensor names to tensor infos")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawHeader, A::Error> {
                let mut h = RawHeader {
                    metadata: None,
                    tensors: HashMap::new(),
                };
                while let Some(key) = map.next_key::<String>()? {
                    if key == "__metadata__" {
                        h.metadata = Some(map.next_value()?);
                    } else {
                        let info: StInfo = map.next_value()?;
                        h.tensors.insert(key, info);
                    }
                }
                Ok(h)
            }
        }
        d.deserialize_map(V)
    }
}
