//! Incremental transfer between stores (the wire protocol is
//! `format-spec/PROTOCOL.md`): what a client needs to fetch a file or a
//! byte range of it with plain HTTP Range requests on packs
//! ([`Reconstruction`]), which of those bytes a local store already holds
//! ([`DownloadPlan`]), and the upload side: which chunks a server lacks,
//! admitting a pack only after every chunk in it verifies, and registering
//! a file from its chunk list only when every chunk is stored. Nothing a
//! client sends is trusted until it is verified; a refused upload leaves
//! nothing behind.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use bytes::Bytes;

use crate::codec::decode_chunk;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::{ChunkEntry, CHUNK_HEADER_LEN, MAX_CHUNK_LEN};
use crate::ids::{ChunkId, FileId, FileIdHasher, PackId, Sha256};
use crate::pack::PackReader;
use crate::paths::pack_key;
use crate::read::layout;

mod assemble;
mod upload;
pub use assemble::Assembly;
pub use upload::AdmitReport;
pub(crate) use upload::{
    admit_chunks, admit_pack, chunk_list, export_pack, missing_chunks, register_file,
};

/// One chunk of a reconstruction term: its id and raw length, and where its
/// record (header and stored bytes) is in the pack.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReconChunk {
    /// The chunk id.
    pub id: ChunkId,
    /// Raw length.
    pub len: u32,
    /// Offset of the chunk's record in the pack.
    pub offset: u64,
    /// Length of the record (52-byte header and stored bytes).
    pub record_len: u64,
}

/// A run of consecutive chunks of one pack that a reconstruction reads.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReconTerm {
    /// The pack.
    pub pack: PackId,
    /// Index in the pack's chunk table of the first chunk.
    pub first_chunk: u32,
    /// Number of chunks.
    pub chunk_count: u32,
    /// Byte range `[pack_start, pack_end)` of the pack holding their records.
    pub pack_start: u64,
    /// End of that range (exclusive).
    pub pack_end: u64,
    /// Sum of the chunks' raw lengths.
    pub unpacked_len: u64,
    /// The chunks, in file order.
    pub chunks: Vec<ReconChunk>,
}

/// How to rebuild a file, or a byte range of one, from pack byte ranges.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reconstruction {
    /// The file.
    pub file_id: FileId,
    /// SHA-256 of the whole file.
    pub sha256: Sha256,
    /// Size of the whole file.
    pub size: u64,
    /// Start of the range described.
    pub offset: u64,
    /// Length of the range described.
    pub length: u64,
    /// Bytes of the first term's raw data before `offset`.
    pub offset_into_first_term: u64,
    /// The terms covering the range, in file order.
    pub terms: Vec<ReconTerm>,
}

impl Reconstruction {
    /// Whether it describes the whole file (then its chunk list can be
    /// checked against the file id: see [`Reconstruction::check`]).
    pub fn is_whole_file(&self) -> bool {
        self.offset == 0 && self.length == self.size
    }

    /// Every chunk, in file order.
    pub fn chunks(&self) -> impl Iterator<Item = (&ReconTerm, &ReconChunk)> {
        self.terms
            .iter()
            .flat_map(|t| t.chunks.iter().map(move |c| (t, c)))
    }

    /// Checks a reconstruction received from elsewhere: terms consistent
    /// with their chunks, the chunk lengths sum to the range, and for a
    /// whole file, that the chunk list hashes to the file id (so verifying
    /// every chunk against its id verifies the file).
    pub fn check(&self) -> Result<()> {
        let bad = |reason: String| Error::Rejected {
            what: format!("reconstruction of file {}", self.file_id),
            reason,
        };
        let mut total = 0u64;
        for t in &self.terms {
            if t.chunks.len() != t.chunk_count as usize || t.chunks.is_empty() {
                return Err(bad(format!(
                    "a term of pack {} lists {} of {} chunks",
                    t.pack,
                    t.chunks.len(),
                    t.chunk_count
                )));
            }
            let sum: u64 = t.chunks.iter().map(|c| u64::from(c.len)).sum();
            if sum != t.unpacked_len {
                return Err(bad(format!(
                    "a term of pack {} claims {} bytes, its chunks hold {sum}",
                    t.pack, t.unpacked_len
                )));
            }
            for c in &t.chunks {
                let end = c.offset.checked_add(c.record_len);
                if c.len > MAX_CHUNK_LEN
                    || c.record_len < CHUNK_HEADER_LEN as u64
                    || c.offset < t.pack_start
                    || end.is_none_or(|e| e > t.pack_end)
                {
                    return Err(bad(format!(
                        "chunk {} lies outside its term's pack range",
                        c.id
                    )));
                }
            }
            total += sum;
        }
        let range_end = self.offset.checked_add(self.length);
        if range_end.is_none_or(|e| e > self.size)
            || self
                .offset_into_first_term
                .checked_add(self.length)
                .is_none_or(|e| e > total)
        {
            return Err(bad("the terms do not cover the range".into()));
        }
        if self.is_whole_file() {
            let mut h = FileIdHasher::new();
            for (_, c) in self.chunks() {
                h.push(&c.id, u64::from(c.len));
            }
            if h.finish() != self.file_id || total != self.size {
                return Err(bad("its chunk list does not hash to the file id".into()));
            }
        }
        Ok(())
    }
}

