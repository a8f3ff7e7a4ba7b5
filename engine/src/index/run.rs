//! The chunk index's sorted run: most chunk entries, in one immutable file
//! of fixed-size records sorted by chunk id, memory-mapped; the database
//! holds only entries written since the run was last rewritten (and
//! tombstones for entries removed from it). See `db` for how the two are
//! combined and how the run is rewritten (compaction).
//!
//! Why: a B-tree database keeps 10 million 85-byte entries in ~3.4× their
//! size on disk and answers random lookups at the speed of its page cache
//! misses (76 k/s measured); a sorted array is exactly the entries' size
//! and a lookup is a binary search over an in-file fence table plus one
//! 64-record block: a few hundred nanoseconds once the pages are cached.
//!
//! File (`index/chunks.run`, a cache like the rest of the index: rebuilt
//! with it; informative, spec §9):
//!
//! ```text
//! records  count × (chunk id 32 ‖ value 53)   sorted by id, unique
//! fences   ceil(count / 64) × chunk id 32     the id of every 64th record
//! footer   count u64 ‖ stride u32 (64) ‖ record size u32 (85)
//!          ‖ magic "TSCRUN01" ‖ BLAKE3 of everything before it 32   (56 bytes)
//! ```
//!
//! The run is published like any sealed file (temp, fsync, rename, fsync
//! of the directory) and never modified; readers holding the old one keep
//! reading it (a mapped file outlives its name).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::CHUNK_VALUE_LEN;
use crate::error::{Error, Result};
use crate::ids::ChunkId;

/// The run's file name inside the index directory.
pub(crate) const RUN_FILE: &str = "chunks.run";
const MAGIC: &[u8; 8] = b"TSCRUN01";
const STRIDE: usize = 64;
pub(crate) const RECORD: usize = 32 + CHUNK_VALUE_LEN;
const FOOTER: usize = 8 + 4 + 4 + 8 + 32;

/// An open run (empty when there is no file).
pub(crate) struct Run {
    bytes: Bytes,
    count: usize,
    fences: usize,
}

fn damaged(path: &Path, detail: impl Into<String>) -> Error {
    Error::IndexDamaged {
        path: path.to_path_buf(),
        detail: format!("chunk run {}: {}", path.display(), detail.into()),
    }
}

impl Run {
    /// No entries.
    pub(crate) fn empty() -> Run {
        Run {
            bytes: Bytes::new(),
            count: 0,
            fences: 0,
        }
    }

