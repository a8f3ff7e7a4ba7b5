//! The filesystem a [`super::DirStore`] is written over: the few POSIX
//! operations it needs. [`RealFs`] is the operating system's; the
//! crash-simulating `fault::FaultStorage` (feature `testing`) is the other,
//! so the crash tests check the directory backend's own ordering of writes,
//! syncs and renames, not only the engine's.
//!
//! Paths are relative to the root and use `/` separators.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;

use super::{ReadHandle, ReadMode};

/// A file being written (always a new temp file).
pub trait WriteHandle: Send {
    /// Appends bytes.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// Makes everything written so far durable (flush + fsync).
    fn sync(&mut self) -> io::Result<()>;
}

/// The filesystem operations of a directory store.
pub trait Fs: Send + Sync + fmt::Debug {
    /// The root, for messages.
    fn root(&self) -> &Path;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, rel: &str) -> io::Result<()>;
    /// Creates a new file for writing; fails if it exists.
    fn create_new(&self, rel: &str) -> io::Result<Box<dyn WriteHandle>>;
    /// Atomically renames `from` to `to` (replacing `to`).
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Atomically makes `to` another name of the file `from`; fails with
    /// `AlreadyExists` if `to` exists (never replaces it).
    fn hard_link(&self, from: &str, to: &str) -> io::Result<()>;
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
    /// Whether `rel` is a directory (false when it does not exist).
    fn is_dir(&self, rel: &str) -> io::Result<bool>;
    /// A value that changes whenever an entry of directory `rel` is added,
    /// removed or replaced (on a real filesystem, its modification time);
    /// `None` when there is no such directory.
    fn dir_stamp(&self, rel: &str) -> io::Result<Option<u128>>;
    /// See [`super::ObjectStore::check_index_write`].
    fn check_index_write(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The operating system's filesystem under a root directory.
#[derive(Debug, Clone)]
pub struct RealFs {
    root: PathBuf,
    mode: ReadMode,
}

impl RealFs {
    /// The filesystem under `root`, reading immutable files as `mode` says.
    pub fn new(root: impl Into<PathBuf>, mode: ReadMode) -> Self {
        RealFs {
            root: root.into(),
            mode,
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }
}

/// Bytes a file grows by between two early write-backs.
const WRITE_BACK_STEP: u64 = 8 << 20;

/// A new file being written. Every [`WRITE_BACK_STEP`] bytes a background
/// thread starts writing back what was written so far (`fdatasync` on the
/// same open file), so the final `sync` of a large file — a pack — waits
/// for the last step only, not for the whole file, while the writer goes
/// on. A background sync's error is kept and returned by `sync`: it shares
/// the open file description, so the final `fsync` alone might not see a
/// write-back error the background one consumed.
struct FsWriter {
    file: BufWriter<File>,
    written: u64,
    next_write_back: u64,
    write_back: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl FsWriter {
    fn new(file: File) -> Self {
        FsWriter {
            file: BufWriter::with_capacity(1 << 20, file),
            written: 0,
            next_write_back: WRITE_BACK_STEP,
            write_back: None,
        }
    }

    /// Waits for the background write-back, if any, and returns its error.
    fn join_write_back(&mut self) -> io::Result<()> {
        match self.write_back.take() {
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the write-back thread panicked"))),
            None => Ok(()),
        }
    }

    fn start_write_back(&mut self) -> io::Result<()> {
        if self.write_back.as_ref().is_some_and(|h| !h.is_finished()) {
            // The last one is still writing: the next step catches up.
            return Ok(());
        }
        self.join_write_back()?;
        self.file.flush()?;
        let file = self.file.get_ref().try_clone()?;
        // Without a thread there is no early write-back, only the final
        // sync: slower, not wrong.
        self.write_back = std::thread::Builder::new()
            .name("tessera-write-back".into())
            .spawn(move || file.sync_data())
            .ok();
        Ok(())
    }
}

impl WriteHandle for FsWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all(buf)?;
        self.written += buf.len() as u64;
        if self.written >= self.next_write_back {
            self.next_write_back = self.written + WRITE_BACK_STEP;
            self.start_write_back()?;
        }
        Ok(())
    }
    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        let background = self.join_write_back();
        self.file.get_ref().sync_all()?;
        background
    }
}

impl Drop for FsWriter {
    fn drop(&mut self) {
        // Never leave a thread behind holding the file.
        let _ = self.join_write_back();
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

impl Fs for RealFs {
    fn root(&self) -> &Path {
        &self.root
    }
    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        if rel.is_empty() && !self.root.exists() {
            // A new store root: make its entry durable in its parent too.
            fs::create_dir_all(&self.root)?;
            let up = match self.root.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                _ => PathBuf::from("."),
            };
            return File::open(up)?.sync_all();
        }
        fs::create_dir_all(self.path(rel))
    }
    fn create_new(&self, rel: &str) -> io::Result<Box<dyn WriteHandle>> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(self.path(rel))?;
        Ok(Box::new(FsWriter::new(file)))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        fs::rename(self.path(from), self.path(to))
    }
    fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        fs::hard_link(self.path(from), self.path(to))
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
            ReadMode::Mmap => Ok(Arc::new(super::mmap::map_sealed(&file, len)?)),
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
    fn is_dir(&self, rel: &str) -> io::Result<bool> {
        match fs::metadata(self.path(rel)) {
            Ok(m) => Ok(m.is_dir()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
    fn dir_stamp(&self, rel: &str) -> io::Result<Option<u128>> {
        match fs::metadata(self.path(rel)) {
            Ok(m) if m.is_dir() => {
                let t = m.modified()?;
                // Before the epoch: the distance back, told apart by the top bit.
                Ok(Some(match t.duration_since(std::time::UNIX_EPOCH) {
                    Ok(d) => d.as_nanos(),
                    Err(e) => e.duration().as_nanos() | 1 << 127,
                }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_written_with_background_write_backs_has_every_byte() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fs = RealFs::new(dir.path(), ReadMode::Pread);
        let mut w = fs.create_new("big").expect("create");
        // Odd-sized writes across several write-back steps.
        let block: Vec<u8> = (0..999_983u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut expected = Vec::new();
        while (expected.len() as u64) < 3 * WRITE_BACK_STEP + 12345 {
            w.write_all(&block).expect("write");
            expected.extend_from_slice(&block);
        }
        w.sync().expect("sync");
        // Writes after a sync start new steps; a second sync covers them.
        w.write_all(&block).expect("write");
        expected.extend_from_slice(&block);
        w.sync().expect("sync");
        drop(w);
        assert_eq!(fs.read("big").expect("read"), expected);
    }
}
