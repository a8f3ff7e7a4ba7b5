//! Reads: a file's checked recipe, byte ranges, and the streaming
//! [`FileReader`]. Every chunk is verified against its id before any of its
//! bytes leave the engine (spec §7.1, §10.2).

use std::collections::{HashSet, VecDeque};
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use rayon::prelude::*;

use crate::cache::lock;
use crate::core::Core;
use crate::error::{Error, Result};
use crate::format::Recipe;
use crate::ids::{FileId, PackId, Sha256};
use crate::index::Index;
use crate::layout::Layout;
use crate::pack::PackCache;
use crate::paths::recipe_key;

/// Summary of a stored file.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FileInfo {
    /// The file id.
    pub file_id: FileId,
    /// SHA-256 of the content.
    pub sha256: Sha256,
    /// Size in bytes.
    pub size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Number of recipe terms.
    pub terms: u64,
    /// Distinct packs holding its chunks.
    pub packs: Vec<PackId>,
}

/// The checked recipe of a file, with its prefix sums (cached). Falls back
/// to the recipe object when the index copy is damaged.
pub(crate) fn layout(core: &Core, file: &FileId) -> Result<Arc<Layout>> {
    if let Some(l) = lock(&core.recipes).get(file) {
        return Ok(l);
    }
    let mut bytes = core.index.recipe_bytes(file)?;
    // A shared store's index is a cache: look in the bucket on a miss.
    if bytes.is_none() && core.objects.shared() && crate::remote::discover_file(core, file)? {
        bytes = core.index.recipe_bytes(file)?;
    }
    let bytes = bytes.ok_or_else(|| Error::not_found("file", &file.to_hex()))?;
    let recipe = match Recipe::decode(*file, &bytes) {
        Ok(r) => r,
        Err(first) => {
            let from_disk = core
                .objects
                .get(&recipe_key(file))
                .ok()
                .map(|b| Recipe::decode(*file, &b));
            match from_disk {
                Some(Ok(r)) => {
                    tracing::warn!(file = %file, "index copy of recipe is damaged; using recipe file");
                    r
                }
                _ => return Err(first.into_error(*file)),
            }
        }
    };
    let layout = Arc::new(Layout::new(recipe));
    lock(&core.recipes).insert(*file, layout.clone());
    Ok(layout)
}

/// Size, chunks, terms, packs and sha256 of a file.
pub(crate) fn info(core: &Core, file: &FileId) -> Result<FileInfo> {
    let l = layout(core, file)?;
    Ok(FileInfo {
        file_id: *file,
        sha256: l.recipe.sha256,
        size: l.size(),
        chunks: l.chunk_count() as u64,
        terms: l.recipe.terms.len() as u64,
        packs: l.packs(),
    })
}

/// Opens (checking each footer) every pack that holds a byte of
/// `offset..offset+len` of `file`, so that a missing or truncated pack fails
/// before a reader returns any byte.
pub(crate) fn open_packs(core: &Core, file: &FileId, offset: u64, len: u64) -> Result<()> {
    let layout = layout(core, file)?;
    if len == 0 || offset >= layout.size() {
        return Ok(());
    }
    let end = offset.saturating_add(len).min(layout.size());
    let (first, last) = (layout.term_at(offset), layout.term_at(end - 1));
    let mut seen = HashSet::new();
    for t in layout.recipe.terms.iter().take(last + 1).skip(first) {
        if seen.insert(t.pack) {
            core.packs.get(&t.pack)?;
        }
    }
    Ok(())
}

/// Reads chunk `i` of a layout, verified. A pack that is gone (a repack or
/// GC deleted it after this layout was read) is not the end: the chunk is
/// looked up in the index by its id and read where it is now (spec §10.5).
fn read_chunk(packs: &PackCache, index: &Index, layout: &Layout, i: usize) -> Result<Bytes> {
    let c = layout.chunk(i).ok_or_else(|| Error::RecipeCorrupt {
        file: layout.recipe.file,
        detail: format!("chunk {i} out of range"),
    })?;
    match packs.read_chunk(&c.pack, c.pack_index, &c.id) {
        Err(e @ Error::PackMissing { .. }) => match index.chunk(&c.id)? {
            Some(loc) if (loc.pack, loc.index) != (c.pack, c.pack_index) => {
                packs.read_chunk(&loc.pack, loc.index, &c.id)
            }
            _ => Err(e),
        },
        r => r,
    }
}

