//! The bodies of the wire protocol (`format-spec/PROTOCOL.md`), shared by
//! the server and the client.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tessera::{ChunkId, ChunkParams, FileId, PackId, Reconstruction, Sha256};

/// The protocol version this crate speaks (the `/v1` in every path).
pub const PROTOCOL_VERSION: u32 = 1;

/// Largest JSON request body a server accepts.
pub const MAX_JSON_BODY: u64 = 64 << 20;
/// Largest pack a server accepts in one `PUT /v1/packs/{id}`.
pub const MAX_PACK_BODY: u64 = 80 << 20;
/// Most chunk ids one `POST /v1/chunks/missing` may ask about.
pub const MAX_MISSING_IDS: usize = 100_000;

/// `GET /v1`: what a client needs to know before it chunks anything.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// Protocol version.
    pub protocol: u32,
    /// The server store's chunking parameters.
    pub chunking: Chunking,
}

/// Chunking parameters as they travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunking {
    /// Minimum chunk size.
    pub min: u32,
    /// Average chunk size.
    pub avg: u32,
    /// Maximum chunk size.
    pub max: u32,
    /// FastCDC normalization level.
    pub normalization: u32,
}

impl From<ChunkParams> for Chunking {
    fn from(p: ChunkParams) -> Self {
        Chunking {
            min: p.min,
            avg: p.avg,
            max: p.max,
            normalization: p.normalization,
        }
    }
}

impl From<Chunking> for ChunkParams {
    fn from(c: Chunking) -> Self {
        ChunkParams {
            min: c.min,
            avg: c.avg,
            max: c.max,
            normalization: c.normalization,
        }
    }
}

/// `GET /v1/reconstructions/{name}`: the engine's reconstruction and a
/// signed URL for every pack it names.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconstructionResponse {
    /// The reconstruction.
    #[serde(flatten)]
    pub reconstruction: Reconstruction,
    /// Pack id → URL (absolute path with query) to fetch its bytes from.
    pub pack_urls: BTreeMap<PackId, String>,
}

/// `POST /v1/chunks/missing` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingRequest {
    /// Chunk ids to ask about.
    pub chunks: Vec<ChunkId>,
    /// The refs the files these chunks belong to will be registered under
    /// (optional): the server refuses a name it would refuse at
    /// registration (400) or that the token may not write (401/403) now,
    /// before the client uploads anything.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub refs: Vec<String>,
}

/// `POST /v1/chunks/missing` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingResponse {
    /// The ids the server does not hold (each once, in request order).
    pub missing: Vec<ChunkId>,
}

/// `PUT /v1/packs/{id}` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackAdmitted {
    /// The pack.
    pub pack: PackId,
    /// Chunks in it.
    pub chunks: u64,
    /// Chunks the server did not hold before.
    pub new_chunks: u64,
}

/// `POST /v1/files` request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The file id (hash of the chunk list).
    pub file_id: FileId,
    /// Its size.
    pub size: u64,
    /// `[chunk id, raw length]` in order.
    pub chunks: Vec<(ChunkId, u32)>,
    /// The SHA-256 the client computed (checked by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Sha256>,
    /// Refs to point at the file.
    #[serde(default, deserialize_with = "null_is_empty")]
    pub refs: Vec<String>,
}

/// `POST /v1/files` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The file id.
    pub file_id: FileId,
    /// SHA-256 the server computed.
    pub sha256: Sha256,
    /// Size.
    pub size: u64,
    /// Whether the server did not hold the file before.
    pub new_file: bool,
}

/// `GET /v1/refs/{ref}` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefInfo {
    /// The ref name.
    #[serde(rename = "ref")]
    pub name: String,
    /// The file it names.
    pub file_id: FileId,
    /// The file's size.
    pub size: u64,
    /// The file's SHA-256.
    pub sha256: Sha256,
}

/// `PUT /v1/refs/{ref}` body.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetRef {
    /// The file to point the ref at.
    pub file_id: FileId,
}

/// One entry of `GET /v1/refs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefEntry {
    /// The ref name.
    #[serde(rename = "ref")]
    pub name: String,
    /// The file it names.
    pub file_id: FileId,
}

/// `GET /v1/refs?prefix=` answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefList {
    /// The refs the token may read, by name.
    pub refs: Vec<RefEntry>,
    /// Ref objects of a shared store that the server's last listing of it
    /// could not read (damaged): their names are unknown, so `refs` may lack
    /// them, or show what they named before. Omitted when there are none.
    #[serde(
        default,
        deserialize_with = "null_is_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub unreadable: Vec<UnreadableRef>,
}

/// An optional list field: `null` reads as absent (empty), as JSON
/// writers that spell "none" as `null` expect.
fn null_is_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

/// A ref object that does not decode, in a [`RefList`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnreadableRef {
    /// Its key in the store (`refs/…`).
    pub object: String,
    /// What is wrong with it.
    pub detail: String,
}

/// Every error body: `{"error": {"code", "message"}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// The inside of an [`ErrorBody`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// A snake_case code (`not_found`, `rejected`, …).
    pub code: String,
    /// One line naming the object.
    pub message: String,
}

