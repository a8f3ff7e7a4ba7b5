//! The storage trait: every byte of pack, recipe, ref and config I/O goes
//! through [`Storage`], so tests can inject faults and backends can be swapped.
//!
//! Paths are relative to the store root and use `/` separators.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

/// A file being written (always a new temp file).
pub trait WriteHandle: Send {
    /// Appends bytes.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (flush + fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// A read-only, random-access view of an immutable file.
pub trait ReadHandle: Send + Sync {
    /// Length of the file.
    fn len(&self) -> u64;
    /// True when the file is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Reads exactly `len` bytes at `offset`; a short file is `UnexpectedEof`.
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes>;
}

/// The storage backend of a store.
pub trait Storage: Send + Sync + fmt::Debug {
    /// The store root, for messages.
    fn root(&self) -> &Path;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, rel: &str) -> io::Result<()>;
    /// Creates a new file for writing; fails if it exists.
    fn create_new(&self, rel: &str) -> io::Result<Box<dyn WriteHandle>>;
    /// Atomically renames `from` to `to` (replacing `to`).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Makes a directory's entries durable (fsync of the directory).
    fn sync_dir(&self, rel: &str) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, rel: &str) -> io::Result<()>;
    /// Reads a whole (small) file.
    fn read(&self, rel: &str) -> io::Result<Vec<u8>>;
    /// Opens an immutable file for random access.
    fn open_read(&self, rel: &str) -> io::Result<Arc<dyn ReadHandle>>;
    /// Names of the entries of a directory (not recursive), sorted.
    fn list_dir(&self, rel: &str) -> io::Result<Vec<String>>;
    /// Whether a file or directory exists.
    fn exists(&self, rel: &str) -> io::Result<bool>;
}

/// How [`FsStorage`] reads immutable files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadMode {
    /// Memory-map sealed files (zero-copy reads).
    #[default]
    Mmap,
    /// Plain positional reads (`pread`) into buffers.
    Pread,
}

/// The local-filesystem backend.
#[derive(Debug, Clone)]
pub struct FsStorage {
    root: PathBuf,
    mode: ReadMode,
}

impl FsStorage {
    /// A backend rooted at `root`.
    pub fn new(root: impl Into<PathBuf>, mode: ReadMode) -> Self {
        FsStorage {
            root: root.into(),
            mode,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

struct FsWriter {
    file: BufWriter<File>,
}

impl WriteHandle for FsWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_all()
    }
}

struct PreadFile {
    file: File,
    len: u64,
}

impl ReadHandle for PreadFile {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let end = offset.checked_add(len as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("read of {len} bytes at {offset} past end ({})", self.len),
            ));
        }
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(Bytes::from(buf))
    }
}

/// A read handle over an in-memory buffer (used for mapped files and tests).
pub(crate) struct BytesFile(pub(crate) Bytes);

impl ReadHandle for BytesFile {
    fn len(&self) -> u64 {
        self.0.len() as u64
    }
    fn read_at(&self, offset: u64, len: usize) -> io::Result<Bytes> {
        let start = usize::try_from(offset).ok();
        match start.and_then(|s| Some(s..s.checked_add(len)?)) {
            Some(r) if r.end <= self.0.len() => Ok(self.0.slice(r)),
            _ => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "read of {len} bytes at {offset} past end ({})",
                    self.0.len()
                ),
            )),
        }
    }
}

impl Storage for FsStorage {
    fn root(&self) -> &Path {
        &self.root
    }
    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        fs::create_dir_all(self.path(rel))
    }
    fn create_new(&self, rel: &str) -> io::Result<Box<dyn WriteHandle>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(rel))?;
        Ok(Box::new(FsWriter {
            file: BufWriter::with_capacity(1 << 20, file),
        }))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }
    fn sync_dir(&self, rel: &str) -> io::Result<()> {
        File::open(self.path(rel))?.sync_all()
    }
    fn remove_file(&self, rel: &str) -> io::Result<()> {
        fs::remove_file(self.path(rel))
    }
    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        fs::read(self.path(rel))
    }
    fn open_read(&self, rel: &str) -> io::Result<Arc<dyn ReadHandle>> {
        let file = File::open(self.path(rel))?;
        let len = file.metadata()?.len();
        match self.mode {
            ReadMode::Pread => Ok(Arc::new(PreadFile { file, len })),
            ReadMode::Mmap => Ok(Arc::new(BytesFile(crate::mmap::map_sealed(&file, len)?))),
        }
    }
    fn list_dir(&self, rel: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in fs::read_dir(self.path(rel))? {
            out.push(e?.file_name().to_string_lossy().into_owned());
        }
        out.sort();
        Ok(out)
    }
    fn exists(&self, rel: &str) -> io::Result<bool> {
        self.path(rel).try_exists()
    }
}