/// Reads `len` bytes at `offset`, touching only the chunks that cover them.
pub(crate) fn read_range(core: &Core, file: &FileId, offset: u64, len: u64) -> Result<Bytes> {
    let layout = layout(core, file)?;
    let size = layout.size();
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(Error::RangeOutOfBounds {
            file: *file,
            offset,
            len,
            size,
        });
    }
    if len == 0 {
        return Ok(Bytes::new());
    }
    let end = offset + len;
    let first = layout.chunk_at(offset);
    let last = layout.chunk_at(end - 1);
    let parts: Vec<Bytes> = (first..=last)
        .into_par_iter()
        .map(|i| {
            let data = read_chunk(&core.packs, &core.index, &layout, i)?;
            let start = layout.chunk(i).map_or(0, |c| c.file_offset);
            let lo = offset.saturating_sub(start) as usize;
            let hi = ((end - start) as usize).min(data.len());
            Ok(data.slice(lo.min(hi)..hi))
        })
        .collect::<Result<_>>()?;
    if parts.len() == 1 {
        return Ok(parts.into_iter().next().unwrap_or_default());
    }
    let mut out = BytesMut::with_capacity(len as usize);
    for p in parts {
        out.extend_from_slice(&p);
    }
    Ok(out.freeze())
}

/// A streaming reader over one file. Sequential reads decode a window of
/// chunks ahead in parallel; memory is bounded by that window
/// (`read_ahead_chunks × max chunk size`), not by the file size. Every chunk
/// is verified against its id before any of its bytes are returned; a
/// verification failure is an `io::Error` wrapping the engine [`Error`]
/// (see [`unwrap_io`]).
pub struct FileReader {
    packs: Arc<PackCache>,
    index: Arc<Index>,
    layout: Arc<Layout>,
    pos: u64,
    /// Decoded chunks, consecutive, starting at `window_first`.
    window: VecDeque<Bytes>,
    window_first: usize,
    ahead: usize,
    /// Read-ahead never decodes chunks at or past this byte offset.
    end: u64,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("file", &self.layout.recipe.file)
            .field("pos", &self.pos)
            .finish()
    }
}

impl FileReader {
    pub(crate) fn new(core: &Core, file: &FileId) -> Result<Self> {
        Ok(FileReader {
            packs: core.packs.clone(),
            index: core.index.clone(),
            layout: layout(core, file)?,
            pos: 0,
            window: VecDeque::new(),
            window_first: 0,
            ahead: core.opts.read_ahead_chunks.max(1),
            end: u64::MAX,
        })
    }

    /// Tells the reader no byte at or past `end` will be wanted, so
    /// read-ahead stops there (for streaming a byte range).
    pub fn limit_read_ahead(&mut self, end: u64) {
        self.end = end;
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        self.layout.size()
    }

    /// Reads the whole remaining content into a vector (convenience).
    pub fn read_all(mut self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::with_capacity((self.size() - self.pos.min(self.size())) as usize);
        self.read_to_end(&mut out).map_err(unwrap_io)?;
        Ok(out)
    }

    fn fill(&mut self, chunk: usize) -> Result<(), Error> {
        let in_window = chunk >= self.window_first && chunk < self.window_first + self.window.len();
        if in_window {
            // Drop chunks behind the reader.
            while self.window_first < chunk {
                self.window.pop_front();
                self.window_first += 1;
            }
            return Ok(());
        }
        let mut end = (chunk + self.ahead).min(self.layout.chunk_count());
        if self.end < self.layout.size() {
            // The chunk holding byte end-1 is the last one wanted.
            let last = self.layout.chunk_at(self.end.saturating_sub(1));
            end = end.min(last + 1).max(chunk + 1);
        }
        let (packs, index, layout) = (&self.packs, &self.index, &self.layout);
        let decoded: Vec<Result<Bytes, Error>> = (chunk..end)
            .into_par_iter()
            .map(|i| read_chunk(packs, index, layout, i))
            .collect();
        // Keep the verified chunks up to the first failure. A failure in the
        // read-ahead is only reported once the reader actually reaches that
        // chunk (it is refetched then), so a read that stops before damage
        // succeeds.
        let mut window = VecDeque::with_capacity(decoded.len());
        for r in decoded {
            match r {
                Ok(b) => window.push_back(b),
                Err(e) if window.is_empty() => return Err(e),
                Err(_) => break,
            }
        }
        self.window = window;
        self.window_first = chunk;
        Ok(())
    }
}

/// Recovers the engine error from an `io::Error` produced by [`FileReader`]
/// (any other I/O error is returned as [`Error::Io`] on `object`).
pub fn unwrap_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        match e.into_inner().map(|b| b.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            _ => Error::Bug("an I/O error lost the engine error it carried".into()),
        }
    } else {
        Error::io("read", "the output", e)
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.layout.size();
        if buf.is_empty() || self.pos >= size {
            return Ok(0);
        }
        let i = self.layout.chunk_at(self.pos);
        self.fill(i).map_err(io::Error::other)?;
        let Some(c) = self.layout.chunk(i) else {
            return Err(io::Error::other(Error::RecipeCorrupt {
                file: self.layout.recipe.file,
                detail: format!("chunk {i} out of range"),
            }));
        };
        let data = self.window.front().cloned().unwrap_or_default();
        let within = (self.pos - c.file_offset) as usize;
        let avail = data.get(within..).unwrap_or_default();
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for FileReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let size = self.layout.size() as i128;
        let target = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::End(d) => size + d as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
        };
        if target < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            ));
        }
        self.pos = u64::try_from(target).unwrap_or(u64::MAX);
        Ok(self.pos)
    }
}
