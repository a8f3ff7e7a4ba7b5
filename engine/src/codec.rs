//! Chunk encodings: how a chunk's raw bytes are stored in a pack record.
//!
//! Raw (0), one zstd frame (1), or float byte planes (2: bf16/f16/f32
//! weights split into byte planes and entropy-coded, `tessera-codec`),
//! whichever saves at least the configured fraction, decided per chunk
//! from a quick sample. Every encoding is decoded and compared with the raw
//! bytes before it is stored, and decoding never allocates more than the
//! record's raw length.
//! Encoder and decoder contexts are kept per thread and reused.

use std::cell::RefCell;

use bytes::Bytes;
use tessera_codec::{Decoder, DtypeHint, Encoder, EncoderOptions, Hint, Method};
use tessera_model::Format;

use crate::error::{Error, Result};
use crate::format::Compression;
use crate::ids::ChunkId;

thread_local! {
    static ENCODER: RefCell<Option<Encoder>> = const { RefCell::new(None) };
    static DECODER: RefCell<Option<Decoder>> = const { RefCell::new(None) };
    /// The buffer an encoding is decoded into to check it (reused: the
    /// check allocates nothing once it has seen the largest chunk).
    static CHECK_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's decoder.
fn with_decoder<T>(
    f: impl FnOnce(&mut Decoder) -> std::result::Result<T, String>,
) -> std::result::Result<T, String> {
    DECODER.with(|cell| {
        let mut slot = cell.borrow_mut();
        let dec = match &mut *slot {
            Some(d) => d,
            None => slot.insert(Decoder::new().map_err(|e| format!("decoder: {e:?}"))?),
        };
        f(dec)
    })
}

fn compression_of(m: Method) -> Compression {
    match m {
        Method::None => Compression::None,
        Method::Zstd => Compression::Zstd,
        Method::FloatPlanes => Compression::FloatPlanes,
    }
}

/// Turns stored bytes into raw bytes, never allocating more than `raw_len`.
pub(crate) fn decode_chunk(
    stored: &Bytes,
    compression: Compression,
    raw_len: u32,
) -> std::result::Result<Bytes, String> {
    if compression == Compression::None {
        if stored.len() != raw_len as usize {
            return Err(format!(
                "stored length {} differs from raw length {raw_len}",
                stored.len()
            ));
        }
        return Ok(stored.clone());
    }
    with_decoder(|dec| {
        let mut out = Vec::new();
        dec.decode(compression as u8, stored, raw_len as usize, &mut out)
            .map_err(|e| format!("{} decode: {e:?}", name(compression)))?;
        if out.len() != raw_len as usize {
            return Err(format!(
                "decoded to {} bytes, expected {raw_len}",
                out.len()
            ));
        }
        Ok(Bytes::from(out))
    })
}

fn name(c: Compression) -> &'static str {
    match c {
        Compression::None => "raw",
        Compression::Zstd => "zstd",
        Compression::FloatPlanes => "float planes",
    }
}

/// The codec's hint for a tensor dtype as a model format names it.
fn dtype_hint(format: Format, dtype: &str) -> DtypeHint {
    match (format, dtype) {
        (Format::Gguf, "F32") => DtypeHint::F32,
        (Format::Gguf, "F16") => DtypeHint::F16,
        (Format::Gguf, "BF16") => DtypeHint::Bf16,
        (Format::Gguf, "I8") => DtypeHint::I8,
        // Plain integers and F64, and types the sniffer does not know.
        (Format::Gguf, "I16" | "I32" | "I64" | "F64") => DtypeHint::Unknown,
        (Format::Gguf, t) if t.starts_with("type_") => DtypeHint::Unknown,
        // Every other GGUF type is block-quantized.
        (Format::Gguf, _) => DtypeHint::Quantized,
        (_, t) => DtypeHint::from_safetensors(t),
    }
}

/// Dtype hints by byte range of a file, from its model header: each chunk
/// gets the dtype of the tensor covering most of it, with the phase of its
/// elements. Hints only steer the encoder's choice (every encoding is
/// decoded and re-hashed before it is stored): a wrong one costs ratio or
/// speed, never correctness.
#[derive(Debug, Default)]
pub(crate) struct HintMap {
    /// (start, end, dtype), sorted by start, non-empty, hinted dtypes only.
    regions: Vec<(u64, u64, DtypeHint)>,
}

