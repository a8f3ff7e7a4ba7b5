//! A crash-simulating, fault-injecting [`Storage`] for tests.
//!
//! [`FaultStorage`] keeps the whole store (packs, recipes, refs, config, temp
//! files) in memory, as a model of a POSIX filesystem with a page cache:
//!
//! * Every file (inode) has a *live* content — what reads see — and a
//!   *durable* length: the content as of the last successful
//!   [`WriteHandle::sync`] on a handle of that file. Files are only ever
//!   created empty and appended to (that is all the [`Storage`] trait allows),
//!   so the durable content is always a prefix of the live content.
//! * Every directory has a *live* and a *durable* set of entries
//!   (name → inode). `create_new`, `rename`, `remove_file` and
//!   `create_dir_all` change live entries only; [`Storage::sync_dir`] makes a
//!   directory's live entries durable (only that directory's: a rename
//!   between two directories needs both synced to be durable on both sides).
//!   Directories are entries of their parent like files, so a directory
//!   created by `create_dir_all` survives a crash only once its parent has
//!   been synced. (The store pre-creates all its directories when it is
//!   created and syncs their parents, so this is stricter than needed, never
//!   looser.)
//!
//! [`FaultStorage::crash`] returns what a power loss would leave: a fresh
//! storage whose live state is this one's durable state. Unsynced writes and
//! renames, unlinks or creations not followed by a sync of their directory
//! are lost. [`FaultStorage::crash_with`] offers two other images: a power
//! loss after which an arbitrary part of the unsynced changes did reach the
//! disk ([`CrashMode::PowerLossPartial`]), and the death of the process only,
//! where the kernel keeps everything ([`CrashMode::ProcessKill`]).
//!
//! Fault injection: every mutating operation (see [`OpKind`]) increments a
//! shared counter. A [`Fault`] fails the n-th operation (of one kind or of
//! any kind) from the moment it is set, optionally failing every later
//! operation too, as if the process had died at that instant. A failed
//! operation returns an [`io::Error`] and changes nothing (a failed write
//! appends no prefix; a failed sync makes nothing durable). Reads
//! (`read`, `open_read`, `list_dir`, `exists`) are not counted and never
//! fail by injection.
//!
//! The store root passed to [`FaultStorage::new`] is only used for messages
//! and by the store itself for what lives outside the [`Storage`] trait: the
//! sled index (`root/index`) and the `lock` file are on the real filesystem,
//! so the root should be a real (temporary) directory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use crate::storage::{BytesFile, ReadHandle, Storage, WriteHandle};

/// The kinds of counted (mutating) operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// [`Storage::create_dir_all`] (one operation per call).
    CreateDir,
    /// [`Storage::create_new`].
    Create,
    /// [`WriteHandle::write_all`].
    Write,
    /// [`WriteHandle::sync`].
    Sync,
    /// [`Storage::rename`].
    Rename,
    /// [`Storage::sync_dir`].
    SyncDir,
    /// [`Storage::remove_file`].
    Remove,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 7] = [
        OpKind::CreateDir,
        OpKind::Create,
        OpKind::Write,
        OpKind::Sync,
        OpKind::Rename,
        OpKind::SyncDir,
        OpKind::Remove,
    ];
}

/// Which operation to fail.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The kind of operations counted toward `nth` (`None`: every kind).
    pub kind: Option<OpKind>,
    /// Fail the `nth` matching operation from when the fault is set (1: the
    /// next one). 0 behaves like 1.
    pub nth: u64,
    /// After the failure, fail every later operation too (the process died).
    pub sticky: bool,
}

/// What a crash leaves behind (see [`FaultStorage::crash_with`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Power loss: exactly the durable state survives.
    PowerLoss,
    /// Power loss after which some of the unsynced state reached the disk
    /// anyway, chosen by a PRNG seeded with the value: for every directory
    /// entry whose live and durable values differ, either one (independently
    /// per name); for every file, a prefix of its live content at least as
    /// long as its durable content, sometimes followed by zeros up to at most
    /// its live length (unwritten blocks of an extended file).
    PowerLossPartial(u64),
    /// Only the process died: the kernel keeps everything, synced or not.
    ProcessKill,
}

/// One counted operation, for the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpRecord {
    /// 1-based position among all counted operations of this storage.
    pub seq: u64,
    /// The kind.
    pub kind: OpKind,
    /// The path (for renames, `from -> to`; for writes, the file and length).
    pub what: String,
    /// Whether it failed (by injection or because of its arguments).
    pub failed: bool,
}