/// The reconstruction of `len` bytes of `file` at `offset` (the whole file
/// for `None`).
pub(crate) fn reconstruction(
    core: &Core,
    file: &FileId,
    range: Option<(u64, u64)>,
) -> Result<Reconstruction> {
    let layout = layout(core, file)?;
    let size = layout.size();
    let (offset, length) = range.unwrap_or((0, size));
    if offset.checked_add(length).is_none_or(|end| end > size) {
        return Err(Error::RangeOutOfBounds {
            file: *file,
            offset,
            len: length,
            size,
        });
    }
    let mut rec = Reconstruction {
        file_id: *file,
        sha256: layout.recipe.sha256,
        size,
        offset,
        length,
        offset_into_first_term: 0,
        terms: Vec::new(),
    };
    if length == 0 {
        return Ok(rec);
    }
    let first = layout.chunk_at(offset);
    let last = layout.chunk_at(offset + length - 1);
    let mut pack: Option<Arc<PackReader>> = None;
    for i in first..=last {
        let c = layout.chunk(i).ok_or_else(|| Error::RecipeCorrupt {
            file: *file,
            detail: format!("chunk {i} out of range"),
        })?;
        if i == first {
            rec.offset_into_first_term = offset - c.file_offset;
        }
        let reader = match &pack {
            Some(p) if p.id() == c.pack => p.clone(),
            _ => {
                let p = core.packs.get(&c.pack)?;
                pack = Some(p.clone());
                p
            }
        };
        let e = reader.entry(c.pack_index)?;
        if e.id != c.id {
            return Err(Error::ChunkCorrupt {
                pack: c.pack,
                offset: e.offset,
                chunk: c.id,
                detail: format!(
                    "chunk table entry {} names chunk {} instead",
                    c.pack_index, e.id
                ),
            });
        }
        let chunk = ReconChunk {
            id: c.id,
            len: c.len,
            offset: e.offset,
            record_len: e.record_len(),
        };
        match rec.terms.last_mut() {
            Some(t) if t.pack == c.pack && t.first_chunk + t.chunk_count == c.pack_index => {
                t.chunk_count += 1;
                t.unpacked_len += u64::from(c.len);
                t.pack_end = chunk.offset + chunk.record_len;
                t.chunks.push(chunk);
            }
            _ => rec.terms.push(ReconTerm {
                pack: c.pack,
                first_chunk: c.pack_index,
                chunk_count: 1,
                pack_start: chunk.offset,
                pack_end: chunk.offset + chunk.record_len,
                unpacked_len: u64::from(c.len),
                chunks: vec![chunk],
            }),
        }
    }
    Ok(rec)
}

/// The byte ranges of `pack` that hold records of `file`'s chunks, sorted
/// and merged (touching ranges joined): what a pack URL handed out for
/// `file` may read, so that it reveals nothing of other files in the pack.
pub(crate) fn pack_spans(core: &Core, file: &FileId, pack: &PackId) -> Result<Vec<(u64, u64)>> {
    let layout = layout(core, file)?;
    let mut spans = Vec::new();
    let mut reader: Option<Arc<PackReader>> = None;
    for t in layout.recipe.terms.iter().filter(|t| t.pack == *pack) {
        let r = match &reader {
            Some(r) => r.clone(),
            None => {
                let r = core.packs.get(pack)?;
                reader = Some(r.clone());
                r
            }
        };
        let last = t
            .first_chunk
            .saturating_add(t.chunk_count.saturating_sub(1));
        let (a, b) = (r.entry(t.first_chunk)?, r.entry(last)?);
        spans.push((a.offset, b.offset + b.record_len()));
    }
    Ok(merge_spans(spans))
}