impl HintMap {
    /// From a sniffer's tensor regions (see `Sniffer::tensor_regions`).
    pub(crate) fn new(format: Format, regions: &[(u64, u64, &str)]) -> Self {
        let mut regions: Vec<(u64, u64, DtypeHint)> = regions
            .iter()
            .filter(|(_, len, _)| *len > 0)
            .map(|&(start, len, dtype)| {
                (start, start.saturating_add(len), dtype_hint(format, dtype))
            })
            .filter(|(_, _, h)| *h != DtypeHint::Unknown)
            .collect();
        regions.sort_by_key(|r| r.0);
        HintMap { regions }
    }

    /// The hint for the chunk at `start..end` of the file.
    pub(crate) fn hint(&self, start: u64, end: u64) -> Hint {
        // Regions may overlap in a hostile header: look at those starting
        // before `end` whose end is past `start`, from the first that could.
        let first = self.regions.partition_point(|r| r.1 <= start);
        let mut best: Option<(u64, u64, DtypeHint)> = None;
        let mut best_overlap = 0;
        for &(s, e, h) in self.regions[first..]
            .iter()
            .take_while(|r| r.0 < end)
            .take(64)
        {
            let overlap = e.min(end).saturating_sub(s.max(start));
            if overlap > best_overlap {
                best_overlap = overlap;
                best = Some((s, e, h));
            }
        }
        match best {
            Some((s, _, dtype)) => Hint {
                dtype,
                phase: dtype
                    .float_width()
                    .map(|w| ((s as i128 - start as i128).rem_euclid(w as i128)) as u8),
            },
            None => Hint::default(),
        }
    }
}

/// Encodes a chunk with the best encoding that saves at least `min_savings`
/// of its size (byte planes only when `planes` is allowed: stores of version
/// 2), then decodes it again and compares the result with `raw` byte for
/// byte, so a codec bug cannot store bytes that do not decode to the chunk
/// (spec §10.1 rule 7; `raw` is what `id` names, so equal bytes is the
/// re-hash without the hashing). `hint` says what the bytes are,
/// when the file's header told (see [`HintMap`]).
pub(crate) fn encode_chunk(
    raw: &Bytes,
    id: &ChunkId,
    level: i32,
    min_savings: f64,
    planes: bool,
    hint: Hint,
) -> Result<(Compression, Bytes)> {
    if level == 0 || raw.is_empty() {
        return Ok((Compression::None, raw.clone()));
    }
    let opts = EncoderOptions {
        zstd_level: level,
        min_savings,
    };
    let (compression, stored) = ENCODER.with(|cell| -> Result<(Compression, Bytes)> {
        let mut slot = cell.borrow_mut();
        let enc = match &mut *slot {
            Some(e) if e.options() == opts => e,
            _ => slot.insert(
                Encoder::new(opts).map_err(|e| Error::Bug(format!("codec options: {e:?}")))?,
            ),
        };
        let bug = |e| Error::Bug(format!("encoding chunk {id}: {e:?}"));
        let mut encoded = enc.encode(raw, hint).map_err(bug)?;
        if encoded.method == Method::FloatPlanes && !planes {
            encoded = enc.encode_with(raw, Method::Zstd, hint).map_err(bug)?;
            let limit = (raw.len() as f64) * (1.0 - min_savings);
            if encoded.bytes.len() as f64 > limit {
                return Ok((Compression::None, raw.clone()));
            }
        }
        Ok(match encoded.method {
            Method::None => (Compression::None, raw.clone()),
            m => (compression_of(m), Bytes::copy_from_slice(encoded.bytes)),
        })
    })?;
    if compression == Compression::None {
        return Ok((compression, stored));
    }
    if round_trips(&stored, compression, raw) {
        Ok((compression, stored))
    } else {
        // The encoder produced something that does not decode to the
        // chunk: store it raw.
        tracing::error!(chunk = %id, encoding = name(compression), "encoded chunk failed re-verification; storing raw");
        Ok((Compression::None, raw.clone()))
    }
}

