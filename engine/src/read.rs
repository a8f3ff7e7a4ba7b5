//! Reads: a file's checked recipe, byte ranges, and the streaming
//! [`FileReader`]. Every chunk is verified against its id before any of its
//! bytes leave the engine (spec §7.1, §10.2).

use std::collections::{HashSet, VecDeque};
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::sync::{Arc, Condvar, Mutex};

use bytes::Bytes;
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
    lock(&core.recipes).insert_weighted(*file, layout.clone(), layout.heap_bytes());
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
/// A range within one chunk is a slice of it (zero-copy when the chunk is
/// stored raw in a mapped pack); a longer one is decoded chunk by chunk, in
/// parallel, straight into the one output buffer: memory is the output plus
/// one chunk per thread, whatever the range's size.
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
    // Byte range of chunk i in the file.
    let span = |i: usize| {
        layout
            .chunk(i)
            .map(|c| c.file_offset..c.file_offset + u64::from(c.len))
            .ok_or_else(|| Error::RecipeCorrupt {
                file: layout.recipe.file,
                detail: format!("chunk {i} out of range"),
            })
    };
    // The part of chunk i that is wanted, as a range within the chunk.
    let wanted = |chunk: &std::ops::Range<u64>| {
        (offset.max(chunk.start) - chunk.start) as usize
            ..(end.min(chunk.end) - chunk.start) as usize
    };
    if first == last {
        let data = read_chunk(&core.packs, &core.index, &layout, first)?;
        let part = wanted(&span(first)?);
        return data
            .get(part.clone())
            .map(|_| data.slice(part))
            .ok_or_else(|| Error::RecipeCorrupt {
                file: layout.recipe.file,
                detail: format!("chunk {first} is shorter than the recipe says"),
            });
    }
    let len = usize::try_from(len).map_err(|_| {
        Error::InvalidArgument(format!("a {len}-byte range does not fit in memory"))
    })?;
    let mut out = vec![0u8; len];
    // Split the output at chunk boundaries: one disjoint piece per chunk.
    let mut pieces: Vec<(usize, std::ops::Range<usize>, &mut [u8])> =
        Vec::with_capacity(last - first + 1);
    let mut rest: &mut [u8] = &mut out;
    for i in first..=last {
        let part = wanted(&span(i)?);
        let taken = std::mem::take(&mut rest);
        let (piece, tail) = taken.split_at_mut(part.len().min(taken.len()));
        pieces.push((i, part, piece));
        rest = tail;
    }
    pieces.into_par_iter().try_for_each(|(i, part, piece)| {
        let data = read_chunk(&core.packs, &core.index, &layout, i)?;
        let part = data.get(part).unwrap_or_default();
        if part.len() != piece.len() {
            return Err(Error::RecipeCorrupt {
                file: layout.recipe.file,
                detail: format!(
                    "chunk {i} is {} bytes, the recipe says otherwise",
                    data.len()
                ),
            });
        }
        piece.copy_from_slice(part);
        Ok(())
    })?;
    Ok(Bytes::from(out))
}

/// One chunk being read ahead: the result, once a pool thread has it.
struct Ahead {
    result: Mutex<Option<Result<Bytes>>>,
    ready: Condvar,
}