const ROOT: u64 = 0;

#[derive(Clone, Debug)]
enum Node {
    /// Append-only content; the first `durable` bytes are durable.
    File { data: Vec<u8>, durable: usize },
    Dir {
        live: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
}

#[derive(Debug, Default)]
struct State {
    nodes: HashMap<u64, Node>,
    next_inode: u64,
    ops: u64,
    by_kind: BTreeMap<OpKind, u64>,
    fault: Option<Fault>,
    /// Matching operations still to pass before the fault fires.
    countdown: u64,
    dead: bool,
    failures: u64,
    log: Option<Vec<OpRecord>>,
}

fn not_found(rel: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{rel}: no such file or directory"),
    )
}

fn components(rel: &str) -> impl Iterator<Item = &str> {
    rel.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn split_parent(rel: &str) -> io::Result<(String, String)> {
    let parts: Vec<&str> = components(rel).collect();
    match parts.split_last() {
        Some((name, dirs)) => Ok((dirs.join("/"), (*name).to_string())),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{rel:?}: not a file path"),
        )),
    }
}

impl State {
    fn new() -> Self {
        let mut nodes = HashMap::new();
        nodes.insert(
            ROOT,
            Node::Dir {
                live: BTreeMap::new(),
                durable: BTreeMap::new(),
            },
        );
        State {
            nodes,
            next_inode: ROOT + 1,
            ..Default::default()
        }
    }

    /// Counts an operation and decides whether the fault fires.
    /// One storage operation: counted (and maybe failed) by `begin`, then
    /// run; an operation that fails on its own also marks the state failed.
    fn op<T>(
        &mut self,
        kind: OpKind,
        what: impl FnOnce() -> String,
        run: impl FnOnce(&mut Self) -> io::Result<T>,
    ) -> io::Result<T> {
        self.begin(kind, what)?;
        let r = run(self);
        if r.is_err() {
            self.mark_failed();
        }
        r
    }

    fn begin(&mut self, kind: OpKind, what: impl FnOnce() -> String) -> io::Result<u64> {
        self.ops += 1;
        *self.by_kind.entry(kind).or_default() += 1;
        let seq = self.ops;
        let mut fail = self.dead;
        if !fail {
            if let Some(f) = self.fault {
                if f.kind.is_none_or(|k| k == kind) {
                    self.countdown = self.countdown.saturating_sub(1);
                    if self.countdown == 0 {
                        fail = true;
                        self.fault = None;
                        self.dead = f.sticky;
                    }
                }
            }
        }
        if fail {
            self.failures += 1;
        }
        if fail || self.log.is_some() {
            let w = what();
            if let Some(log) = &mut self.log {
                log.push(OpRecord {
                    seq,
                    kind,
                    what: w.clone(),
                    failed: fail,
                });
            }
            if fail {
                return Err(io::Error::other(format!(
                    "injected fault: {kind:?} #{seq} ({w}) failed"
                )));
            }
        }
        Ok(seq)
    }

    fn mark_failed(&mut self) {
        if let Some(r) = self.log.as_mut().and_then(|l| l.last_mut()) {
            r.failed = true;
        }
    }

