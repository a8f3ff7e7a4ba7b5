//! Streaming reads: a `Read + Seek` over a file's content.

use std::collections::VecDeque;
use std::io::{self, Read, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;
use rayon::prelude::*;

use crate::error::Error;
use crate::recipe::Layout;
use crate::store::Store;

/// A streaming reader over one file. Sequential reads decode a window of
/// chunks ahead in parallel; memory is bounded by that window
/// (`read_ahead_chunks × max chunk size`), not by the file size. Every chunk
/// is verified against its id before any of its bytes are returned; a
/// verification failure is an `io::Error` wrapping the engine [`Error`].
pub struct FileReader {
    store: Store,
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
    pub(crate) fn new(store: Store, layout: Arc<Layout>) -> Self {
        let ahead = store.options().read_ahead_chunks.max(1);
        FileReader {
            store,
            layout,
            pos: 0,
            window: VecDeque::new(),
            window_first: 0,
            ahead,
            end: u64::MAX,
        }
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
        let decoded: Vec<Result<Bytes, Error>> = (chunk..end)
            .into_par_iter()
            .map(|i| self.store.read_chunk(&self.layout, i))
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

/// Recovers the engine error from an `io::Error` produced by [`FileReader`].
pub fn unwrap_io(e: io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        if let Ok(inner) = e
            .into_inner()
            .ok_or(())
            .and_then(|b| b.downcast::<Error>().map_err(|_| ()))
        {
            return *inner;
        }
        return Error::InvalidArgument("unreachable: io error lost its engine error".into());
    }
    Error::Io {
        op: "read",
        path: "<reader>".into(),
        source: e,
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