impl Ahead {
    fn wait(&self) -> Result<Bytes> {
        let mut r = lock(&self.result);
        loop {
            if let Some(done) = r.take() {
                return done;
            }
            r = self.ready.wait(r).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A streaming reader over one file. Sequential reads keep a window of
/// chunks being read and verified ahead on the thread pool, so the next
/// chunks are decoded while the current one is consumed; memory is bounded
/// by that window (`read_ahead_chunks × max chunk size`), not by the file
/// size. Every chunk is verified against its id before any of its bytes are
/// returned; a verification failure is an `io::Error` wrapping the engine
/// [`Error`] (see [`unwrap_io`]). [`BufRead`] hands out whole verified
/// chunks without copying them.
pub struct FileReader {
    packs: Arc<PackCache>,
    index: Arc<Index>,
    layout: Arc<Layout>,
    pos: u64,
    /// The chunk holding `pos`, verified (its index and bytes).
    current: Option<(usize, Bytes)>,
    /// Chunks being read ahead, consecutive, starting at `ahead_first`.
    window: VecDeque<Arc<Ahead>>,
    ahead_first: usize,
    ahead: usize,
    /// Read-ahead never decodes chunks at or past this byte offset.
    end: u64,
    /// On a shared store: rereads the file's recipe from the bucket when a
    /// pack the reader's one names is gone (another node's repack replaced
    /// it; spec §4.3). `Some` layout when it differs from the reader's.
    reload: Option<Reload>,
    /// Pack bytes read past and not yet released: (pack, start, end).
    done: Option<(PackId, u64, u64)>,
}

/// Pack bytes a sequential reader releases at once (one `madvise` each).
const RELEASE_SPAN: u64 = 8 << 20;

/// See [`FileReader`]'s `reload`.
type Reload = Arc<dyn Fn(&Layout) -> Result<Option<Arc<Layout>>> + Send + Sync>;

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader")
            .field("file", &self.layout.recipe.file)
            .field("pos", &self.pos)
            .finish()
    }
}

impl FileReader {
    pub(crate) fn new(core: &Arc<Core>, file: &FileId) -> Result<Self> {
        let reload: Option<Reload> = core.objects.shared().then(|| {
            let (core, file) = (core.clone(), *file);
            Arc::new(move |mine: &Layout| {
                // The index may have taken the new recipe already (another
                // read of the file reloaded it after this reader was made):
                // compare with the reader's own, not the index's.
                crate::remote::reload_stale(&core, &file)?;
                let now = layout(&core, &file)?;
                Ok((now.recipe != mine.recipe).then_some(now))
            }) as Reload
        });
        Ok(FileReader {
            reload,
            done: None,
            packs: core.packs.clone(),
            index: core.index.clone(),
            layout: layout(core, file)?,
            pos: 0,
            current: None,
            window: VecDeque::new(),
            ahead_first: 0,
            ahead: core.opts.read_ahead_chunks.max(1),
            end: u64::MAX,
        })
    }

    /// Tells the reader no byte at or past `end` will be wanted, so
    /// read-ahead stops there (for streaming a byte range).
    pub fn limit_read_ahead(&mut self, end: u64) {
        self.end = end;
    }

    /// Reads at most `chunks` chunks ahead (at least one) instead of the
    /// store's `read_ahead_chunks`: less overlap, less memory held.
    pub fn set_read_ahead(&mut self, chunks: usize) {
        self.ahead = chunks.max(1);
    }

    /// The most decoded bytes this reader holds at once: its read-ahead
    /// window and the current chunk, each at most the file's largest chunk.
    pub fn max_held(&self) -> u64 {
        let largest = self.layout.recipe.chunks.iter().map(|c| c.1).max();
        (self.ahead as u64 + 1) * u64::from(largest.unwrap_or(0))
    }

