//! The in-memory filesystem model behind [`super::FaultStorage`]: inodes
//! with live and durable content, directories with live and durable
//! entries, and the operation counter that injects faults.

use std::collections::{BTreeMap, HashMap};
use std::io;

use super::{Fault, OpKind, OpRecord};

pub(super) const ROOT: u64 = 0;

#[derive(Clone, Debug)]
pub(super) enum Node {
    /// Append-only content; the first `durable` bytes are durable.
    File { data: Vec<u8>, durable: usize },
    Dir {
        live: BTreeMap<String, u64>,
        durable: BTreeMap<String, u64>,
    },
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub(super) nodes: HashMap<u64, Node>,
    pub(super) next_inode: u64,
    pub(super) ops: u64,
    pub(super) by_kind: BTreeMap<OpKind, u64>,
    pub(super) fault: Option<Fault>,
    /// Matching operations still to pass before the fault fires.
    pub(super) countdown: u64,
    pub(super) dead: bool,
    pub(super) failures: u64,
    pub(super) log: Option<Vec<OpRecord>>,
}

pub(super) fn not_found(rel: &str) -> io::Error {
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
    pub(super) fn new() -> Self {
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
    pub(super) fn op<T>(
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

    pub(super) fn begin(&mut self, kind: OpKind, what: impl FnOnce() -> String) -> io::Result<u64> {
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

    pub(super) fn mark_failed(&mut self) {
        if let Some(r) = self.log.as_mut().and_then(|l| l.last_mut()) {
            r.failed = true;
        }
    }

    pub(super) fn new_inode(&mut self, node: Node) -> u64 {
        let ino = self.next_inode;
        self.next_inode += 1;
        self.nodes.insert(ino, node);
        ino
    }

    /// Resolves a path through live entries.
    pub(super) fn lookup(&self, rel: &str) -> Option<u64> {
        let mut cur = ROOT;
        for c in components(rel) {
            match self.nodes.get(&cur)? {
                Node::Dir { live, .. } => cur = *live.get(c)?,
                Node::File { .. } => return None,
            }
        }
        Some(cur)
    }

    pub(super) fn dir(&self, rel: &str) -> io::Result<u64> {
        let ino = self.lookup(rel).ok_or_else(|| not_found(rel))?;
        match self.nodes.get(&ino) {
            Some(Node::Dir { .. }) => Ok(ino),
            _ => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("{rel}: not a directory"),
            )),
        }
    }

    pub(super) fn file(&self, rel: &str) -> io::Result<u64> {
        let ino = self.lookup(rel).ok_or_else(|| not_found(rel))?;
        match self.nodes.get(&ino) {
            Some(Node::File { .. }) => Ok(ino),
            _ => Err(io::Error::new(
                io::ErrorKind::IsADirectory,
                format!("{rel}: is a directory"),
            )),
        }
    }

    pub(super) fn live_entries(&mut self, dir: u64) -> &mut BTreeMap<String, u64> {
        match self.nodes.get_mut(&dir) {
            Some(Node::Dir { live, .. }) => live,
            _ => unreachable!("checked to be a directory"),
        }
    }

    pub(super) fn create_dir_all(&mut self, rel: &str) -> io::Result<()> {
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

    pub(super) fn create_new(&mut self, rel: &str) -> io::Result<u64> {
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

    pub(super) fn rename(&mut self, from: &str, to: &str) -> io::Result<()> {
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

    pub(super) fn hard_link(&mut self, from: &str, to: &str) -> io::Result<()> {
        let ino = self.file(from)?;
        let (tdir, tname) = split_parent(to)?;
        let td = self.dir(&tdir)?;
        if self.live_entries(td).contains_key(&tname) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{to}: file exists"),
            ));
        }
        self.live_entries(td).insert(tname, ino);
        Ok(())
    }

    pub(super) fn remove_file(&mut self, rel: &str) -> io::Result<()> {
        self.file(rel)?;
        let (dir, name) = split_parent(rel)?;
        let d = self.dir(&dir)?;
        self.live_entries(d).remove(&name);
        Ok(())
    }

    pub(super) fn sync_dir(&mut self, rel: &str) -> io::Result<()> {
        let d = self.dir(rel)?;
        if let Some(Node::Dir { live, durable }) = self.nodes.get_mut(&d) {
            *durable = live.clone();
        }
        Ok(())
    }
}