    fn new_inode(&mut self, node: Node) -> u64 {
        let ino = self.next_inode;
        self.next_inode += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// Resolves a path through live entries.
    fn lookup(&self, rel: &str) -> Option<u64> {
        let mut cur = ROOT;
        for c in components(rel) {
            match self.nodes.get(&cur)? {
                Node::Dir { live, .. } => cur = *live.get(c)?,
                Node::File { .. } => return None,
            }
        }
        Some(cur)
    }

    fn dir(&self, rel: &str) -> io::Result<u64> {
        let ino = self.lookup(rel).ok_or_else(|| not_found(rel))?;
        match self.nodes.get(&ino) {
            Some(Node::Dir { .. }) => Ok(ino),
            _ => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{rel}: not a directory"),
            )),
        }
    }

    fn file(&self, rel: &str) -> io::Result<u64> {
        let ino = self.lookup(rel).ok_or_else(|| not_found(rel))?;
        match self.nodes.get(&ino) {
            Some(Node::File { .. }) => Ok(ino),
            _ => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{rel}: is a directory"),
            )),
        }
    }

    fn live_entries(&mut self, dir: u64) -> &mut BTreeMap<String, u64> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { live, .. }) => live,
            _ => unreachable!("checked to be a directory"),
        }
    }

    fn create_dir_all(&mut self, rel: &str) -> io::Result<()> {
        let mut cur = ROOT;
        let mut path = String::new();
        for c in components(rel) {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(c);
            let existing = match self.nodes.get(&cur) {
                Some(Node::Dir { live, .. }) => live.get(c).copied(),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::NotADirectory,
                        format!("{path}: not a directory"),
                    ))
                }
            };
            cur = match existing {
                Some(ino) => ino,
                None => {
                    let ino = self.new_inode(Node::Dir {
                        live: BTreeMap::new(),
                        durable: BTreeMap::new(),
                    });
                    self.live_entries(cur).insert(c.to_string(), ino);
                    ino
                }
            };
        }
        match self.nodes.get(&cur) {
            Some(Node::Dir { .. }) => Ok(()),
            _ => Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{rel}: exists and is not a directory"),
            )),
        }
    }

    fn create_new(&mut self, rel: &str) -> io::Result<u64> {
        let (dir, name) = split_parent(rel)?;
        let d = self.dir(&dir)?;
        if self.live_entries(d).contains_key(&name) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{rel}: file exists"),
            ));
        }
        let ino = self.new_inode(Node::File {
            data: Vec::new(),
            durable: 0,
        });
        self.live_entries(d).insert(name, ino);
        Ok(ino)
    }

    fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
        let ino = self.file(from)?;
        let (fdir, fname) = split_parent(from)?;
        let (tdir, tname) = split_parent(to)?;
        let fd = self.dir(&fdir)?;
        let td = self.dir(&tdir)?;
        if let Some(existing) = self.live_entries(td).get(&tname).copied() {
            if matches!(self.nodes.get(&existing), Some(Node::Dir { .. })) {
                return Err(io::Error::new(
                    io::ErrorKind::IsADirectory,
                    format!("{to}: is a directory"),
                ));
            }
        }
        self.live_entries(fd).remove(&fname);
        self.live_entries(td).insert(tname, ino);
        Ok(())
    }

    fn remove_file(&mut self, rel: &str) -> io::Result<()> {
        self.file(rel)?;
        let (dir, name) = split_parent(rel)?;
        let d = self.dir(&dir)?;
        self.live_entries(d).remove(&name);
        Ok(())
    }

    fn sync_dir(&mut self, rel: &str) -> io::Result<()> {
        let d = self.dir(rel)?;
        if let Some(Node::Dir { live, durable }) = self.nodes.get_mut(&d) {
            *durable = live.clone();
        }
        Ok(())
    }
}

/// Which content of a file survives a crash.
fn surviving_content(data: &[u8], durable: usize, mode: CrashMode, rng: &mut u64) -> Vec<u8> {
    match mode {
        CrashMode::PowerLoss => data[..durable].to_vec(),
        CrashMode::ProcessKill => data.to_vec(),
        CrashMode::PowerLossPartial(_) => {
            let extra = data.len() - durable;
            if extra == 0 {
                return data.to_vec();
            }
            match next(rng) % 3 {
                0 => data[..durable].to_vec(),
                1 => data.to_vec(),
                _ => {
                    let keep = durable + (next(rng) % (extra as u64 + 1)) as usize;
                    let mut out = data[..keep].to_vec();
                    if next(rng).is_multiple_of(4) {
                        let zeros = (next(rng) % ((data.len() - keep) as u64 + 1)) as usize;
                        out.resize(keep + zeros, 0);
                    }
                    out
                }
            }
        }
    }
}

/// splitmix64.
fn next(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The in-memory, crash-simulating storage. Clones share the same state, so
/// a test can keep one while a store uses another.
#[derive(Clone)]
pub struct FaultStorage {
    root: PathBuf,
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for FaultStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FaultStorage")
            .field("root", &self.root)
            .field("nodes", &s.nodes.len())
            .field("ops", &s.ops)
            .field("failures", &s.failures)
            .field("dead", &s.dead)
            .finish()
    }
}

