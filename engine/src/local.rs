//! A store's local state: what is not an object. The index (a local
//! database, a rebuildable cache of the objects) and the lock file that
//! keeps a second process out. For a directory store they sit beside the
//! objects (`STORE/index/`, `STORE/lock`); this module is the one place that
//! names them.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The local state directory of a store.
#[derive(Clone, Debug)]
pub(crate) struct Local {
    dir: PathBuf,
}

/// The held store lock: an advisory `flock` released by the kernel when
/// the process exits, however it exits (or when this is dropped).
#[derive(Debug)]
pub(crate) struct LockGuard {
    _file: File,
}

impl Local {
    pub(crate) fn new(dir: impl Into<PathBuf>) -> Self {
        Local { dir: dir.into() }
    }

    /// The local directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The index's directory.
    pub(crate) fn index_dir(&self) -> PathBuf {
        self.dir.join("index")
    }

    fn lock_path(&self) -> PathBuf {
        self.dir.join("lock")
    }

    /// Takes the store's exclusive lock, waiting up to `wait` for another
    /// process to release it (`None`: fail at once), and records our pid in
    /// it for the error message of the next would-be opener.
    pub(crate) fn lock(&self, wait: Option<Duration>) -> Result<LockGuard> {
        let path = self.lock_path();
        if !self.dir.exists() {
            std::fs::create_dir_all(&self.dir)
                .map_err(|e| Error::io("create directory", self.dir.display().to_string(), e))?;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| Error::io("open lock file", path.display().to_string(), e))?;
        let deadline = wait.map(|w| Instant::now().checked_add(w));
        loop {
            match f.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock)
                    if deadline.is_some_and(|d| d.is_none_or(|d| Instant::now() < d)) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(TryLockError::WouldBlock) => {
                    let pid = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(0);
                    return Err(Error::StoreLocked {
                        path: self.dir.clone(),
                        pid,
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(Error::io("lock", path.display().to_string(), e))
                }
            }
        }
        let r = f
            .set_len(0)
            .and_then(|()| f.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(f, "{}", std::process::id()));
        r.map_err(|e| Error::io("write lock file", path.display().to_string(), e))?;
        Ok(LockGuard { _file: f })
    }

    /// Creates the index directory, durably (its entry fsynced in the local
    /// directory).
    pub(crate) fn create_index_dir(&self) -> Result<()> {
        let dir = self.index_dir();
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io("create directory", dir.display().to_string(), e))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io("fsync directory", self.dir.display().to_string(), e))
    }

    /// Deletes the index's contents (not its directory: a crash in between
    /// leaves an empty index, never a missing one).
    pub(crate) fn clear_index(&self) -> Result<()> {
        let dir = self.index_dir();
        let name = |p: &Path| p.display().to_string();
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io("list", name(&dir), e))?;
        for entry in entries {
            let path = entry.map_err(|e| Error::io("list", name(&dir), e))?.path();
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io("remove", name(&path), e))?;
        }
        Ok(())
    }

    /// Deletes the whole index directory (`repair index`).
    pub(crate) fn remove_index(&self) -> Result<()> {
        let dir = self.index_dir();
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove index", dir.display().to_string(), e)),
        }
    }

    /// Whether the index directory holds anything (a store's index).
    pub(crate) fn has_index(&self) -> bool {
        std::fs::read_dir(self.index_dir()).is_ok_and(|mut d| d.next().is_some())
    }
}
