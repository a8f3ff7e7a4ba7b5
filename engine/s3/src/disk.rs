//! The on-disk tier of the block cache: fetched blocks kept as files in a
//! local directory, bounded in bytes, so that a later process on the same
//! node (a CLI command, a restarted server) reads them without a request.
//!
//! A block is the file `<dir>/<h[0..2]>/<h>` with `h` the BLAKE3 hash of
//! (key, ETag, block index): a replaced object has another ETag, so its old
//! blocks are never served, only evicted. The file holds the BLAKE3 hash of
//! the block, then the block; a file that does not hash to what it says
//! (torn by a crash, damaged) is removed and counts as a miss. Files are
//! written to a temporary name and renamed, so a reader sees a whole file
//! or none. When the files exceed the bound, the least recently used ones
//! (by modification time, which a hit refreshes) are removed down to three
//! quarters of it. Any I/O error of the cache is a miss, never a failed
//! read: the bucket has every block.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use bytes::Bytes;

use crate::version::ObjectVersion;

const HASH: usize = 32;
const TMP_PREFIX: &str = "tmp-";

/// The on-disk block cache (see the module docs).
#[derive(Debug)]
pub(crate) struct DiskCache {
    dir: PathBuf,
    bound: u64,
    /// Bytes of the cache's files (an estimate between evictions).
    bytes: AtomicU64,
    /// Temporary names of this process.
    tmp: AtomicU64,
    evicting: Mutex<()>,
}

