//! A store in a local directory: objects are files (`packs/ab/<id>.pack`,
//! …), written temp file → fsync → rename → fsync of the directory, so each
//! is durable and atomic when [`DirStore`] returns. Objects are staged in
//! `tmp/`; directories are created on demand, their parents fsynced before
//! anything is renamed into them. Reads of immutable objects are memory-mapped
//! or use `pread` (see [`super::ReadMode`]).

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::fs::{Fs, RealFs, WriteHandle};
use super::{ObjectStore, PutMode, ReadHandle, ReadMode, StagedObject};

/// Where objects are staged before they are published.
const STAGING: &str = "tmp";
/// Entries of the root that are local state, not objects (see `crate::local`).
const LOCAL_STATE: [&str; 2] = ["lock", "index"];

/// Sequence numbers of staged objects, unique within the process.
static NEXT_STAGED: AtomicU64 = AtomicU64::new(0);

/// The directory backend (see the module docs).
#[derive(Debug)]
pub struct DirStore {
    fs: Arc<dyn Fs>,
}

fn parent(key: &str) -> &str {
    key.rsplit_once('/').map_or("", |(d, _)| d)
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// Names this backend gives staged objects (`<pid>-<n>.tmp`), and the one
/// store creation used before objects were staged (`config.new`).
fn is_staging_name(name: &str) -> bool {
    name == "config.new"
        || name.split_once('-').is_some_and(|(pid, rest)| {
            !pid.is_empty()
                && pid.bytes().all(|b| b.is_ascii_digit())
                && rest
                    .split_once('.')
                    .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        })
}

impl DirStore {
    /// The store in directory `root` on the real filesystem.
    pub fn new(root: impl Into<PathBuf>, mode: ReadMode) -> Self {
        Self::over(Arc::new(RealFs::new(root, mode)))
    }

    /// A directory store over any [`Fs`] (the crash tests use a simulated one).
    pub fn over(fs: Arc<dyn Fs>) -> Self {
        DirStore { fs }
    }

    fn walk(&self, dir: &str, prefix: &str, out: &mut Vec<String>) -> io::Result<()> {
        let names = match self.fs.list_dir(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in names {
            if dir.is_empty() && (name == STAGING || LOCAL_STATE.contains(&name.as_str())) {
                continue;
            }
            let rel = join(dir, &name);
            if self.fs.is_dir(&rel)? {
                if prefix.starts_with(&format!("{rel}/")) || rel.starts_with(prefix) {
                    self.walk(&rel, prefix, out)?;
                }
            } else if rel.starts_with(prefix) {
                out.push(rel);
            }
        }
        Ok(())
    }
}

/// Creates `dir` and any missing ancestors, each made durable in its parent
/// before anything goes into it.
fn ensure_dir(fs: &dyn Fs, dir: &str) -> io::Result<()> {
    if fs.is_dir(dir)? {
        return Ok(());
    }
    if dir.is_empty() {
        return fs.create_dir_all("");
    }
    let up = parent(dir);
    ensure_dir(fs, up)?;
    fs.create_dir_all(dir).map_err(|e| match e.kind() {
        // Something other than a directory is in the way: not an object
        // that exists (which a create-only publish would take as won).
        io::ErrorKind::AlreadyExists => {
            io::Error::other(format!("{dir} exists and is not a directory: {e}"))
        }
        _ => e,
    })?;
    fs.sync_dir(up)
}

/// An object being written to a temp file in `tmp/`. Dropped unpublished
/// (an error while writing or publishing it: a full disk, a refused
/// upload), its temp file is removed at once: a process that runs for weeks
/// must not keep every failed write's bytes until its next open.
struct Staged {
    fs: Arc<dyn Fs>,
    /// The temp file, until it is published (or removed).
    tmp: Option<String>,
    handle: Option<Box<dyn WriteHandle>>,
}

impl Drop for Staged {
    fn drop(&mut self) {
        drop(self.handle.take());
        if let Some(tmp) = self.tmp.take() {
            // Best effort: what is left is discarded by the next open.
            let _ = self.fs.remove_file(&tmp);
        }
    }
}

impl StagedObject for Staged {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self.handle.as_mut() {
            Some(h) => h.write_all(buf),
            None => Err(io::Error::other("the staged object was published")),
        }
    }

    fn publish(mut self: Box<Self>, key: &str, mode: PutMode) -> io::Result<()> {
        if let Some(mut h) = self.handle.take() {
            h.sync()?;
        }
        let fs = self.fs.clone();
        let Some(tmp) = self.tmp.clone() else {
            return Err(io::Error::other("the staged object was published"));
        };
        let dir = parent(key);
        ensure_dir(fs.as_ref(), dir)?;
        match mode {
            PutMode::Replace => {
                fs.rename(&tmp, key)?;
                self.tmp = None;
            }
            // A hard link never replaces: of two publishers of one new key,
            // exactly one wins, atomically. The staged name goes either way
            // (if its removal is lost in a crash, the next open discards it).
            PutMode::Create => {
                let linked = fs.hard_link(&tmp, key);
                self.tmp = None;
                fs.remove_file(&tmp)?;
                linked?;
            }
        }
        fs.sync_dir(dir)
    }
}

impl ObjectStore for DirStore {
    fn location(&self) -> String {
        self.fs.root().display().to_string()
    }

    fn describe(&self, key: &str) -> String {
        self.fs.root().join(key).display().to_string()
    }

    fn stage(&self) -> io::Result<Box<dyn StagedObject>> {
        ensure_dir(self.fs.as_ref(), STAGING)?;
        loop {
            // A name left by an earlier process with the same pid (not yet
            // discarded) is skipped.
            let tmp = format!(
                "{STAGING}/{}-{}.tmp",
                std::process::id(),
                NEXT_STAGED.fetch_add(1, Ordering::Relaxed)
            );
            match self.fs.create_new(&tmp) {
                Ok(handle) => {
                    return Ok(Box::new(Staged {
                        fs: self.fs.clone(),
                        tmp: Some(tmp),
                        handle: Some(handle),
                    }))
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn get(&self, key: &str) -> io::Result<Vec<u8>> {
        self.fs.read(key)
    }

    fn open(&self, key: &str) -> io::Result<Arc<dyn ReadHandle>> {
        self.fs.open_read(key)
    }

    fn list(&self, prefix: &str) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        self.walk("", prefix, &mut out)?;
        out.sort();
        Ok(out)
    }

    fn exists(&self, key: &str) -> io::Result<bool> {
        self.fs.exists(key)
    }

    fn delete(&self, key: &str) -> io::Result<()> {
        self.fs.remove_file(key)?;
        self.fs.sync_dir(parent(key))
    }

    fn tree_stamp(&self, prefix: &str) -> io::Result<Option<[u8; 32]>> {
        let fs = self.fs.as_ref();
        let mut h = blake3::Hasher::new();
        let mut add = |name: &str, stamp: Option<u128>| {
            h.update(name.as_bytes());
            h.update(&[0]);
            match stamp {
                Some(t) => h.update(&[1]).update(&t.to_le_bytes()),
                None => h.update(&[0]),
            };
        };
        let dir = prefix.trim_end_matches('/');
        add(dir, fs.dir_stamp(dir)?);
        let names = match fs.list_dir(dir) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        for name in names {
            let rel = join(dir, &name);
            add(&rel, fs.dir_stamp(&rel)?);
        }
        Ok(Some(*h.finalize().as_bytes()))
    }

    fn discard_staged(&self) -> io::Result<()> {
        let names = match self.fs.list_dir(STAGING) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for name in names {
            self.fs.remove_file(&join(STAGING, &name))?;
        }
        Ok(())
    }

    fn foreign(&self) -> io::Result<Option<String>> {
        let names = match self.fs.list_dir("") {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
                return Ok(Some("it is not a directory".into()))
            }
            Err(e) => return Err(e),
        };
        for name in names {
            match name.as_str() {
                n if LOCAL_STATE.contains(&n) => {}
                crate::paths::CONFIG | crate::paths::DIRTY | crate::paths::CLEAN => {}
                "packs" | "recipes" | "refs" => {
                    if !self.fs.is_dir(&name)? {
                        return Ok(Some(format!("{name} is not a directory")));
                    }
                    for fan in self.fs.list_dir(&name)? {
                        let is_fan = fan.len() == 2 && fan.bytes().all(|b| b.is_ascii_hexdigit());
                        if !is_fan || !self.fs.is_dir(&join(&name, &fan))? {
                            return Ok(Some(format!("it holds {name}/{fan}")));
                        }
                    }
                }
                STAGING => {
                    for n in self.fs.list_dir(STAGING)? {
                        if !is_staging_name(&n) {
                            return Ok(Some(format!("{STAGING}/ holds {n:?}")));
                        }
                    }
                }
                other => return Ok(Some(format!("it holds {other:?}"))),
            }
        }
        Ok(None)
    }

    fn check_index_write(&self) -> io::Result<()> {
        self.fs.check_index_write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged_names(s: &DirStore) -> Vec<String> {
        match s.fs.list_dir(STAGING) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => panic!("list {STAGING}: {e}"),
        }
    }

    /// A staged object that is dropped, or whose publish fails, leaves no
    /// temp file behind (a long-running server would keep them all).
    #[test]
    fn unpublished_objects_leave_no_temp_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DirStore::new(dir.path().join("store"), ReadMode::Pread);
        let mut o = s.stage().expect("stage");
        o.write_all(&[1; 1000]).expect("write");
        assert_eq!(staged_names(&s).len(), 1);
        drop(o);
        assert_eq!(staged_names(&s), Vec::<String>::new(), "dropped");

        // A publish that fails: its directory cannot be made (a file is
        // in the way).
        s.put("packs/x", b"a file", PutMode::Create).expect("put");
        for mode in [PutMode::Create, PutMode::Replace] {
            let mut o = s.stage().expect("stage");
            o.write_all(&[2; 1000]).expect("write");
            let e = o
                .publish("packs/x/y.pack", mode)
                .expect_err("not a directory");
            // Not taken for a create-only publish that lost to another.
            assert_ne!(e.kind(), io::ErrorKind::AlreadyExists, "{e}");
            assert_eq!(staged_names(&s), Vec::<String>::new(), "{mode:?}: {e}");
        }

        // A create-only publish that loses, and one that wins: nothing left.
        for (i, want) in [(0u8, true), (1, false)] {
            let mut o = s.stage().expect("stage");
            o.write_all(&[i; 10]).expect("write");
            assert_eq!(o.publish("packs/00/a.pack", PutMode::Create).is_ok(), want);
            assert_eq!(staged_names(&s), Vec::<String>::new());
        }
        assert_eq!(s.get("packs/00/a.pack").expect("get"), [0; 10]);
        let mut o = s.stage().expect("stage");
        o.write_all(b"new").expect("write");
        o.publish("packs/00/a.pack", PutMode::Replace)
            .expect("replace");
        assert_eq!(staged_names(&s), Vec::<String>::new());
        assert_eq!(s.get("packs/00/a.pack").expect("get"), b"new");
    }

    /// Two threads publishing the same new key create-only: exactly one
    /// wins, every round, and the object is the winner's whole.
    #[test]
    fn concurrent_create_only_publishes_have_one_winner() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = std::sync::Arc::new(DirStore::new(dir.path().join("store"), ReadMode::Pread));
        for round in 0..50 {
            let key = format!("packs/00/{round}.pack");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2u8)
                .map(|t| {
                    let (s, key, barrier) = (s.clone(), key.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        let mut o = s.stage().expect("stage");
                        o.write_all(&[t; 4096]).expect("write");
                        barrier.wait();
                        (t, o.publish(&key, PutMode::Create))
                    })
                })
                .collect();
            let results: Vec<(u8, io::Result<()>)> = threads
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            let winners: Vec<u8> = results
                .iter()
                .filter(|(_, r)| r.is_ok())
                .map(|(t, _)| *t)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            for (_, r) in &results {
                if let Err(e) = r {
                    assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
                }
            }
            assert_eq!(s.get(&key).expect("get"), vec![winners[0]; 4096]);
        }
    }

    #[test]
    fn objects_round_trip_and_list_by_prefix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = DirStore::new(dir.path().join("store"), ReadMode::Pread);
        assert_eq!(s.foreign().expect("foreign"), None);
        s.put("packs/ab/x.pack", b"pack", PutMode::Create)
            .expect("put");
        s.put("refs/00/r.ref", b"ref1", PutMode::Create)
            .expect("put");
        let e = s
            .put("refs/00/r.ref", b"ref2", PutMode::Create)
            .expect_err("create-only");
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        s.put("refs/00/r.ref", b"ref2", PutMode::Replace)
            .expect("replace");
        assert_eq!(s.get("refs/00/r.ref").expect("get"), b"ref2");
        assert_eq!(
            s.list("").expect("list"),
            ["packs/ab/x.pack", "refs/00/r.ref"]
        );
        assert_eq!(s.list("packs/").expect("list"), ["packs/ab/x.pack"]);
        assert_eq!(s.list("refs/00/r").expect("list"), ["refs/00/r.ref"]);
        let h = s.open("packs/ab/x.pack").expect("open");
        assert_eq!(&h.read_at(1, 2).expect("read")[..], b"ac");
        s.delete("refs/00/r.ref").expect("delete");
        assert!(!s.exists("refs/00/r.ref").expect("exists"));
        // What a crash left staged is discarded.
        std::fs::write(dir.path().join("store/tmp/1-1.tmp"), b"partial").expect("leftover");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .expect("tmp")
                .count(),
            1
        );
        s.discard_staged().expect("discard");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/tmp"))
                .expect("tmp")
                .count(),
            0
        );
        std::fs::write(dir.path().join("store/notes.txt"), b"mine").expect("write");
        assert!(s
            .foreign()
            .expect("foreign")
            .is_some_and(|d| d.contains("notes.txt")));
    }
}