    /// Opens the run of index directory `dir` (none: empty), checking its
    /// footer and its checksum.
    pub(crate) fn open(dir: &Path) -> Result<Run> {
        let path = dir.join(RUN_FILE);
        let bytes = match crate::storage::map_sealed_file(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Run::empty()),
            Err(e) => return Err(Error::io("open", path.display().to_string(), e)),
        };
        let len = bytes.len();
        if len < FOOTER {
            return Err(damaged(
                &path,
                format!("{len} bytes, shorter than its footer"),
            ));
        }
        let f = &bytes[len - FOOTER..];
        let u64_at = |b: &[u8]| b.try_into().map(u64::from_le_bytes).unwrap_or(u64::MAX);
        let u32_at = |b: &[u8]| b.try_into().map(u32::from_le_bytes).unwrap_or(u32::MAX);
        let count = u64_at(&f[0..8]);
        let (stride, record) = (u32_at(&f[8..12]), u32_at(&f[12..16]));
        if &f[16..24] != MAGIC || stride as usize != STRIDE || record as usize != RECORD {
            return Err(damaged(
                &path,
                "unknown footer (magic, stride or record size)",
            ));
        }
        let count = usize::try_from(count).unwrap_or(usize::MAX);
        let fences = count.div_ceil(STRIDE);
        let expect = count
            .checked_mul(RECORD)
            .and_then(|r| r.checked_add(fences.checked_mul(32)?))
            .and_then(|r| r.checked_add(FOOTER));
        if expect != Some(len) {
            return Err(damaged(&path, format!("{len} bytes for {count} records")));
        }
        let mut h = blake3::Hasher::new();
        h.update(&bytes[..len - 32]);
        if h.finalize().as_bytes() != &f[24..56] {
            return Err(damaged(&path, "checksum mismatch"));
        }
        Ok(Run {
            bytes,
            count,
            fences,
        })
    }

    /// Number of entries.
    pub(crate) fn len(&self) -> usize {
        self.count
    }

    /// The run's checksum (empty run: none): the database records which
    /// run its entries are layered over.
    pub(crate) fn checksum(&self) -> Option<&[u8]> {
        (self.bytes.len() >= 32).then(|| &self.bytes[self.bytes.len() - 32..])
    }

    /// Deletes the run of `dir` (and a temp file a crash left).
    pub(crate) fn remove(dir: &Path) -> Result<()> {
        for name in [RUN_FILE.to_string(), format!("{RUN_FILE}.tmp")] {
            let p = dir.join(name);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io("remove", p.display().to_string(), e)),
            }
        }
        Ok(())
    }

    fn key(&self, i: usize) -> &[u8] {
        &self.bytes[i * RECORD..i * RECORD + 32]
    }

    fn fence(&self, j: usize) -> &[u8] {
        let base = self.count * RECORD + j * 32;
        &self.bytes[base..base + 32]
    }

    /// The id and value of record `i` (< len).
    pub(crate) fn record(&self, i: usize) -> (&[u8], &[u8]) {
        let r = &self.bytes[i * RECORD..(i + 1) * RECORD];
        (&r[..32], &r[32..])
    }

    /// The value stored for `id`.
    pub(crate) fn get(&self, id: &ChunkId) -> Option<&[u8]> {
        if self.count == 0 {
            return None;
        }
        let key = &id.0[..];
        // The last fence at or below the key: its block holds the key if
        // the run does.
        let (mut lo, mut hi) = (0usize, self.fences);
        while lo < hi {
            let mid = (lo + hi) / 2;
            if self.fence(mid) <= key {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let block = lo.checked_sub(1)?;
        let (mut lo, mut hi) = (block * STRIDE, ((block + 1) * STRIDE).min(self.count));
        while lo < hi {
            let mid = (lo + hi) / 2;
            match self.key(mid).cmp(key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Some(self.record(mid).1),
            }
        }
        None
    }
}

/// Writes a run from entries in strictly increasing id order, durably, as
/// `dir/chunks.run` (replacing the old one atomically). Returns the count.
pub(crate) fn write(
    dir: &Path,
    entries: &mut dyn Iterator<Item = Result<([u8; 32], [u8; CHUNK_VALUE_LEN])>>,
) -> Result<usize> {
    let tmp: PathBuf = dir.join(format!("{RUN_FILE}.tmp"));
    let io_err = |what: &'static str, e: io::Error| Error::io(what, tmp.display().to_string(), e);
    let file = File::create(&tmp).map_err(|e| io_err("create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut h = blake3::Hasher::new();
    let mut fences: Vec<[u8; 32]> = Vec::new();
    let mut count = 0usize;
    let mut last: Option<[u8; 32]> = None;
    for e in entries {
        let (id, value) = e?;
        if last.is_some_and(|l| l >= id) {
            return Err(Error::Bug(format!(
                "chunk run entries out of order at {}",
                hex::encode(id)
            )));
        }
        last = Some(id);
        if count.is_multiple_of(STRIDE) {
            fences.push(id);
        }
        for part in [&id[..], &value[..]] {
            h.update(part);
            out.write_all(part).map_err(|e| io_err("write", e))?;
        }
        count += 1;
    }
    for f in &fences {
        h.update(f);
        out.write_all(f).map_err(|e| io_err("write", e))?;
    }
    let mut footer = Vec::with_capacity(FOOTER);
    footer.extend_from_slice(&(count as u64).to_le_bytes());
    footer.extend_from_slice(&(STRIDE as u32).to_le_bytes());
    footer.extend_from_slice(&(RECORD as u32).to_le_bytes());
    footer.extend_from_slice(MAGIC);
    h.update(&footer);
    footer.extend_from_slice(h.finalize().as_bytes());
    out.write_all(&footer).map_err(|e| io_err("write", e))?;
    let file = out
        .into_inner()
        .map_err(|e| io_err("write", e.into_error()))?;
    file.sync_all().map_err(|e| io_err("fsync", e))?;
    drop(file);
    let path = dir.join(RUN_FILE);
    std::fs::rename(&tmp, &path).map_err(|e| io_err("rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("fsync", dir.display().to_string(), e))?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> [u8; 32] {
        *blake3::hash(&n.to_le_bytes()).as_bytes()
    }

    #[test]
    fn written_runs_answer_every_key_and_no_other() {
        for n in [0usize, 1, 63, 64, 65, 1000] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut keys: Vec<[u8; 32]> = (0..n as u32).map(id).collect();
            keys.sort();
            let mut it = keys.iter().map(|k| {
                let mut v = [0u8; CHUNK_VALUE_LEN];
                v[..32].copy_from_slice(k);
                Ok((*k, v))
            });
            assert_eq!(write(dir.path(), &mut it).expect("write"), n);
            let run = Run::open(dir.path()).expect("open");
            assert_eq!(run.len(), n);
            for k in &keys {
                let v = run.get(&ChunkId(*k)).expect("present");
                assert_eq!(&v[..32], &k[..]);
            }
            for m in 5000..5100u32 {
                assert!(run.get(&ChunkId(id(m))).is_none());
            }
        }
    }

    #[test]
    fn a_damaged_run_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut it = (0..100u32).map(|n| Ok((id(n), [0u8; CHUNK_VALUE_LEN])));
        // Out of order: refused before anything is published.
        assert!(write(dir.path(), &mut it).is_err());
        let mut keys: Vec<[u8; 32]> = (0..100u32).map(id).collect();
        keys.sort();
        let mut it = keys.iter().map(|k| Ok((*k, [7u8; CHUNK_VALUE_LEN])));
        write(dir.path(), &mut it).expect("write");
        let path = dir.path().join(RUN_FILE);
        let mut b = std::fs::read(&path).expect("read");
        b[500] ^= 1;
        std::fs::write(&path, &b).expect("write");
        assert!(matches!(
            Run::open(dir.path()),
            Err(Error::IndexDamaged { .. })
        ));
        std::fs::write(&path, &b[..30]).expect("write");
        assert!(matches!(
            Run::open(dir.path()),
            Err(Error::IndexDamaged { .. })
        ));
    }
}
