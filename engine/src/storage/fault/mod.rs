//! A crash-simulating, fault-injecting filesystem ([`Fs`]) for tests: a
//! [`super::DirStore`] over it is a store whose every write can fail or be
//! lost in a crash.
//!
//! [`FaultStorage`] keeps the whole store (packs, recipes, refs, config, temp
//! files) in memory, as a model of a POSIX filesystem with a page cache:
//!
//! * Every file (inode) has a *live* content — what reads see — and a
//!   *durable* length: the content as of the last successful
//!   [`WriteHandle::sync`] on a handle of that file. Files are only ever
//!   created empty and appended to (that is all the [`Fs`] trait allows),
//!   so the durable content is always a prefix of the live content.
//! * Every directory has a *live* and a *durable* set of entries
//!   (name → inode). `create_new`, `rename`, `remove_file` and
//!   `create_dir_all` change live entries only; [`Fs::sync_dir`] makes a
//!   directory's live entries durable (only that directory's: a rename
//!   between two directories needs both synced to be durable on both sides).
//!   Directories are entries of their parent like files, so a directory
//!   created by `create_dir_all` survives a crash only once its parent has
//!   been synced. (The directory store syncs a directory's parent before
//!   it renames anything into it, so this is stricter than needed, never
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
//! and for the store's local state, which lives outside the objects: the
//! index (`root/index`) and the `lock` file are on the real filesystem, so
//! the root should be a real (temporary) directory. Index writes can still
//! be failed: every one is counted as an [`OpKind::Index`] operation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;

use super::fs::{Fs, WriteHandle};
use super::{BytesFile, ReadHandle};

/// The kinds of counted (mutating) operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// [`Fs::create_dir_all`] (one operation per call).
    CreateDir,
    /// [`Fs::create_new`].
    Create,
    /// [`WriteHandle::write_all`].
    Write,
    /// [`WriteHandle::sync`].
    Sync,
    /// [`Fs::rename`].
    Rename,
    /// [`Fs::sync_dir`].
    SyncDir,
    /// [`Fs::remove_file`].
    Remove,
    /// [`Fs::hard_link`].
    Link,
    /// A write to the store's index ([`Fs::check_index_write`]): its
    /// failure is the index failing a write.
    Index,
}

impl OpKind {
    /// Every kind.
    pub const ALL: [OpKind; 9] = [
        OpKind::CreateDir,
        OpKind::Create,
        OpKind::Write,
        OpKind::Sync,
        OpKind::Rename,
        OpKind::SyncDir,
        OpKind::Remove,
        OpKind::Link,
        OpKind::Index,
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

mod state;
#[cfg(test)]
mod tests;

use state::{not_found, Node, State, ROOT};

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

impl Fs for FaultStorage {
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

    fn hard_link(&self, from: &str, to: &str) -> io::Result<()> {
        self.lock().op(
            OpKind::Link,
            || format!("{from} -> {to}"),
            |s| s.hard_link(from, to),
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

    fn is_dir(&self, rel: &str) -> io::Result<bool> {
        let s = self.lock();
        Ok(s.lookup(rel)
            .is_some_and(|ino| matches!(s.nodes.get(&ino), Some(Node::Dir { .. }))))
    }

    fn dir_stamp(&self, rel: &str) -> io::Result<Option<u128>> {
        // The model has no clock: the live entries themselves (name and
        // inode; a replaced entry has a new inode) stand for the time.
        let s = self.lock();
        let Some(d) = s.lookup(rel) else {
            return Ok(None);
        };
        match s.nodes.get(&d) {
            Some(Node::Dir { live, .. }) => {
                let mut h = blake3::Hasher::new();
                for (name, ino) in live {
                    h.update(name.as_bytes());
                    h.update(&[0]);
                    h.update(&ino.to_le_bytes());
                }
                let b = h.finalize();
                let mut v = [0u8; 16];
                v.copy_from_slice(&b.as_bytes()[..16]);
                Ok(Some(u128::from_le_bytes(v)))
            }
            _ => Ok(None),
        }
    }

    fn check_index_write(&self) -> io::Result<()> {
        self.lock()
            .op(OpKind::Index, || "index".to_string(), |_| Ok(()))
    }
}