impl FaultStorage {
    /// An empty storage (only the root directory exists) for a store at
    /// `root` (a real directory: the sled index and the lock file go there).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        FaultStorage {
            root: root.into(),
            state: Arc::new(Mutex::new(State::new())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the fault to inject (replacing any pending one). Does not revive
    /// a storage whose sticky fault already fired (see [`Self::revive`]).
    pub fn inject(&self, fault: Fault) {
        let mut s = self.lock();
        s.countdown = fault.nth.max(1);
        s.fault = Some(fault);
    }

    /// Removes a pending fault.
    pub fn clear_fault(&self) {
        self.lock().fault = None;
    }

    /// Whether a fault is set and has not fired yet.
    pub fn fault_pending(&self) -> bool {
        self.lock().fault.is_some()
    }

    /// Fails every operation from now on (the process died).
    pub fn kill(&self) {
        self.lock().dead = true;
    }

    /// Lets operations succeed again after a sticky fault or [`Self::kill`].
    pub fn revive(&self) {
        self.lock().dead = false;
    }

    /// Whether every operation now fails.
    pub fn is_dead(&self) -> bool {
        self.lock().dead
    }

    /// Number of operations that failed by injection.
    pub fn failures(&self) -> u64 {
        self.lock().failures
    }

    /// Number of counted operations so far (failed ones included).
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Number of counted operations of one kind so far.
    pub fn ops_of(&self, kind: OpKind) -> u64 {
        self.lock().by_kind.get(&kind).copied().unwrap_or(0)
    }

    /// Starts (or restarts, clearing it) the operation log.
    pub fn start_log(&self) {
        self.lock().log = Some(Vec::new());
    }

    /// The operations logged since [`Self::start_log`].
    pub fn log(&self) -> Vec<OpRecord> {
        self.lock().log.clone().unwrap_or_default()
    }

    /// What a power loss would leave now (see [`CrashMode::PowerLoss`]).
    pub fn crash(&self) -> FaultStorage {
        self.crash_with(CrashMode::PowerLoss)
    }

    /// What a crash of the given kind would leave now: a fresh storage (same
    /// root, no fault, counters at zero) in which everything is durable.
    pub fn crash_with(&self, mode: CrashMode) -> FaultStorage {
        let s = self.lock();
        let mut rng = match mode {
            CrashMode::PowerLossPartial(seed) => seed,
            _ => 0,
        };
        let mut out = State::new();
        // Old inode -> new inode, so names sharing an inode keep sharing it.
        let mut mapped: HashMap<u64, u64> = HashMap::new();
        mapped.insert(ROOT, ROOT);
        let mut queue = vec![ROOT];
        while let Some(old_dir) = queue.pop() {
            let Some(Node::Dir { live, durable }) = s.nodes.get(&old_dir) else {
                continue;
            };
            let names: BTreeSet<&String> = live.keys().chain(durable.keys()).collect();
            let mut entries = BTreeMap::new();
            for name in names {
                let (l, d) = (live.get(name), durable.get(name));
                let pick = match mode {
                    CrashMode::PowerLoss => d,
                    CrashMode::ProcessKill => l,
                    CrashMode::PowerLossPartial(_) => {
                        if l == d || next(&mut rng).is_multiple_of(2) {
                            d
                        } else {
                            l
                        }
                    }
                };
                let Some(&old) = pick else { continue };
                let new = match mapped.get(&old) {
                    Some(&n) => n,
                    None => {
                        let node = match s.nodes.get(&old) {
                            Some(Node::File { data, durable }) => {
                                let data = surviving_content(data, *durable, mode, &mut rng);
                                let durable = data.len();
                                Node::File { data, durable }
                            }
                            Some(Node::Dir { .. }) => {
                                queue.push(old);
                                Node::Dir {
                                    live: BTreeMap::new(),
                                    durable: BTreeMap::new(),
                                }
                            }
                            None => continue,
                        };
                        let n = out.new_inode(node);
                        mapped.insert(old, n);
                        n
                    }
                };
                entries.insert(name.clone(), new);
            }
            let new_dir = mapped[&old_dir];
            out.nodes.insert(
                new_dir,
                Node::Dir {
                    live: entries.clone(),
                    durable: entries,
                },
            );
        }
        FaultStorage {
            root: self.root.clone(),
            state: Arc::new(Mutex::new(out)),
        }
    }

    /// Every live file with its live and durable lengths (for messages).
    pub fn dump(&self) -> Vec<(String, usize, usize)> {
        let s = self.lock();
        let mut out = Vec::new();
        let mut stack = vec![(String::new(), ROOT)];
        while let Some((path, ino)) = stack.pop() {
            match s.nodes.get(&ino) {
                Some(Node::Dir { live, .. }) => {
                    for (name, child) in live {
                        let p = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}/{name}")
                        };
                        stack.push((p, *child));
                    }
                }
                Some(Node::File { data, durable }) => out.push((path, data.len(), *durable)),
                None => {}
            }
        }
        out.sort();
        out
    }
}