/// Characters escaped when a ref name is put in a URL path segment: all but
/// RFC 3986 unreserved characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A name (ref, file id, `sha256:…`) percent-encoded as one path segment.
pub fn encode_segment(name: &str) -> String {
    percent_encoding::utf8_percent_encode(name, SEGMENT).to_string()
}

/// A query parameter value, percent-encoded.
pub fn encode_query(value: &str) -> String {
    encode_segment(value)
}

/// What a `Range` header asks of a resource.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ByteRange {
    /// Bytes `start..=end` (inclusive, within the resource).
    Bytes(u64, u64),
    /// Nothing of it can be served (416).
    Unsatisfiable,
}

/// Parses `bytes=…` of a `Range` header for a resource of `size` bytes;
/// `None` when it is malformed or names several ranges (the whole resource
/// is served then).
pub fn parse_range(header: &str, size: u64) -> Option<ByteRange> {
    // The range unit is case-insensitive (RFC 9110 §14.1).
    let header = header.trim();
    let (unit, spec) = header.split_once('=')?;
    if !unit.trim().eq_ignore_ascii_case("bytes") {
        return None;
    }
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.trim().split_once('-')?;
    let (a, b) = (a.trim(), b.trim());
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit());
    if a.is_empty() {
        // Suffix: the last n bytes.
        if !digits(b) {
            return None;
        }
        let n: u64 = b.parse().unwrap_or(u64::MAX);
        if n == 0 || size == 0 {
            return Some(ByteRange::Unsatisfiable);
        }
        return Some(ByteRange::Bytes(size.saturating_sub(n), size - 1));
    }
    if !digits(a) || !(b.is_empty() || digits(b)) {
        return None;
    }
    let start: u64 = a.parse().unwrap_or(u64::MAX);
    let end: u64 = if b.is_empty() {
        u64::MAX
    } else {
        b.parse().unwrap_or(u64::MAX)
    };
    if end < start {
        return None;
    }
    if start >= size {
        return Some(ByteRange::Unsatisfiable);
    }
    Some(ByteRange::Bytes(start, end.min(size - 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn optional_lists_may_be_null_or_absent() {
        let id = "\"".to_string() + &"ab".repeat(32) + "\"";
        for body in [
            format!(r#"{{"chunks":[{id}],"refs":null}}"#),
            format!(r#"{{"chunks":[{id}]}}"#),
        ] {
            let r: MissingRequest = serde_json::from_str(&body).expect(&body);
            assert_eq!(r.chunks.len(), 1);
            assert!(r.refs.is_empty(), "{body}");
        }
        let r: MissingRequest =
            serde_json::from_str(r#"{"chunks":[],"refs":["a/b"]}"#).expect("refs");
        assert_eq!(r.refs, ["a/b"]);
        // A wrong type is still refused.
        assert!(serde_json::from_str::<MissingRequest>(r#"{"chunks":[],"refs":3}"#).is_err());
        let body = format!(r#"{{"file_id":{id},"size":0,"chunks":[],"refs":null}}"#);
        let r: RegisterRequest = serde_json::from_str(&body).expect("register");
        assert!(r.refs.is_empty());
        let l: RefList = serde_json::from_str(r#"{"refs":[],"unreadable":null}"#).expect("list");
        assert!(l.unreadable.is_empty());
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(ByteRange::Bytes(0, 9)));
        assert_eq!(
            parse_range("bytes=90-", 100),
            Some(ByteRange::Bytes(90, 99))
        );
        assert_eq!(
            parse_range("bytes=90-500", 100),
            Some(ByteRange::Bytes(90, 99))
        );
        assert_eq!(
            parse_range("bytes=-10", 100),
            Some(ByteRange::Bytes(90, 99))
        );
        assert_eq!(
            parse_range("bytes=-1000", 100),
            Some(ByteRange::Bytes(0, 99))
        );
        assert_eq!(
            parse_range("bytes=100-", 100),
            Some(ByteRange::Unsatisfiable)
        );
        assert_eq!(parse_range("bytes=-0", 100), Some(ByteRange::Unsatisfiable));
        assert_eq!(parse_range("bytes=0-0", 0), Some(ByteRange::Unsatisfiable));
        assert_eq!(parse_range("bytes=5-3", 100), None);
        // The unit is case-insensitive; other units are not ranges.
        assert_eq!(parse_range("BYTES=0-9", 100), Some(ByteRange::Bytes(0, 9)));
        assert_eq!(
            parse_range(" Bytes=-10", 100),
            Some(ByteRange::Bytes(90, 99))
        );
        assert_eq!(parse_range("items=0-9", 100), None);
        assert_eq!(parse_range("bytes 0-9", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=x-1", 100), None);
        assert_eq!(
            parse_range("bytes=0-99999999999999999999999", 100),
            Some(ByteRange::Bytes(0, 99))
        );
        assert_eq!(
            parse_range("bytes=99999999999999999999999-", 100),
            Some(ByteRange::Unsatisfiable)
        );
    }

    #[test]
    fn segments() {
        assert_eq!(
            encode_segment("acme/llm@v1:model.bin"),
            "acme%2Fllm%40v1%3Amodel.bin"
        );
    }
}