/// Sorts byte ranges and joins those that overlap or touch.
fn merge_spans(mut spans: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    spans.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
    for (a, b) in spans {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// Whether `start..end` lies inside one of `spans` (merged, sorted).
pub fn within_spans(spans: &[(u64, u64)], start: u64, end: u64) -> bool {
    let i = spans.partition_point(|s| s.1 < end);
    spans.get(i).is_some_and(|&(a, b)| a <= start && end <= b)
}

/// One HTTP Range request of a download: a byte range of a pack and the
/// chunks whose records lie in it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fetch {
    /// The pack.
    pub pack: PackId,
    /// Start of the range in the pack.
    pub start: u64,
    /// End of the range (exclusive).
    pub end: u64,
    /// The chunks to take from it, by record offset.
    pub chunks: Vec<ReconChunk>,
}

impl Fetch {
    /// Bytes the request transfers.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// True for an empty range (never planned).
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

/// What a download of a reconstruction into a local store needs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DownloadPlan {
    /// The requests to make, in the file order of their first chunks.
    pub fetches: Vec<Fetch>,
    /// Distinct chunks already in the local store.
    pub reused_chunks: u64,
    /// Their raw bytes.
    pub reused_bytes: u64,
    /// Distinct chunks to fetch.
    pub fetch_chunks: u64,
    /// Bytes the requests transfer (records, and the gaps coalescing took).
    pub fetch_bytes: u64,
}

/// Plans the download of `rec` into the store `local`: every distinct chunk
/// the local store lacks is fetched, once; records of one pack less than
/// `gap` bytes apart share a request, up to `max_request` bytes per request,
/// when the gap holds records of this file too (a pack URL reads only those:
/// see [`pack_spans`]).
/// The requests are in the order of the file position of their first
/// chunk, so that a client fetching a few at a time receives the file about
/// in order (an [`Assembly`] hashes it in order as it arrives).
pub(crate) fn plan_download(
    local: &Core,
    rec: &Reconstruction,
    gap: u64,
    max_request: u64,
) -> Result<DownloadPlan> {
    let mut plan = DownloadPlan::default();
    // Each distinct chunk and where it first is in the file.
    let mut first_at: HashMap<ChunkId, usize> = HashMap::new();
    let mut wanted: BTreeMap<PackId, Vec<ReconChunk>> = BTreeMap::new();
    for (i, (t, c)) in rec.chunks().enumerate() {
        match first_at.entry(c.id) {
            Entry::Occupied(_) => continue,
            Entry::Vacant(v) => v.insert(i),
        };
        if local.index.chunk(&c.id)?.is_some() {
            plan.reused_chunks += 1;
            plan.reused_bytes += u64::from(c.len);
        } else {
            wanted.entry(t.pack).or_default().push(c.clone());
        }
    }
    for (pack, mut chunks) in wanted {
        chunks.sort_by_key(|c| c.offset);
        let spans = merge_spans(
            rec.terms
                .iter()
                .filter(|t| t.pack == pack)
                .map(|t| (t.pack_start, t.pack_end))
                .collect(),
        );
        let mut cur: Option<Fetch> = None;
        for c in chunks {
            plan.fetch_chunks += 1;
            let end = c.offset + c.record_len;
            match &mut cur {
                Some(f)
                    if c.offset <= f.end.saturating_add(gap)
                        && end - f.start <= max_request
                        && within_spans(&spans, f.start, end) =>
                {
                    f.end = f.end.max(end);
                    f.chunks.push(c);
                }
                _ => {
                    if let Some(f) = cur.take() {
                        plan.fetches.push(f);
                    }
                    cur = Some(Fetch {
                        pack,
                        start: c.offset,
                        end,
                        chunks: vec![c],
                    });
                }
            }
        }
        plan.fetches.extend(cur);
    }
    plan.fetches.sort_by_key(|f| {
        f.chunks
            .iter()
            .filter_map(|c| first_at.get(&c.id).copied())
            .min()
    });
    plan.fetch_bytes = plan.fetches.iter().map(Fetch::len).sum();
    Ok(plan)
}

/// Chunk records that were checked against their ids, ready to be admitted
/// into a store ([`crate::Store::admit_chunks`], [`Assembly::add`]), with
/// the raw bytes the check decoded. Only [`verify_fetched`] makes them (and
/// [`VerifiedChunks::extend`] joins them), so holding one means every chunk
/// in it was verified.
#[derive(Clone, Debug, Default)]
pub struct VerifiedChunks {
    /// The records as stored: table entry and stored (encoded) bytes.
    pub(crate) records: Vec<(ChunkEntry, Bytes)>,
    /// Each record's raw (decoded) bytes, which hash to its id.
    pub(crate) raw: Vec<Bytes>,
}

impl VerifiedChunks {
    /// Number of chunks.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Their raw bytes.
    pub fn raw_bytes(&self) -> u64 {
        self.records.iter().map(|(e, _)| u64::from(e.raw_len)).sum()
    }

    /// Appends another set.
    pub fn extend(&mut self, other: VerifiedChunks) {
        self.records.extend(other.records);
        self.raw.extend(other.raw);
    }
}

/// Checks the bytes a [`Fetch`] returned: every chunk's record is where the
/// plan says, its header passes its check and names the expected chunk,
/// and its data decodes and hashes to the chunk id. Returns the verified
/// records, ready to be admitted into a store.
pub fn verify_fetched(fetch: &Fetch, body: &Bytes) -> Result<VerifiedChunks> {
    let bad = |c: &ReconChunk, detail: String| Error::ChunkCorrupt {
        pack: fetch.pack,
        offset: c.offset,
        chunk: c.id,
        detail,
    };
    if body.len() as u64 != fetch.len() {
        return Err(Error::Rejected {
            what: format!(
                "range {}..{} of pack {}",
                fetch.start, fetch.end, fetch.pack
            ),
            reason: format!("{} bytes received, {} expected", body.len(), fetch.len()),
        });
    }
    let mut records = Vec::with_capacity(fetch.chunks.len());
    let mut raws = Vec::with_capacity(fetch.chunks.len());
    for c in &fetch.chunks {
        let at = (c.offset - fetch.start) as usize;
        let header = body
            .get(at..at + CHUNK_HEADER_LEN)
            .ok_or_else(|| bad(c, "record outside the range".into()))?;
        let e = ChunkEntry::decode_header(header, c.offset)
            .map_err(|d| bad(c, format!("record header: {d}")))?;
        if e.id != c.id || e.raw_len != c.len || e.record_len() != c.record_len {
            return Err(bad(
                c,
                format!("the record holds chunk {} ({} bytes)", e.id, e.raw_len),
            ));
        }
        let data = at + CHUNK_HEADER_LEN;
        let stored = body.slice(data..data + e.stored_len as usize);
        let raw = decode_chunk(&stored, e.compression, e.raw_len).map_err(|d| bad(c, d))?;
        if ChunkId::of(&raw) != c.id {
            return Err(bad(c, "content does not hash to the chunk id".into()));
        }
        records.push((e, stored));
        raws.push(raw);
    }
    Ok(VerifiedChunks { records, raw: raws })
}

/// A stored pack opened for serving its bytes as stored (what a client's
/// Range requests on a pack read; the client verifies the records). Reads
/// go through the one handle opened: on a directory store a pack deleted
/// meanwhile (by a repack) stays readable through it.
pub struct PackBytes {
    pack: PackId,
    handle: Arc<dyn crate::storage::ReadHandle>,
    /// Where the pack is, for errors.
    at: String,
}

impl PackBytes {
    /// The pack's size.
    pub fn len(&self) -> u64 {
        self.handle.len()
    }

    /// Whether the pack is empty (no stored pack is).
    pub fn is_empty(&self) -> bool {
        self.handle.len() == 0
    }

    /// `len` bytes at `offset`, as stored.
    pub fn read(&self, offset: u64, len: u64) -> Result<Bytes> {
        let size = self.len();
        if offset.checked_add(len).is_none_or(|e| e > size) {
            return Err(Error::InvalidArgument(format!(
                "range {offset}+{len} is past the end of pack {} ({size} bytes)",
                self.pack
            )));
        }
        self.handle
            .read_at(offset, len as usize)
            .map_err(|e| Error::io("read pack", self.at.clone(), e))
    }
}

/// Opens a stored pack for [`PackBytes`]; "not found" when it is not stored.
pub(crate) fn pack_bytes(core: &Core, pack: &PackId) -> Result<PackBytes> {
    let key = pack_key(pack);
    let handle = core.objects.open(&key).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::not_found("pack", &pack.to_hex())
        } else {
            Error::io("open pack", core.objects.describe(&key), e)
        }
    })?;
    Ok(PackBytes {
        pack: *pack,
        handle,
        at: core.objects.describe(&key),
    })
}