/// Whether `stored` decodes (as `compression`) to exactly `raw`.
fn round_trips(stored: &[u8], compression: Compression, raw: &[u8]) -> bool {
    CHECK_BUF.with(|buf| {
        let mut out = buf.borrow_mut();
        with_decoder(|dec| {
            dec.decode(compression as u8, stored, raw.len(), &mut out)
                .map_err(|e| format!("{e:?}"))
        })
        .is_ok()
            && out[..] == raw[..]
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_follow_the_tensor_covering_most_of_a_chunk() {
        let regions = [
            (100u64, 1000u64, "BF16"),
            (1100, 4000, "F32"),
            (5100, 100, "I8"),
            (5200, 0, "F16"),
            (5200, 50, "BOOL"),
        ];
        let m = HintMap::new(Format::Safetensors, &regions);
        // Header bytes: no tensor.
        assert_eq!(m.hint(0, 100), Hint::default());
        // Inside the BF16 tensor, starting one byte into an element.
        assert_eq!(
            m.hint(101, 900),
            Hint {
                dtype: DtypeHint::Bf16,
                phase: Some(1)
            }
        );
        // Starting before the F32 tensor (3 bytes early): phase 3; the F32
        // tensor covers most of the chunk.
        assert_eq!(
            m.hint(1097, 3000),
            Hint {
                dtype: DtypeHint::F32,
                phase: Some(3)
            }
        );
        assert_eq!(m.hint(5100, 5150).dtype, DtypeHint::I8);
        // Unknown dtypes give no hint.
        assert_eq!(m.hint(5200, 5250), Hint::default());
    }

    #[test]
    fn gguf_types_map_to_codec_hints() {
        let g = |t| dtype_hint(Format::Gguf, t);
        assert_eq!(g("BF16"), DtypeHint::Bf16);
        assert_eq!(g("F32"), DtypeHint::F32);
        assert_eq!(g("Q4_K"), DtypeHint::Quantized);
        assert_eq!(g("I32"), DtypeHint::Unknown);
        assert_eq!(g("type_99"), DtypeHint::Unknown);
        assert_eq!(dtype_hint(Format::Safetensors, "Q4_K"), DtypeHint::Unknown);
    }

    #[test]
    fn the_check_refuses_encodings_that_do_not_decode_to_the_chunk() {
        let raw = Bytes::from(tessera_codec::testvec::normal_bf16(64 * 1024, 3));
        let id = ChunkId::of(&raw);
        let hint = Hint {
            dtype: DtypeHint::Bf16,
            phase: Some(0),
        };
        let (c, stored) = encode_chunk(&raw, &id, 3, 0.05, true, hint).expect("encode");
        assert_eq!(c, Compression::FloatPlanes);
        assert!(round_trips(&stored, c, &raw));
        // The check's buffer now holds `raw`: a damaged encoding of the same
        // chunk must still fail, wherever the damage is.
        for at in [8, stored.len() / 3, stored.len() / 2, stored.len() - 1] {
            let mut bad = stored.to_vec();
            bad[at] ^= 0x10;
            assert!(!round_trips(&bad, c, &raw), "damage at byte {at} passed");
        }
        assert!(!round_trips(&stored[..stored.len() - 1], c, &raw));
        // An encoding of other bytes.
        let mut other = raw.to_vec();
        other[1000] ^= 1;
        assert!(!round_trips(&stored, c, &other));
        assert!(!round_trips(&stored, Compression::Zstd, &raw));
    }

    #[test]
    fn a_wrong_hint_still_round_trips() {
        let raw: Vec<u8> = (0..65_536u32).map(|i| (i * 7 % 251) as u8).collect();
        let raw = Bytes::from(raw);
        let id = ChunkId::of(&raw);
        for dtype in [
            DtypeHint::Bf16,
            DtypeHint::F32,
            DtypeHint::I8,
            DtypeHint::Quantized,
            DtypeHint::Incompressible,
        ] {
            for phase in [None, Some(0), Some(1), Some(3)] {
                let (c, stored) =
                    encode_chunk(&raw, &id, 3, 0.05, true, Hint { dtype, phase }).expect("encode");
                let back = decode_chunk(&stored, c, raw.len() as u32).expect("decode");
                assert_eq!(back, raw);
            }
        }
    }
}