impl DiskCache {
    /// The cache in `dir` (created if missing), holding at most `bound`
    /// bytes of files. Leftover temporary files are removed and the cache
    /// is trimmed to the bound.
    pub(crate) fn open(dir: &Path, bound: u64) -> io::Result<DiskCache> {
        fs::create_dir_all(dir).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("create cache directory {}: {e}", dir.display()),
            )
        })?;
        let c = DiskCache {
            dir: dir.to_path_buf(),
            bound,
            bytes: AtomicU64::new(0),
            tmp: AtomicU64::new(0),
            evicting: Mutex::new(()),
        };
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
                    let _ = fs::remove_file(e.path());
                }
            }
        }
        c.evict(u64::MAX);
        Ok(c)
    }

    fn path(&self, v: &ObjectVersion, block: u64) -> PathBuf {
        let mut h = blake3::Hasher::new();
        h.update(v.key.as_bytes());
        h.update(&[0]);
        h.update(v.etag.as_bytes());
        h.update(&[0]);
        h.update(&block.to_le_bytes());
        let hex = h.finalize().to_hex();
        self.dir.join(&hex.as_str()[..2]).join(hex.as_str())
    }

    /// The block, if a whole, intact copy is cached (its use is recorded).
    pub(crate) fn get(&self, v: &ObjectVersion, block: u64) -> Option<Bytes> {
        let p = self.path(v, block);
        let file = fs::read(&p).ok()?;
        if file.len() < HASH || blake3::hash(&file[HASH..]).as_bytes()[..] != file[..HASH] {
            if fs::remove_file(&p).is_ok() {
                self.bytes.fetch_sub(
                    (file.len() as u64).min(self.bytes.load(Ordering::Relaxed)),
                    Ordering::Relaxed,
                );
            }
            return None;
        }
        // Recency for eviction; a failure only makes the block look older.
        if let Ok(f) = fs::File::options().append(true).open(&p) {
            let _ = f.set_modified(SystemTime::now());
        }
        Some(Bytes::copy_from_slice(&file[HASH..]))
    }

    /// Whether the block is cached (without reading it).
    pub(crate) fn contains(&self, v: &ObjectVersion, block: u64) -> bool {
        self.path(v, block).exists()
    }

    /// Caches a block (nothing when it is already there, or larger than the
    /// bound); trims the cache when it outgrows the bound.
    pub(crate) fn insert(&self, v: &ObjectVersion, block: u64, data: &[u8]) {
        let len = (HASH + data.len()) as u64;
        if len > self.bound {
            return;
        }
        let p = self.path(v, block);
        if p.exists() {
            return;
        }
        if self.write(&p, data).is_err() {
            return;
        }
        let total = self.bytes.fetch_add(len, Ordering::Relaxed) + len;
        if total > self.bound {
            self.evict(self.bound / 4 * 3);
        }
    }

    fn write(&self, p: &Path, data: &[u8]) -> io::Result<()> {
        let parent = p.parent().unwrap_or(&self.dir);
        fs::create_dir_all(parent)?;
        let n = self.tmp.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .dir
            .join(format!("{TMP_PREFIX}{}-{n}", std::process::id()));
        let r = (|| {
            let mut f = fs::File::create(&tmp)?;
            f.write_all(blake3::hash(data).as_bytes())?;
            f.write_all(data)?;
            fs::rename(&tmp, p)
        })();
        if r.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        r
    }

    /// Removes the least recently used files until at most `target` bytes
    /// remain (`u64::MAX`: only past the bound, to three quarters of it),
    /// and recounts. One eviction at a time; others skip it.
    fn evict(&self, target: u64) {
        let Ok(_g) = self.evicting.try_lock() else {
            return;
        };
        let mut files: Vec<(SystemTime, u64, PathBuf)> = Vec::new();
        let Ok(fans) = fs::read_dir(&self.dir) else {
            return;
        };
        for fan in fans.flatten() {
            let Ok(rd) = fs::read_dir(fan.path()) else {
                continue;
            };
            for e in rd.flatten() {
                if let Ok(m) = e.metadata() {
                    let t = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    files.push((t, m.len(), e.path()));
                }
            }
        }
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        let target = if target == u64::MAX {
            if total <= self.bound {
                self.bytes.store(total, Ordering::Relaxed);
                return;
            }
            self.bound / 4 * 3
        } else {
            target
        };
        files.sort();
        for (_, len, p) in files {
            if total <= target {
                break;
            }
            if fs::remove_file(&p).is_ok() {
                total -= len;
            }
        }
        self.bytes.store(total, Ordering::Relaxed);
    }

    /// Bytes of the cache's files (as last counted, plus writes since).
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(key: &str, etag: &str) -> ObjectVersion {
        ObjectVersion {
            key: key.into(),
            etag: etag.into(),
        }
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for fan in fs::read_dir(dir).expect("dir").flatten() {
            if fan.path().is_dir() {
                out.extend(
                    fs::read_dir(fan.path())
                        .expect("fan")
                        .flatten()
                        .map(|e| e.path()),
                );
            }
        }
        out
    }

    #[test]
    fn keeps_blocks_across_opens_bounded_and_checked() {
        let d = tempfile::tempdir().expect("tempdir");
        let a = v("packs/aa/x.pack", "e1");
        {
            let c = DiskCache::open(d.path(), 10_000).expect("open");
            c.insert(&a, 0, &[1u8; 1000]);
            c.insert(&a, 1, &[2u8; 1000]);
            assert!(c.contains(&a, 0));
            assert!(
                c.get(&v("packs/aa/x.pack", "e2"), 0).is_none(),
                "another version"
            );
        }
        // A second process finds them.
        let c = DiskCache::open(d.path(), 10_000).expect("open");
        assert_eq!(c.bytes(), 2 * (1000 + HASH as u64));
        assert_eq!(c.get(&a, 1).as_deref(), Some(&[2u8; 1000][..]));
        // A damaged file is a miss, and goes.
        let p = c.path(&a, 0);
        let mut bytes = fs::read(&p).expect("read");
        bytes[HASH + 10] ^= 1;
        fs::write(&p, &bytes).expect("write");
        assert!(c.get(&a, 0).is_none());
        assert!(!p.exists());
        // Past the bound, the least recently used go first.
        std::thread::sleep(std::time::Duration::from_millis(20));
        for b in 2..12 {
            c.insert(&a, b, &[b as u8; 1000]);
            std::thread::sleep(std::time::Duration::from_millis(5));
            assert!(c.get(&a, 1).is_some(), "block 1 is used all along");
        }
        let on_disk: u64 = files(d.path())
            .iter()
            .map(|p| fs::metadata(p).expect("meta").len())
            .sum();
        assert!(on_disk <= 10_000, "{on_disk} bytes on disk");
        assert!(c.contains(&a, 1) && c.contains(&a, 11), "recent ones stay");
        assert!(!c.contains(&a, 2), "the oldest went");
        // Too large for the bound: not kept.
        c.insert(&a, 99, &[0u8; 20_000]);
        assert!(!c.contains(&a, 99));
    }
}