    /// How many chunks hold bytes `start..end` of the file (0 for an empty
    /// range).
    pub fn chunks_in(&self, start: u64, end: u64) -> usize {
        let end = end.min(self.size());
        if start >= end {
            return 0;
        }
        (self.layout.chunk_at(end - 1) + 1).saturating_sub(self.layout.chunk_at(start))
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

    /// One past the last chunk read-ahead may decode.
    fn ahead_limit(&self) -> usize {
        let count = self.layout.chunk_count();
        if self.end < self.layout.size() {
            // The chunk holding byte end-1 is the last one wanted.
            (self.layout.chunk_at(self.end.saturating_sub(1)) + 1).min(count)
        } else {
            count
        }
    }

    /// Starts reading chunk `i` on the pool.
    fn spawn(&self, i: usize) -> Arc<Ahead> {
        let slot = Arc::new(Ahead {
            result: Mutex::new(None),
            ready: Condvar::new(),
        });
        let (packs, index, layout, done) = (
            self.packs.clone(),
            self.index.clone(),
            self.layout.clone(),
            slot.clone(),
        );
        rayon::spawn(move || {
            let r = read_chunk(&packs, &index, &layout, i);
            *lock(&done.result) = Some(r);
            done.ready.notify_all();
        });
        slot
    }

    /// Chunk `chunk`, verified, reading ahead of it; on a shared store, once
    /// more with the recipe reloaded when a pack it names is gone.
    fn fetch(&mut self, chunk: usize) -> Result<Bytes, Error> {
        match self.fetch_ahead(chunk) {
            Err(Error::PackMissing { pack, object }) => {
                let reloaded = match &self.reload {
                    Some(r) => r(&self.layout)?,
                    None => None,
                };
                let Some(layout) = reloaded else {
                    return Err(Error::PackMissing { pack, object });
                };
                // The same file id: the same chunk list, elsewhere.
                self.layout = layout;
                self.window.clear();
                self.ahead_first = chunk;
                self.fetch_ahead(chunk)
            }
            r => r,
        }
    }

    fn fetch_ahead(&mut self, chunk: usize) -> Result<Bytes, Error> {
        // A pool thread must not wait for the pool: read in place.
        if rayon::current_thread_index().is_some() {
            return read_chunk(&self.packs, &self.index, &self.layout, chunk);
        }
        let in_window = chunk >= self.ahead_first && chunk < self.ahead_first + self.window.len();
        if !in_window {
            // A seek: what was read ahead is not wanted.
            self.window.clear();
            self.ahead_first = chunk;
        }
        while self.ahead_first < chunk {
            self.window.pop_front();
            self.ahead_first += 1;
        }
        let limit = self.ahead_limit().max(chunk + 1);
        let mut next = self.ahead_first + self.window.len();
        while next < limit && next < chunk + self.ahead {
            let slot = self.spawn(next);
            self.window.push_back(slot);
            next += 1;
        }
        let Some(slot) = self.window.pop_front() else {
            return read_chunk(&self.packs, &self.index, &self.layout, chunk);
        };
        self.ahead_first += 1;
        match slot.wait() {
            Ok(b) => Ok(b),
            // A failure is reported only once the reader reaches the chunk,
            // and after reading it again.
            Err(_) => read_chunk(&self.packs, &self.index, &self.layout, chunk),
        }
    }

    /// A sequential read moved past chunk `i`: its record joins the span of
    /// pack bytes read, which is released (a mapped pack's pages leave the
    /// resident set, so a long read stays small) once it reaches
    /// [`RELEASE_SPAN`] or the read moves to other bytes.
    fn done_with(&mut self, i: usize) {
        let Some(c) = self.layout.chunk(i) else {
            return;
        };
        let Some((offset, len)) = self.packs.record_span(&c.pack, c.pack_index) else {
            return;
        };
        match &mut self.done {
            Some((pack, _, end)) if *pack == c.pack && *end == offset => *end += len,
            _ => {
                self.release_done();
                self.done = Some((c.pack, offset, offset + len));
            }
        }
        if let Some((_, start, end)) = self.done {
            if end - start >= RELEASE_SPAN {
                self.release_done();
            }
        }
    }

    fn release_done(&mut self) {
        if let Some((pack, start, end)) = self.done.take() {
            self.packs.release(&pack, start, end - start);
        }
    }

    /// The verified chunk holding `pos` (`None` at or past the end).
    fn current(&mut self) -> Result<Option<(u64, &Bytes)>, Error> {
        if self.pos >= self.layout.size() {
            return Ok(None);
        }
        let i = self.layout.chunk_at(self.pos);
        let c = self.layout.chunk(i).ok_or_else(|| Error::RecipeCorrupt {
            file: self.layout.recipe.file,
            detail: format!("chunk {i} out of range"),
        })?;
        if self.current.as_ref().is_none_or(|(at, _)| *at != i) {
            if let Some((prev, _)) = self.current.take() {
                if prev + 1 == i {
                    self.done_with(prev);
                }
            }
            let data = self.fetch(i)?;
            self.current = Some((i, data));
        }
        Ok(self.current.as_ref().map(|(_, b)| (c.file_offset, b)))
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

impl BufRead for FileReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        let pos = self.pos;
        match self.current().map_err(io::Error::other)? {
            None => Ok(&[]),
            Some((start, data)) => Ok(data.get((pos - start) as usize..).unwrap_or_default()),
        }
    }

    fn consume(&mut self, amt: usize) {
        self.pos = self.pos.saturating_add(amt as u64);
    }
}

impl Read for FileReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
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