struct FaultWriter {
    state: Arc<Mutex<State>>,
    ino: u64,
    rel: String,
}

impl FaultWriter {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl WriteHandle for FaultWriter {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let (ino, rel) = (self.ino, &self.rel);
        self.lock().op(
            OpKind::Write,
            || format!("{rel} +{}", buf.len()),
            |s| match s.nodes.get_mut(&ino) {
                Some(Node::File { data, .. }) => {
                    data.extend_from_slice(buf);
                    Ok(())
                }
                _ => Err(not_found(rel)),
            },
        )
    }

    fn sync(&mut self) -> io::Result<()> {
        let (ino, rel) = (self.ino, &self.rel);
        self.lock().op(
            OpKind::Sync,
            || rel.clone(),
            |s| match s.nodes.get_mut(&ino) {
                Some(Node::File { data, durable }) => {
                    *durable = data.len();
                    Ok(())
                }
                _ => Err(not_found(rel)),
            },
        )
    }
}

impl Storage for FaultStorage {
    fn root(&self) -> &Path {
        &self.root
    }

    fn create_dir_all(&self, rel: &str) -> io::Result<()> {
        self.lock().op(
            OpKind::CreateDir,
            || rel.to_string(),
            |s| s.create_dir_all(rel),
        )
    }

    fn create_new(&self, rel: &str) -> io::Result<Box<dyn WriteHandle>> {
        let ino = self
            .lock()
            .op(OpKind::Create, || rel.to_string(), |s| s.create_new(rel))?;
        Ok(Box::new(FaultWriter {
            state: self.state.clone(),
            ino,
            rel: rel.to_string(),
        }))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.lock().op(
            OpKind::Rename,
            || format!("{from} -> {to}"),
            |s| s.rename(from, to),
        )
    }

    fn sync_dir(&self, rel: &str) -> io::Result<()> {
        self.lock()
            .op(OpKind::SyncDir, || rel.to_string(), |s| s.sync_dir(rel))
    }

    fn remove_file(&self, rel: &str) -> io::Result<()> {
        self.lock()
            .op(OpKind::Remove, || rel.to_string(), |s| s.remove_file(rel))
    }

    fn read(&self, rel: &str) -> io::Result<Vec<u8>> {
        let s = self.lock();
        let ino = s.file(rel)?;
        match s.nodes.get(&ino) {
            Some(Node::File { data, .. }) => Ok(data.clone()),
            _ => Err(not_found(rel)),
        }
    }

    fn open_read(&self, rel: &str) -> io::Result<Arc<dyn ReadHandle>> {
        let s = self.lock();
        let ino = s.file(rel)?;
        match s.nodes.get(&ino) {
            // A snapshot: the store only opens sealed (immutable) files.
            Some(Node::File { data, .. }) => Ok(Arc::new(BytesFile(Bytes::from(data.clone())))),
            _ => Err(not_found(rel)),
        }
    }

    fn list_dir(&self, rel: &str) -> io::Result<Vec<String>> {
        let s = self.lock();
        let d = s.dir(rel)?;
        match s.nodes.get(&d) {
            Some(Node::Dir { live, .. }) => Ok(live.keys().cloned().collect()),
            Some(_) => Err(io::Error::from(io::ErrorKind::NotADirectory)),
            None => Err(not_found(rel)),
        }
    }

    fn exists(&self, rel: &str) -> io::Result<bool> {
        Ok(self.lock().lookup(rel).is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(fs: &FaultStorage, rel: &str, data: &[u8], sync: bool) {
        let mut h = fs.create_new(rel).unwrap();
        h.write_all(data).unwrap();
        if sync {
            h.sync().unwrap();
        }
    }

    #[test]
    fn power_loss_keeps_only_synced_data_and_entries() {
        let fs = FaultStorage::new("/nonexistent");
        fs.create_dir_all("a/b").unwrap();
        fs.create_dir_all("tmp").unwrap();
        fs.sync_dir("").unwrap();
        fs.sync_dir("a").unwrap();
        // Synced file, renamed, directory synced: survives whole.
        write(&fs, "tmp/x", b"hello", true);
        fs.rename("tmp/x", "a/b/x").unwrap();
        fs.sync_dir("a/b").unwrap();
        // Entry synced, data not: an empty file survives.
        write(&fs, "a/b/z", b"unsynced", false);
        let mut h = fs.create_new("a/b/w").unwrap();
        h.write_all(b"w").unwrap();
        h.sync().unwrap();
        drop(h);
        fs.sync_dir("a/b").unwrap();
        // Synced file whose rename is not synced: the rename is lost, and
        // the temp directory entry was never durable either.
        write(&fs, "tmp/y", b"world", true);
        fs.rename("tmp/y", "a/b/y").unwrap();
        // Unlinked without a directory sync: still there after the crash.
        fs.remove_file("a/b/w").unwrap();
        // Directory created but its parent not synced: lost.
        fs.create_dir_all("a/c").unwrap();

        let c = fs.crash();
        assert_eq!(c.read("a/b/x").unwrap(), b"hello");
        assert_eq!(c.read("a/b/z").unwrap(), b"");
        assert_eq!(c.read("a/b/w").unwrap(), b"w");
        assert!(!c.exists("a/b/y").unwrap());
        assert_eq!(c.list_dir("tmp").unwrap(), Vec::<String>::new());
        assert!(!c.exists("a/c").unwrap());
        assert_eq!(c.list_dir("a").unwrap(), vec!["b".to_string()]);

        let k = fs.crash_with(CrashMode::ProcessKill);
        assert_eq!(k.read("a/b/y").unwrap(), b"world");
        assert_eq!(k.read("a/b/z").unwrap(), b"unsynced");
        assert!(!k.exists("a/b/w").unwrap());
        assert!(k.exists("a/c").unwrap());
        // A crash image is entirely durable.
        let kk = k.crash();
        assert_eq!(kk.dump(), k.dump());
    }

    #[test]
    fn partial_power_loss_lies_between_durable_and_live() {
        let fs = FaultStorage::new("/nonexistent");
        fs.create_dir_all("d").unwrap();
        fs.sync_dir("").unwrap();
        let data: Vec<u8> = (0..200u8).collect();
        let mut h = fs.create_new("d/f").unwrap();
        h.write_all(&data[..50]).unwrap();
        h.sync().unwrap();
        h.write_all(&data[50..]).unwrap();
        fs.sync_dir("d").unwrap();
        let mut seen = BTreeSet::new();
        for seed in 0..200 {
            let c = fs.crash_with(CrashMode::PowerLossPartial(seed));
            let got = c.read("d/f").unwrap();
            assert!(got.len() >= 50 && got.len() <= 200);
            let k = got.iter().zip(&data).take_while(|(a, b)| a == b).count();
            assert!(k >= 50);
            assert!(got[k..].iter().all(|&b| b == 0));
            seen.insert(got.len());
        }
        assert!(seen.len() > 10, "{seen:?}");
    }

    #[test]
    fn faults_fire_once_or_stick_and_change_nothing() {
        let fs = FaultStorage::new("/nonexistent");
        fs.create_dir_all("d").unwrap();
        fs.inject(Fault {
            kind: Some(OpKind::Rename),
            nth: 2,
            sticky: false,
        });
        write(&fs, "d/a", b"a", true);
        fs.rename("d/a", "d/b").unwrap();
        write(&fs, "d/c", b"c", true);
        assert!(fs.rename("d/c", "d/e").is_err());
        assert!(fs.exists("d/c").unwrap() && !fs.exists("d/e").unwrap());
        fs.rename("d/c", "d/e").unwrap();
        assert_eq!(fs.failures(), 1);

        fs.inject(Fault {
            kind: None,
            nth: 3,
            sticky: true,
        });
        let mut h = fs.create_new("d/f").unwrap();
        h.write_all(b"12").unwrap();
        assert!(h.write_all(b"34").is_err());
        assert!(h.sync().is_err());
        assert!(fs.sync_dir("d").is_err());
        assert!(fs.is_dead());
        assert_eq!(fs.read("d/f").unwrap(), b"12");
        fs.revive();
        fs.sync_dir("d").unwrap();
        assert_eq!(fs.failures(), 4);
    }
}
